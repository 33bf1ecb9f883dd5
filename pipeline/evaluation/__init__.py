"""Core, evaluation: pure ranking metrics, the baselines (random, popularity, ItemKNN, ALS through
`implicit`) and the full-catalog evaluator.

May import `pipeline.model`, `pipeline.ranking` and `pipeline.config`; never files, MLflow, Airflow
or Streamlit (reports are written by `pipeline.storage.reports`).
"""
