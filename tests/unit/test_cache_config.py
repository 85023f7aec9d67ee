"""``proxy_cache_path`` and ``proxy_cache`` as nginx reads them: the parameters, nginx's
words for bad ones, and ``wsgate -V`` reporting the cache as built."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsgate.config.loader import load
from wsgate.config.model import CachePath, CacheValid
from wsgate.config.modules import configure_arguments
from wsgate.errors import ConfigError


def _load(tmp_path: Path, http: str, location: str = "") -> object:
    (tmp_path / "nginx.conf").write_text(
        "events {}\nhttp {\n" + http + "\nserver { listen 127.0.0.1:0;\n"
        "location / { proxy_pass http://127.0.0.1:1; " + location + " } } }\n"
    )
    return load("nginx.conf", prefix=str(tmp_path))


def test_all_parameters(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        "proxy_cache_path cache levels=1:2 keys_zone=one:10m inactive=1h max_size=1g "
        "min_free=100m use_temp_path=off manager_files=10 manager_sleep=100ms "
        "manager_threshold=1s loader_files=5 loader_sleep=1s loader_threshold=2s;",
        "proxy_cache one; proxy_cache_valid 5m; proxy_cache_valid 404 any 1m;",
    )
    spec = config.http.cache_paths["one"]  # type: ignore[attr-defined]
    assert spec == CachePath(
        str(tmp_path / "cache"),
        "one",
        10 << 20,
        (1, 2),
        3600.0,
        1 << 30,
        100 << 20,
        False,
        10,
        0.1,
        1.0,
        5,
        1.0,
        2.0,
        source=spec.source,
    )
    settings = config.http.servers[0].locations[0].settings  # type: ignore[attr-defined]
    assert settings.proxy_cache == "one"
    assert settings.proxy_cache_valid == (
        CacheValid(200, 300),
        CacheValid(301, 300),
        CacheValid(302, 300),
        CacheValid(404, 60),
        CacheValid(0, 60),
    )
    assert settings.proxy_cache_key.raw == "$scheme$proxy_host$request_uri"


@pytest.mark.parametrize(
    ("http", "words"),
    [
        ("proxy_cache_path c levels=3 keys_zone=a:1m;", 'invalid "levels" "levels=3"'),
        ("proxy_cache_path c levels=1:2:2:1 keys_zone=a:1m;", 'invalid "levels"'),
        ("proxy_cache_path c keys_zone=a;", 'invalid keys zone size "keys_zone=a"'),
        ("proxy_cache_path c keys_zone=a:4k;", 'keys zone "keys_zone=a:4k" is too small'),
        ("proxy_cache_path c levels=1;", '"proxy_cache_path" must have "keys_zone" parameter'),
        ("proxy_cache_path c keys_zone=a:1m inactive=x;", 'invalid inactive value "inactive=x"'),
        ("proxy_cache_path c keys_zone=a:1m max_size=x;", 'invalid max_size value "max_size=x"'),
        ("proxy_cache_path c keys_zone=a:1m use_temp_path=x;", "invalid use_temp_path value"),
        ("proxy_cache_path c keys_zone=a:1m what=1;", 'invalid parameter "what=1"'),
        ("proxy_cache_path c keys_zone=a:1m; proxy_cache_path d keys_zone=a:1m;", "duplicate"),
        ("proxy_cache_path c keys_zone=a:1m;", "zero size shared memory zone"),
    ],
)
def test_bad_parameters(tmp_path: Path, http: str, words: str) -> None:
    location = "proxy_cache b;" if "zero size" in words else ""
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, http, location)
    assert words in str(info.value)


def test_proxy_cache_path_only_in_http(tmp_path: Path) -> None:
    (tmp_path / "nginx.conf").write_text(
        "events {}\nhttp { server { listen 127.0.0.1:0; proxy_cache_path c keys_zone=a:1m; } }\n"
    )
    with pytest.raises(ConfigError) as info:
        load("nginx.conf", prefix=str(tmp_path))
    assert '"proxy_cache_path" directive is not allowed here' in str(info.value)


def test_cache_reported_as_built() -> None:
    """nginx-tests' ``has('cache')`` looks for no ``--without-http-cache``."""
    assert "--without-http-cache" not in configure_arguments()
