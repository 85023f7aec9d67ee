"""wsgate.config."""
