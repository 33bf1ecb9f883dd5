"""bookrec: real-time book recommendations as a reproducible MLOps pipeline.

Three rings, dependencies pointing inward:
- core (pure: pandas, numpy, scipy, statsmodels, torch; no files, MLflow, Airflow or Streamlit):
  `data`, `model`, `evaluation`, `ranking`, `online`, `statistics` (every interval and power
  calculation);
- edges: `io` and `storage` (files and databases), `ops` (MLflow, DVC, Airflow, processes),
  `serving` (the recommender service, the MLflow pyfunc, the REST API);
- entry points: `stages` (one function per DVC stage), `cli`, and outside the package `dags/`,
  `dashboard/`, `benchmarks/`.
`config` (the typed params.yaml) and `schemas` (table contracts) are shared by every ring.
"""
