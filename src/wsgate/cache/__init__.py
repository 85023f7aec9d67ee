"""nginx's proxy cache (``proxy_cache_path``, ``proxy_cache`` and the ``proxy_cache_*``
directives): :mod:`~wsgate.cache.rules` (pure: the key, what may be kept and how long, the
file header), :mod:`~wsgate.cache.store` (the files) and :mod:`~wsgate.cache.glue` (the
request's side, on asyncio)."""
