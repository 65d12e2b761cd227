"""The dashboard: a Streamlit app over the registry, trainer and inference services' HTTP APIs."""
