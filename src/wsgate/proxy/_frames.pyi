from collections.abc import Callable

def scan_fields(
    data: bytes, skip: int, partial: bytes, messages: int, close_seen: int, /
) -> tuple[int, bytes, int, int]: ...
def scan_sizes(
    data: bytes, skip: int, partial: bytes, size: int, counts: list[int], /
) -> tuple[int, bytes, int]: ...
def fallback(
    scan_fields: Callable[[bytes, int, bytes, int, int], tuple[int, bytes, int, int]],
    scan_sizes: Callable[[bytes, int, bytes, int, list[int]], tuple[int, bytes, int]],
    /,
) -> None: ...

class SideBase:
    out: object
    clock: object
    last: float
    nbytes: int
    skip: int
    messages: int
    def relay(self, data: bytes, /) -> None: ...
    def relay_ws(self, data: bytes, /) -> None: ...
    def relay_limited(self, data: bytes, /) -> None: ...
