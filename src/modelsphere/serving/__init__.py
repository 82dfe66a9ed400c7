"""Real-time inference: a FastAPI app on the shared `Predictor`.

- `schemas`: request/response models generated from the model's feature schema;
- `oip`: the Open Inference Protocol v2 tensors <-> records;
- `guards`: body-size limit, JSON content type, API key;
- `telemetry`: Prometheus metrics;
- `app`: the app factory, routes and lifespan;
- `runner`: serve.py's launcher (uvicorn).
"""
