"""A Python client of the BBCU restoration service (httpx): one image, or many at bounded concurrency.

    from bbcu_client import Client
    restored = Client("http://localhost:8000").restore("photo.png", task="sr", scale=2)
    restored.save("photo-x2.png"); print(restored.job["timings"])

Receivers of webhooks check a delivery with ``verify_webhook(secret, body, timestamp, signature)``.
"""

from bbcu_client.client import AsyncClient, Client, Restored, ServiceError
from workers.signing import verify as verify_webhook

__all__ = ["AsyncClient", "Client", "Restored", "ServiceError", "verify_webhook"]
