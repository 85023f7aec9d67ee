"""Fixtures of the reliability probes (their figures' table is printed by ``tests/conftest.py``)."""

from __future__ import annotations

import resource
from collections.abc import Iterator

import pytest

from tests.reliability.common import BgLoop


@pytest.fixture
def bg() -> Iterator[BgLoop]:
    """A background loop for the test's backends."""
    loop = BgLoop()
    try:
        yield loop
    finally:
        loop.close()


@pytest.fixture(autouse=True, scope="session")
def _enough_descriptors() -> None:
    """Bursts of hundreds of clients and their backend connections live in this process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 8192:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(8192, hard), hard))
