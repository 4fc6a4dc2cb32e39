"""Streamlit helpers shared by the pages: state, project choice, errors, charts."""
