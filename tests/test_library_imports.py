"""The library stands alone: every `microgpt` module imports with `services/` unimportable.

The services build on the library, never the other way round; a library module that
imported `services.*` would break `pip install microgpt` use without the platform, and
tangle the layers. Commands that start services reach them through `service_entry`.
"""

from __future__ import annotations

import subprocess
import sys

_IMPORT_ALL = """
import importlib, pkgutil, sys
sys.modules["services"] = None  # `import services...` now raises ModuleNotFoundError
import microgpt
modules = pkgutil.walk_packages(microgpt.__path__, "microgpt.")
names = [m.name for m in modules if not m.name.endswith("__main__")]  # __main__ runs the CLI
for name in names:
    importlib.import_module(name)
print(len(names))
"""


def test_every_library_module_imports_without_services() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.strip()) > 50  # every module was walked, not an empty package


def test_service_commands_say_the_services_are_missing() -> None:
    code = "import sys; sys.modules['services'] = None; from microgpt.cli import main; sys.exit(main())"
    result = subprocess.run(
        [sys.executable, "-c", code, "serve", "registry"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 2
    assert "needs microgpt's services (services.launch)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
