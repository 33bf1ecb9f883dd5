"""Edge, serving: `BookRecommender` (raw ids in, ranked books out), the MLflow pyfunc, request
batching and the FastAPI app. The dashboard is a thin shell over the same `BookRecommender`.

Imports only what serving needs: `model`, `ranking`, `data.catalog`, `data.locations`,
`data.features`, `storage.bundle` and `storage.feedback` (never ingestion or training code);
`pipeline.ops` only to load registry versions.
"""
