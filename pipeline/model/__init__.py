"""Core, model: the NCF network (`ncf`), how a training step reads its tables (`rows`: distinct
rows, sparse gradients), the tables' row-wise optimizers (`optim`, with numba kernels in `kernels`),
its BPR loss, negative sampling, the training loop (`train`, data-parallel in `distributed`), the
ItemKNN neighbourhood term and the recommender interface every model and baseline implements.

Pure PyTorch, numpy, scipy and numba; may import `pipeline.config`, `pipeline.ranking` and
`pipeline.data.features`; never files, MLflow, Airflow or Streamlit.
"""
