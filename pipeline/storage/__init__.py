"""Edge, storage: where bytes meet disk and databases. Fetching and verifying the raw files, the data
stages over files of any size on DuckDB (`engine`, `interim` for ingest, `processed` for preprocess), the model
folder (`bundle`: safetensors, JSON, Parquet; no pickles), the live feedback store (SQLAlchemy) and
the evaluation reports.

May import the core subpackages and `pipeline.io`; never MLflow, Airflow or Streamlit.
"""
