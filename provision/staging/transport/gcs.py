"""Google Cloud Storage: the transfer contract over google-cloud-storage, and the client it uses.

Imported only when a ``gs://`` source or ``provision mirror`` is used (start-up stays fast).
Credentials: Application Default Credentials; on Colab, ``google.colab.auth`` first; anonymous
for public buckets (``data.gcs.anonymous`` or when no credentials exist) and for the emulator
(``STORAGE_EMULATOR_HOST``). Credentials never appear in messages.

Every request to the storage API goes through the endpoint host's gate (:mod:`.throttle`), so the run's cap holds
here as for HTTP sources, and the client's session sends that host's requests over the gate's one pool
(:mod:`.pool`), so that what the report counts is what the sockets did.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from ..signals import PermanentError, TransientError
from .protocol import RemoteInfo, Sink
from .throttle import HostGate, Throttle

log = logging.getLogger(__name__)
_clients: dict[tuple[str | None, bool], Any] = {}
_clients_lock = threading.Lock()


def split_gs(url: str) -> tuple[str, str]:
    """gs://bucket/a/b -> ("bucket", "a/b")."""
    rest = url[len("gs://"):]
    bucket, _, name = rest.partition("/")
    return bucket, name


def client(project: str | None = None, anonymous: bool = False, environ: Mapping[str, str] | None = None) -> Any:
    """One shared storage client per (project, anonymous) for this process."""
    environ = os.environ if environ is None else environ
    key = (project, anonymous or bool(environ.get("STORAGE_EMULATOR_HOST")))
    with _clients_lock:
        if key not in _clients:
            made = _make_client(project, key[1])
            # google-cloud-storage >= 3.x fetches a bucket's metadata in a thread of its own for its tracing attributes:
            # a request outside the host's gate (a connection over the cap), for nothing this tool uses
            if getattr(made, "_bucket_metadata_cache", None) is not None:
                made._bucket_metadata_cache = None  # noqa: SLF001 - third-party: no public switch for it
            _clients[key] = made
        return _clients[key]


def _make_client(project: str | None, anonymous: bool) -> Any:
    from google.cloud import storage

    if anonymous:
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=project or "anonymous", credentials=AnonymousCredentials())
    from google.auth.exceptions import DefaultCredentialsError

    try:
        return storage.Client(project=project)
    except (DefaultCredentialsError, OSError):
        pass
    if _colab_auth():
        try:
            return storage.Client(project=project)
        except (DefaultCredentialsError, OSError):
            pass
    log.warning("no Google Cloud credentials found: reading buckets anonymously (public buckets only)")
    return storage.Client.create_anonymous_client()


def _colab_auth() -> bool:
    """On Colab, ask the user to sign in (the notebook usually did this already)."""
    try:
        from google.colab import auth
    except ImportError:
        return False
    auth.authenticate_user()
    return True


def principal(gcs_client: Any) -> str:
    creds = getattr(gcs_client, "_credentials", None)
    email = getattr(creds, "service_account_email", None)
    return f"service account {email}" if email and email != "default" else "your signed-in account (gcloud auth list shows it)"


