"""The README's configuration table is `Settings`: one row per field, named by its MICROGPT_*
variable, with the field's default, so that the table a user reads is what a process does.

Default cells are written so they can be checked: `unset...` for None, `empty` for "", a
backticked value (`~/` is the home directory), or a byte size such as `64 GiB`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from microgpt.settings import Settings

README = Path(__file__).resolve().parents[1] / "README.md"
PREFIX = Settings.model_config["env_prefix"]
UNITS = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def table_rows() -> dict[str, tuple[str, str]]:
    """The configuration table's rows: variable -> (default cell, description cell)."""
    section = README.read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and (name := re.fullmatch(r"`(MICROGPT_[A-Z0-9_]+)`", cells[0])):
            assert name.group(1) not in rows, (
                f"README.md's configuration table has two rows for {name.group(1)}"
            )
            rows[name.group(1)] = (cells[1], cells[2])
    return rows


def default_of(field: FieldInfo) -> Any:
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    return None if field.default is PydanticUndefined else field.default


def parse_default(cell: str) -> Any:
    """The value a default cell states; ValueError for a cell that states none."""
    if cell.startswith("unset"):
        return None
    if cell == "empty":
        return ""
    if size := re.fullmatch(r"(\d+) (KiB|MiB|GiB)", cell):
        return int(size.group(1)) * UNITS[size.group(2)]
    if literal := re.fullmatch(r"`([^`]*)`", cell):
        text = literal.group(1)
        return Path.home() / text[2:] if text.startswith("~/") else text
    raise ValueError(f"cannot read a default from {cell!r}")


def same(stated: Any, actual: Any) -> bool:
    if actual is None or stated is None:
        return actual is stated
    if isinstance(actual, bool):
        return str(stated).lower() == str(actual).lower()
    if isinstance(actual, int | float):
        try:
            return float(stated) == float(actual)
        except (TypeError, ValueError):
            return False
    if isinstance(actual, Path):
        return Path(stated) == actual
    return str(stated) == str(getattr(actual, "get_secret_value", lambda: actual)())


def suggested_row(name: str, field: FieldInfo) -> str:
    default = default_of(field)
    if default is None:
        cell = "unset"
    elif default == "":
        cell = "empty"
    elif type(default) is int and default >= 1 << 20 and default % (1 << 20) == 0:
        cell = f"{default >> 30} GiB" if default % (1 << 30) == 0 else f"{default >> 20} MiB"
    else:
        cell = f"`{default}`"
    return f"| `{PREFIX}{name.upper()}` | {cell} | {field.description or 'WHAT IT IS'} |"


def test_every_setting_has_one_row_and_every_row_is_a_setting() -> None:
    rows = table_rows()
    fields = {f"{PREFIX}{name.upper()}": (name, f) for name, f in Settings.model_fields.items()}
    missing = [suggested_row(*fields[var]) for var in fields if var not in rows]
    extra = sorted(set(rows) - set(fields))
    problems = ["README.md's configuration table differs from microgpt.settings.Settings."]
    if missing:
        problems += ["Rows missing (add them, with the default as written here):", *missing]
    if extra:
        problems += ["Rows with no Settings field (remove them):", *extra]
    assert not missing and not extra, "\n  ".join(problems)


def test_every_row_states_the_setting_default_and_what_it_is() -> None:
    wrong = []
    for var, (cell, description) in table_rows().items():
        field = Settings.model_fields.get(var.removeprefix(PREFIX).lower())
        if field is None:
            continue  # the test above names it
        if not description:
            wrong.append(f"{var}: no description")
        try:
            stated = parse_default(cell)
        except ValueError as e:
            wrong.append(f"{var}: {e}")
            continue
        if not same(stated, default_of(field)):
            wrong.append(f"{var}: README says {cell!r}, Settings has {default_of(field)!r}")
    assert not wrong, "README.md's configuration table:\n  " + "\n  ".join(wrong)
