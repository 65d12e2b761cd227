"""The dashboard's pages, in navigation order: one file under `views/` and one line here each.

A page is a plain Streamlit script; `url_path` is what links and bookmarks use
(`/jobs?job=ID`, `/registry?model=NAME&version=N`).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import streamlit as st
from streamlit.navigation.page import StreamlitPage

VIEWS = Path(__file__).resolve().parent / "views"


class PageEntry(NamedTuple):
    file: str
    title: str
    icon: str


PAGES = [
    PageEntry("overview.py", "Overview", ":material/monitor_heart:"),
    PageEntry("train.py", "Train", ":material/model_training:"),
    PageEntry("jobs.py", "Jobs", ":material/list_alt:"),
    PageEntry("compare.py", "Compare", ":material/stacked_line_chart:"),
    PageEntry("registry.py", "Registry", ":material/inventory_2:"),
    PageEntry("playground.py", "Playground", ":material/chat:"),
    PageEntry("inspect.py", "Inspect", ":material/biotech:"),
]


def navigation() -> StreamlitPage:
    """The `st.navigation` of every page; the first is the default."""
    pages = [
        st.Page(VIEWS / p.file, title=p.title, icon=p.icon, url_path=Path(p.file).stem, default=i == 0)
        for i, p in enumerate(PAGES)
    ]
    return st.navigation(pages)