@contextmanager
def gcs_errors(what: str, bucket: str, gcs_client: Any) -> Iterator[None]:
    """Sort google-cloud-storage errors into transient (retry) and permanent (next source), with the fix."""
    import requests
    from google.api_core import exceptions as gx
    from google.auth.exceptions import TransportError

    try:
        yield
    except gx.NotFound as exc:
        if "bucket" in str(exc).lower() and "not exist" in str(exc).lower():
            raise PermanentError(f"{what}: bucket gs://{bucket} does not exist (check the name in data.sources)") from None
        raise PermanentError(f"{what}: no such object") from None
    except gx.Forbidden as exc:
        text = str(exc).lower()
        if "requester pays" in text or "user project" in text or "userprojectmissing" in text:
            raise PermanentError(f"{what}: gs://{bucket} is a requester-pays bucket: set data.gcs.user_project to a project you can bill") from None
        raise PermanentError(
            f"{what}: {principal(gcs_client)} may not read gs://{bucket}: grant it roles/storage.objectViewer on the bucket "
            f"(gcloud storage buckets add-iam-policy-binding gs://{bucket} --member=... --role=roles/storage.objectViewer)"
        ) from None
    except gx.Unauthorized:
        raise PermanentError(f"{what}: the credentials were rejected; run `gcloud auth application-default login` (on Colab, sign in again)") from None
    except gx.BadRequest as exc:
        if "user project" in str(exc).lower():
            raise PermanentError(f"{what}: gs://{bucket} is a requester-pays bucket: set data.gcs.user_project to a project you can bill") from None
        raise PermanentError(f"{what}: {exc.message if hasattr(exc, 'message') else exc}") from None
    except (gx.TooManyRequests, gx.ServiceUnavailable, gx.InternalServerError, gx.BadGateway, gx.GatewayTimeout) as exc:
        raise TransientError(f"{what}: {type(exc).__name__}") from None
    except (requests.ConnectionError, requests.Timeout, TransportError, ConnectionError) as exc:
        raise TransientError(f"{what}: connection failed ({type(exc).__name__})") from None


def md5_hex(blob: Any) -> str | None:
    """The object's md5: GCS's own where it has one (not for composite objects), else our metadata."""
    if blob.md5_hash:
        return base64.b64decode(blob.md5_hash).hex()
    return (blob.metadata or {}).get("md5")


class _SinkFile:
    """A write-only file object that hands each piece to a sink (streaming, bounded memory)."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    def write(self, data: bytes) -> int:
        self.sink(bytes(data))
        return len(data)


class GcsTransfer:
    """One object ``gs://bucket/name``."""

    def __init__(self, url: str, timeout_s: float = 60.0, project: str | None = None, anonymous: bool = False,
                 user_project: str | None = None, throttle: Throttle | None = None) -> None:
        self.url = url
        self.label = url
        self.timeout_s = timeout_s
        self.bucket_name, self.name = split_gs(url)
        self.client = client(project, anonymous)
        self.bucket = self.client.bucket(self.bucket_name, user_project=user_project)
        self.gate = _gate(self.client, throttle)

    def info(self) -> RemoteInfo:
        with self.gate.slot(), gcs_errors(self.url, self.bucket_name, self.client):
            blob = self.bucket.get_blob(self.name, timeout=self.timeout_s)
        if blob is None:
            raise PermanentError(f"{self.url}: no such object")
        return RemoteInfo(size=blob.size, ranges=True, md5=md5_hex(blob))

    def read_range(self, start: int, end: int, sink: Sink, on_open: Callable[[bool], None] | None = None, whole_size: int | None = None) -> None:
        if on_open is not None:
            on_open(True)
        got = 0

        def counted(data: bytes) -> None:
            nonlocal got
            got += len(data)
            sink(data)

        with self.gate.slot(), gcs_errors(self.url, self.bucket_name, self.client):
            self.bucket.blob(self.name).download_to_file(_SinkFile(counted), start=start, end=end - 1, checksum=None, timeout=self.timeout_s)
        if got != end - start:
            raise TransientError(f"{self.url} sent {got} of {end - start} bytes")

    def read_all(self, sink: Sink, size: int | None = None) -> None:
        with self.gate.slot(), gcs_errors(self.url, self.bucket_name, self.client):
            self.bucket.blob(self.name).download_to_file(_SinkFile(sink), checksum=None, timeout=self.timeout_s)


def _gate(gcs_client: Any, throttle: Throttle | None) -> HostGate:
    """The storage endpoint's gate in the run's ``throttle``, its pool mounted on the client's session for that origin
    (the client is the process's: each run mounts its own pool in place of the last one's, closed with its run)."""
    from urllib.parse import urlsplit

    from .pool import mount

    endpoint = urlsplit(gcs_client.api_endpoint or "https://storage.googleapis.com")
    origin = f"{endpoint.scheme}://{endpoint.netloc}/"
    gate = throttle.gate(origin) if throttle is not None else HostGate(endpoint.hostname or origin, 64)
    with _clients_lock:
        mount(gcs_client._http, origin, gate)  # noqa: SLF001 - third-party: the client's session, where its requests go
    return gate
