"""Edge, storage: where bytes meet disk and databases. Fetching and verifying the raw files, the model
folder (`bundle`: safetensors, JSON, Parquet; no pickles), the live feedback store (SQLAlchemy) and
the evaluation reports.

May import the core subpackages and `pipeline.io`; never MLflow, Airflow or Streamlit.
"""
