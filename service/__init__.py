"""qbert-serve: the HTTP service that runs Q-BERT artifacts in a worker pool with dynamic batching."""

from service.app import create_app
from service.settings import ServiceSettings

__all__ = ["ServiceSettings", "create_app"]
