"""Core, data: the protocol from raw rows to model inputs (parsing and cleaning, locations, positives
and dislikes, k-core, the stable hash split, side features, the catalog's works and authors).

Pure functions over pandas and numpy; may import `pipeline.config` and `pipeline.schemas`, never
files, MLflow, Airflow, Streamlit, nor any other subpackage.
"""
