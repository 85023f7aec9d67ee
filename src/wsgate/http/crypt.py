"""nginx's ``ngx_crypt`` (``src/core/ngx_crypt.c``): the password schemes of
``auth_basic_user_file``.

nginx computes ``crypt(password, stored)`` and compares the result with ``stored``
(``ngx_strcmp``); :func:`ngx_crypt` is that computation, so a check is
``ngx_crypt(password, stored) == stored``.  By the stored value's prefix:

- ``$apr1$``: Apache's MD5 crypt (Poul-Henning Kamp's md5crypt with the ``$apr1$`` magic),
  ported from ``ngx_crypt_apr1``;
- ``{PLAIN}``, ``{SHA}`` (base64 of SHA-1), ``{SSHA}`` (base64 of SHA-1 of password and
  salt, then the salt), ported from ``ngx_crypt_plain``/``_sha``/``_ssha``, including how a
  malformed ``{SSHA}`` value is read (a bad base64 or one shorter than 20 bytes: no salt);
- anything else: the system's ``crypt_r(3)`` (``ngx_libc_crypt``), as nginx calls it.

Why the system's ``crypt_r`` through :mod:`ctypes`, and not a Python package: nginx hands
every other value to libc, so the formats it accepts on Linux are exactly what the system's
libcrypt (libxcrypt on current distributions) implements: DES, ``$1$`` MD5, ``$5$``
SHA-256, ``$6$`` SHA-512, ``$2a$``/``$2b$``/``$2y$`` bcrypt, ``$y$`` yescrypt (Debian's
default for new passwords) and ``$7$`` scrypt, with libxcrypt's own reading of odd salts and
its ``*0`` failure token (which then simply does not match, as in nginx).  Calling that same
library gives the same answers for all of them; a package (``bcrypt``, ``passlib``'s fork
``libpass``) would cover some formats and differ on edge cases.  Python's ``crypt`` module
wraps the same function but is deprecated since 3.11 and gone in 3.13.  ``crypt_r`` is
reentrant (its state lives in the buffer passed in) and :mod:`ctypes` releases the GIL while
it runs, so checks run in threads in parallel.  Where no libcrypt is found, those values fail
as nginx built without crypt does (``NGX_ERROR``: 500).

These functions are CPU-bound (bcrypt and yescrypt are slow on purpose) and never run on the
event loop: :mod:`wsgate.http.auth` runs a whole check in a bounded thread pool.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import ctypes.util
import hashlib
import threading

__all__ = ["CryptError", "decode_base64", "ngx_crypt"]

_ITOA64 = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_B64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")

#: ``sizeof(struct crypt_data)``: glibc's (131232 bytes) is the larger of glibc's and
#: libxcrypt's (32768), so one buffer fits either library.
_CRYPT_DATA_SIZE = 131232


class CryptError(Exception):
    """``crypt_r()`` returned NULL (or no libcrypt): nginx's ``[crit] crypt_r() failed``,
    and a 500.  ``errno`` is what the call left."""

    def __init__(self, errno: int) -> None:
        super().__init__(errno)
        self.errno = errno


def decode_base64(src: bytes) -> bytes | None:
    """``ngx_decode_base64``: stops at the first ``=``, refuses any other byte outside the
    alphabet and a length of 4n+1, ignores the unused low bits; None when refused."""
    end = src.find(b"=")
    data = src if end < 0 else src[:end]
    if any(c not in _B64 for c in data) or len(data) % 4 == 1:
        return None
    try:
        return base64.b64decode(data + b"=" * (-len(data) % 4))
    except binascii.Error:  # pragma: no cover - the checks above leave nothing to refuse
        return None


def _to64(v: int, n: int) -> bytes:
    out = bytearray()
    for _ in range(n):
        out.append(_ITOA64[v & 0x3F])
        v >>= 6
    return bytes(out)


def _apr1(key: bytes, setting: bytes) -> bytes:
    """``ngx_crypt_apr1``: "true salt: no magic, max 8 chars, stop at first $"."""
    salt = setting[6:14].split(b"$", 1)[0]
    md5 = hashlib.md5(key + b"$apr1$" + salt)
    final = hashlib.md5(key + salt + key).digest()
    n = len(key)
    while n > 0:
        md5.update(final[: min(n, 16)])
        n -= 16
    i = len(key)
    while i:
        md5.update(b"\0" if i & 1 else key[:1])
        i >>= 1
    final = md5.digest()
    for i in range(1000):
        ctx = hashlib.md5(key if i & 1 else final)
        if i % 3:
            ctx.update(salt)
        if i % 7:
            ctx.update(key)
        ctx.update(final if i & 1 else key)
        final = ctx.digest()
    f = final
    out = b"$apr1$" + salt + b"$"
    out += _to64((f[0] << 16) | (f[6] << 8) | f[12], 4)
    out += _to64((f[1] << 16) | (f[7] << 8) | f[13], 4)
    out += _to64((f[2] << 16) | (f[8] << 8) | f[14], 4)
    out += _to64((f[3] << 16) | (f[9] << 8) | f[15], 4)
    out += _to64((f[4] << 16) | (f[10] << 8) | f[5], 4)
    out += _to64(f[11], 2)
    return out


def _ssha(key: bytes, setting: bytes) -> bytes:
    """``ngx_crypt_ssha``: "{SSHA}" base64(SHA1(key salt) salt); the salt is what follows the
    first 20 decoded bytes (none if the value does not decode or is shorter)."""
    decoded = decode_base64(setting[6:])
    salt = decoded[20:] if decoded is not None and len(decoded) >= 20 else b""
    digest = hashlib.sha1(key + salt).digest()
    return b"{SSHA}" + base64.b64encode(digest + salt)


def _sha(key: bytes, setting: bytes) -> bytes:
    """``ngx_crypt_sha``: "{SHA}" base64(SHA1(key))."""
    return b"{SHA}" + base64.b64encode(hashlib.sha1(key).digest())


class _LibCrypt:
    """The system's ``crypt_r``, found once (None when there is no libcrypt)."""

    _lock = threading.Lock()
    _fn: ctypes._CFuncPtr | None = None  # type: ignore[name-defined]
    _loaded = False

    @classmethod
    def fn(cls) -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
        with cls._lock:
            if not cls._loaded:
                cls._loaded = True
                for name in (ctypes.util.find_library("crypt"), "libcrypt.so.1", None):
                    try:
                        lib = ctypes.CDLL(name, use_errno=True)
                        fn = lib.crypt_r
                    except (OSError, AttributeError):
                        continue
                    fn.restype = ctypes.c_char_p
                    fn.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p)
                    cls._fn = fn
                    break
            return cls._fn


