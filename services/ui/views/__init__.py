"""The dashboard's page scripts, one per page (listed in `services.ui.pages`)."""
