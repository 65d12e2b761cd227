"""What a test needs from the machine: skipped with the reason on a laptop without it, a failure
in CI (`CI` set, where .ci/run installs and starts everything), since nothing may be skipped there."""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def unavailable(reason: str) -> NoReturn:
    """Stop the test for a missing prerequisite: a skip on a laptop, a failure in CI."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def debian_tool(name: str, package: str) -> str:
    """The path of the command `name` from Debian's `package`, which .ci/run installs."""
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed (Debian's {package} package; .ci/run installs it)")
    return path
