"""The Streamlit front explorer (`pareto ui`): reads MLflow and artifacts, never training code."""
