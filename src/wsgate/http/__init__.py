"""wsgate.http."""
