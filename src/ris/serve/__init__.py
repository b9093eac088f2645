"""`ris serve`: reverse image search over HTTP (FastAPI + uvicorn) and a web page, on the pipeline's searcher."""
