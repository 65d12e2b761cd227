"""Document sources: a built-in data set by name, or a text file with one document per line.

The built-in `names` data set is read from the `names` package (US census first
names), so it works with no network and no files outside the installed packages.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def builtin_names() -> list[str]:
    """About 5,500 lowercase first names, female and male, in the census files' order."""
    package = resources.files("names")
    docs: list[str] = []
    for part in ("dist.female.first", "dist.male.first"):
        for line in (package / part).read_text(encoding="ascii").splitlines():
            if line.strip():
                docs.append(line.split()[0].lower())
    return list(dict.fromkeys(docs))


BUILTIN = {"names": builtin_names}


def load_documents(source: str) -> list[str]:
    """Documents of a built-in data set or of a UTF-8 text file (one per line, blanks skipped)."""
    if source in BUILTIN:
        docs = BUILTIN[source]()
    else:
        path = Path(source)
        if not path.is_file():
            known = ", ".join(BUILTIN)
            raise ValueError(f"no such data set or file: {source!r} (built-in data sets: {known})")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not UTF-8 text: {e}") from None
        docs = [line.strip() for line in text.splitlines() if line.strip()]
    if not docs:
        raise ValueError(f"data source {source!r} has no documents")
    return docs
