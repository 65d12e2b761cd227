"""The dashboard's entry point: `microgpt ui` runs `streamlit run services/ui/app.py`.

Every page talks to the services only through the library's clients (see `connection`),
with the URLs and API key of `MICROGPT_*` settings, like the CLI.
"""

import streamlit as st

from services.ui.pages import navigation

st.set_page_config(page_title="microgpt", page_icon=":material/neurology:", layout="wide")
navigation().run()
