"""wsgate: a WebSocket-aware reverse proxy and load balancer that reads nginx configuration."""

__version__ = "0.1.0"
NAME = "wsgate"
#: What wsgate writes in ``Server:`` headers and error-page footers (nginx writes ``nginx/1.22.1``).
SERVER_TOKEN = f"{NAME}/{__version__}"

__all__ = ["NAME", "SERVER_TOKEN", "__version__"]
