"""wsgate.proxy."""
