"""Core, model: the NCF network (`ncf`), its BPR loss, negative sampling, the training loop, the
ItemKNN neighbourhood term and the recommender interface every model and baseline implements.

Pure PyTorch, numpy and scipy; may import `pipeline.config`, `pipeline.ranking` and
`pipeline.data.features`; never files, MLflow, Airflow or Streamlit.
"""
