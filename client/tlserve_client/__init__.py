"""tlserve's Python client: ``Client(url, api_key)`` over the REST API. Needs httpx only at import; no
torch, numpy or Pillow (a PIL image is accepted where the caller passes one)."""

from tlserve_client.archive import BadPath
from tlserve_client.client import MAX_SYNC_FILES, Client
from tlserve_client.errors import APIError, JobFailed, JobTimeout, ServiceUnreachable, TLServeError

__all__ = [
    "MAX_SYNC_FILES",
    "APIError",
    "BadPath",
    "Client",
    "JobFailed",
    "JobTimeout",
    "ServiceUnreachable",
    "TLServeError",
]
__version__ = "0.1.0"
