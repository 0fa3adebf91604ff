"""One host's HTTP connections: a single pool every archive and worker shares, sized to the host's cap, and what
it counts at its sockets.

Zenodo blocks an address with more than a few parallel downloads and a proxy counts connections, idle keep-alives
included; a session per thread (the stream's chunk workers, the segment workers, the file drivers each had their
own) kept a pool per thread, so a run held several times the cap open. Here each host's gate keeps one
:class:`HostPool`: one urllib3 pool per origin of at most ``cap`` connections, reused from request to request (a
connection is closed only when its answer could not be read to the end). The gate admits at most ``cap`` requests
at once, and the pool makes a new connection only when every one it has is taken, so connections never outnumber
the requests admitted. Each thread still gets its own ``requests.Session`` (its cookies stay its own), all of them
on the pool's one adapter.

The counts are taken where the sockets are: a connection from its connect to its close, a transfer from taking a
connection for a request to giving it back; the report shows those, not what was meant to happen.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool, PoolManager
from urllib3.connection import HTTPConnection, HTTPSConnection

from .protocol import USER_AGENT
from .throttle import HostGate


class _Counted:
    """A connection that tells its gate when it opens and when it closes (mixed into urllib3's)."""

    gate: HostGate | None = None
    _counted = False

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        if self.gate is not None and not self._counted:
            self._counted = True
            self.gate.connection(+1)

    def close(self) -> None:
        try:
            super().close()  # type: ignore[misc]
        finally:
            if self.gate is not None and self._counted:
                self._counted = False
                self.gate.connection(-1)


class _CountedHTTPConnection(_Counted, HTTPConnection):
    pass


class _CountedHTTPSConnection(_Counted, HTTPSConnection):
    pass


class _CountedPool:
    """A pool whose connections count themselves, and that counts the transfers on them (mixed into urllib3's)."""

    gate: HostGate | None = None

    def _new_conn(self) -> Any:
        conn = super()._new_conn()  # type: ignore[misc]
        conn.gate = self.gate
        return conn

    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)  # type: ignore[misc]
        if self.gate is not None:
            self.gate.transfer(+1)
        return conn

    def _put_conn(self, conn: Any) -> None:
        # urllib3 gives back exactly what it took, once: a connection whose answer was read, or None for a dropped one
        if self.gate is not None:
            self.gate.transfer(-1)
        super()._put_conn(conn)  # type: ignore[misc]


class _CountedHTTPPool(_CountedPool, HTTPConnectionPool):
    ConnectionCls = _CountedHTTPConnection


class _CountedHTTPSPool(_CountedPool, HTTPSConnectionPool):
    ConnectionCls = _CountedHTTPSConnection


class _Pools(PoolManager):
    """urllib3's pool manager (one pool per origin), its pools counting for ``gate``."""

    def __init__(self, gate: HostGate, **kw: Any) -> None:
        super().__init__(**kw)
        self.gate = gate
        self.pool_classes_by_scheme = {"http": _CountedHTTPPool, "https": _CountedHTTPSPool}

    def _new_pool(self, scheme: str, host: str, port: int, request_context: dict[str, Any] | None = None) -> Any:
        pool = super()._new_pool(scheme, host, port, request_context)
        if isinstance(pool, _CountedPool):
            pool.gate = self.gate
        return pool


class _Adapter(HTTPAdapter):
    def __init__(self, gate: HostGate, cap: int) -> None:
        self.gate = gate
        # not blocking: the gate already holds requests beyond the cap, and a pool that waited could wait for ever on a
        # connection an unclosed answer kept
        super().__init__(pool_connections=4, pool_maxsize=cap, pool_block=False, max_retries=0)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        self._pool_connections = connections
        self._pool_maxsize = maxsize
        self._pool_block = block
        self.poolmanager = _Pools(self.gate, num_pools=connections, maxsize=maxsize, block=block, **pool_kwargs)


class HostPool:
    """The connections to one host (see the module): ``session()`` for this thread, all on one pool."""

    def __init__(self, gate: HostGate) -> None:
        self.adapter = _Adapter(gate, gate.record.cap)
        self._local = threading.local()

    def session(self) -> Any:
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            s.headers["User-Agent"] = USER_AGENT
            s.headers["Accept-Encoding"] = "identity"  # byte ranges must address the stored bytes
            s.mount("http://", self.adapter)
            s.mount("https://", self.adapter)
            self._local.session = s
        return s

    def close(self) -> None:
        """Close every idle connection now (their places stay: a later request opens one again). The pools themselves stay
        open, so that a request between its gate and its connection never meets a closed one."""
        manager = self.adapter.poolmanager
        for key in manager.pools.keys():
            pool = manager.pools.get(key)
            places = getattr(pool, "pool", None)  # urllib3's queue of idle connections (None for a place never used)
            if places is None:
                continue
            idle = []
            while True:
                try:
                    idle.append(places.get(block=False))
                except queue.Empty:
                    break
            for conn in idle:
                if conn is not None:
                    conn.close()
                try:
                    places.put(None, block=False)
                except queue.Full:
                    pass


def mount(session: Any, prefix: str, gate: HostGate) -> None:
    """Send ``session``'s requests to ``prefix`` (an origin, as ``https://host/``) through ``gate``'s one pool: the
    GCS client's own session, which is the process's and outlives a run."""
    session.mount(prefix, gate.kept(HostPool).adapter)
