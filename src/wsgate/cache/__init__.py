"""nginx's proxy cache (``proxy_cache_path``, ``proxy_cache`` and the ``proxy_cache_*``
directives): :mod:`~wsgate.cache.rules` (pure: the key, what may be kept and how long, the
file header), :mod:`~wsgate.cache.store` (the files), :mod:`~wsgate.cache.glue` (the
request's side, on asyncio) and :mod:`~wsgate.cache.manager` (a worker's caches and their
manager)."""
