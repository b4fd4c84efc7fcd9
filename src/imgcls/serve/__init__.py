"""``imgcls serve``: an HTTP API and one HTML page over a model (FastAPI + uvicorn, extra
``serve``)."""
