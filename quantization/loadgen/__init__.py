"""Load generators for a running service (`qbert loadtest`, `qbert soak`): HTTP clients only when imported (httpx,
no FastAPI, transformers or runtime); `raw_throughput` loads the runtime when called, to time the model in process."""
