"""Edge, serving: `BookRecommender` (raw ids in, ranked books out), the MLflow pyfunc, request
batching, the FastAPI app (`api.py` routes, `schemas.py` request and response shapes,
`instruments.py` guard and Prometheus metrics) and the online loop (`experiment.py` arms, run-time
rules and impressions; `monitoring.py` the online report; `compat.py` request rules for older
versions). The dashboard is a thin shell over the same `BookRecommender` and online loop.

Imports only what serving needs: `model`, `ranking`, `online`, `config`, `data.catalog`,
`data.locations`, `data.features`, `storage.bundle`, `storage.feedback` and `storage.impressions`
(never ingestion, training or evaluation code); `pipeline.ops` only to load registry versions.
"""
