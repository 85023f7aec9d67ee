"""wsgate.server."""