def _libc_crypt(key: bytes, setting: bytes) -> bytes:
    """``ngx_libc_crypt``: ``crypt_r(key, salt, &cd)`` with ``cd.initialized = 0``."""
    fn = _LibCrypt.fn()
    if fn is None:
        raise CryptError(38)  # ENOSYS
    data = ctypes.create_string_buffer(_CRYPT_DATA_SIZE)
    result: bytes | None = fn(key, setting, data)
    if result is None:
        raise CryptError(ctypes.get_errno())
    return result


def ngx_crypt(key: bytes, setting: bytes) -> bytes:
    """``ngx_crypt(pool, key, salt, &encrypted)``: ``key`` and ``setting`` are C strings
    (each ends at its first NUL, as nginx passes them).  Raises :class:`CryptError` when
    ``crypt_r`` fails."""
    key = key.split(b"\0", 1)[0]
    setting = setting.split(b"\0", 1)[0]
    if setting.startswith(b"$apr1$"):
        return _apr1(key, setting)
    if setting.startswith(b"{PLAIN}"):
        return b"{PLAIN}" + key
    if setting.startswith(b"{SSHA}"):
        return _ssha(key, setting)
    if setting.startswith(b"{SHA}"):
        return _sha(key, setting)
    return _libc_crypt(key, setting)
