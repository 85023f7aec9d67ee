"""wsgate.upstream."""
