"""The source-fallback policy: each file is tried at its sources in order, until one delivers it intact."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

from ..errors import ChecksumError, DownloadError
from ..planvalues import FileLocation, FilePlan
from .context import FileResult, StageContext
from .signals import NotTheFile, PermanentError, TransientError

T = TypeVar("T")
DAMAGED_TRIES_PER_SOURCE = 2  # bytes damaged on the way get one more try at the same source
REFUSED_HINT = ("the server refused this network (blocked, rate-limited, or a web page instead of the file): run again later "
                "(what was fetched is kept), with fewer connections (data.host_connections) or more patience "
                "(data.blocked_patience_min); or mirror the data once to a bucket (provision mirror --to gs://BUCKET/luna16/) "
                "or copy it to a folder, and put that first in data.sources")


def from_sources(ctx: StageContext, f: FilePlan, result: FileResult, attempt: Callable[[FileLocation], T],
                 damaged: type[Exception]) -> tuple[str, T]:
    """Try ``attempt`` at each source in order: damaged bytes get one more try at the same source,
    a failing source is abandoned for the next. Returns (source, what ``attempt`` returned)."""
    if not f.locations:
        raise DownloadError(f"{f.key}: no configured source can serve it", hint="add a source to data.sources (zenodo needs a record in the manifest)", key=f.key)
    failures: list[str] = []
    refused = False  # a host blocked or throttled us, or answered with a web page
    unreachable: list[str] = []  # sources this machine could not reach at all (no DNS answer, no connection)
    for i, loc in enumerate(f.locations):
        then = "trying the next source" if i + 1 < len(f.locations) else "no other source to try"
        for _ in range(DAMAGED_TRIES_PER_SOURCE):
            try:
                return loc.url, attempt(loc)
            except damaged as exc:
                result.retries.append(str(exc))
                ctx.emit("retry", key=f.key, message=f"{f.key}: {exc}; fetching it again")
                failures.append(f"{loc.url}: {exc}")
            except (PermanentError, TransientError) as exc:
                transient = exc if isinstance(exc, TransientError) else None
                refused = refused or isinstance(exc, NotTheFile) or bool(transient and transient.throttle)
                if transient is not None and transient.unreachable:
                    unreachable.append(urlsplit(loc.url).hostname or loc.url)
                result.retries.append(f"{loc.url}: gave up: {exc.reason}")
                ctx.emit("retry", key=f.key, message=f"{f.key}: source {loc.url} failed ({exc.reason}); {then}")
                failures.append(f"{loc.url}: {exc.reason}")
                break
            if ctx.stop.is_set():
                break
    expected_md5 = f.md5 or "unknown"
    if failures and all("md5" in x for x in failures):
        raise ChecksumError(
            f"{f.key}: every source delivered a wrong checksum (expected md5 {expected_md5}): " + "; ".join(failures),
            hint="the manifest's md5 or the sources are wrong; check the data set's record",
            key=f.key, expected=expected_md5,
        )
    if unreachable and len(unreachable) == len(failures):
        hint = (f"this machine could not reach {', '.join(dict.fromkeys(unreachable))}: check the network (a connection, DNS, a proxy) "
                "and run again, what was fetched is kept; or stage from a mirror or a copy you can reach (a folder, gs://, "
                "an unpacked copy) by putting it first in data.sources")
    else:
        hint = REFUSED_HINT if refused else "check the network and data.sources, then run again: what was fetched is kept"
    raise DownloadError(f"{f.key} could not be fetched: " + "; ".join(failures), hint=hint, key=f.key)
