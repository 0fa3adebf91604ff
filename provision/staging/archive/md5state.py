"""An md5 whose running state can be saved and restored, so an archive hashed as it streams can be resumed
after the process is killed without fetching its first part again (hashlib's objects cannot be saved).

It calls OpenSSL's MD5_Init/MD5_Update/MD5_Final through ctypes (the libcrypto that Python's own _hashlib
is linked to), so it runs at hashlib's speed, and the state is the MD5_CTX structure's bytes. Where that
library cannot be reached, :func:`available` is False and callers fall back to hashing from the first byte.
"""

from __future__ import annotations

import ctypes
import hashlib
from typing import Any

CTX_BYTES = 92  # MD5_CTX: four 32-bit state words, two 32-bit length words, a 64-byte block, a 32-bit count


def _load() -> Any:
    try:
        import _hashlib

        lib = ctypes.CDLL(_hashlib.__file__)  # dlsym also searches the libcrypto it was linked with
        for name in ("MD5_Init", "MD5_Update", "MD5_Final"):
            getattr(lib, name).restype = ctypes.c_int
        lib.MD5_Update.argtypes = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t)
        lib.MD5_Init.argtypes = (ctypes.c_void_p,)
        lib.MD5_Final.argtypes = (ctypes.c_char_p, ctypes.c_void_p)
    except (ImportError, OSError, AttributeError):
        return None
    return lib


class ResumableMd5:
    """``update`` and ``hexdigest`` as hashlib's md5 has them, plus ``state()`` and ``ResumableMd5(state)``."""

    def __init__(self, state: bytes | None = None) -> None:
        if _LIB is None:
            raise RuntimeError("OpenSSL's MD5 functions are not reachable here")
        self._lib = _LIB
        self._ctx = ctypes.create_string_buffer(CTX_BYTES + 64)  # room to spare: the structure is never larger
        if state is None:
            self._lib.MD5_Init(self._ctx)
        else:
            if len(state) != CTX_BYTES:
                raise ValueError(f"an md5 state is {CTX_BYTES} bytes, not {len(state)}")
            ctypes.memmove(self._ctx, state, CTX_BYTES)

    def update(self, data: bytes | memoryview) -> None:
        if isinstance(data, memoryview) and not data.readonly and data.contiguous:  # a view of a buffer: no copy
            self._lib.MD5_Update(self._ctx, (ctypes.c_char * data.nbytes).from_buffer(data), data.nbytes)
            return
        chunk = bytes(data) if isinstance(data, memoryview) else data
        self._lib.MD5_Update(self._ctx, chunk, len(chunk))

    def state(self) -> bytes:
        return self._ctx.raw[:CTX_BYTES]

    def hexdigest(self) -> str:
        copy = ctypes.create_string_buffer(CTX_BYTES + 64)
        ctypes.memmove(copy, self._ctx, CTX_BYTES)
        out = ctypes.create_string_buffer(16)
        self._lib.MD5_Final(out, copy)
        return out.raw.hex()


def _works() -> bool:
    """The structure's layout is OpenSSL's own: check it against hashlib, across a save and a restore, once."""
    try:
        first = ResumableMd5()
        first.update(b"dlwpt-")
        second = ResumableMd5(first.state())
        second.update(b"provision")
        return second.hexdigest() == hashlib.md5(b"dlwpt-provision").hexdigest()
    except (OSError, ValueError, RuntimeError):
        return False


_LIB = _load()
if _LIB is not None and not _works():
    _LIB = None


def available() -> bool:
    """Can an md5 be saved and resumed here?"""
    return _LIB is not None
