"""wsgate.observability."""
