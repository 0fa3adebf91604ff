"""The inflate and CRC-32 the unpackers use: ISA-L's where it is installed (about 1.4x zlib's inflate and
several times its CRC-32 on x86-64 and ARM), zlib's otherwise. PROVISION_INFLATE=zlib forces zlib (to compare)."""

from __future__ import annotations

import importlib
import os
from typing import Any


def _load() -> Any:
    if os.environ.get("PROVISION_INFLATE") != "zlib":
        try:
            return importlib.import_module("isal.isal_zlib")
        except ImportError:  # no wheel for this platform: the standard library's
            pass
    return importlib.import_module("zlib")


_impl: Any = _load()
LIBRARY = "isal" if _impl.__name__.startswith("isal") else "zlib"


error: type[Exception] = _impl.error  # what a damaged deflate stream raises (zlib.error, or ISA-L's IsalError)


def raw_inflater() -> Any:
    """A decompressor for raw deflate data (as zip members hold it), with zlib's interface."""
    return _impl.decompressobj(-15)


def crc32(data: bytes | memoryview, value: int = 0) -> int:
    return int(_impl.crc32(data, value))
