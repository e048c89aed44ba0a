"""What the public integration modules (asgi, wsgi, httpx, requests) share."""
