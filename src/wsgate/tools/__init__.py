"""wsgate.tools."""
