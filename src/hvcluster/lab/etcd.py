"""Real etcd processes on this machine: for the test fixtures, the lab and fault injection.

:class:`EtcdCluster` starts 1, 3 or 5 members of the Debian ``etcd`` on free loopback ports
with their own data dirs, over plain HTTP or (given an :class:`~hvcluster.host.pki.Authority`)
with TLS on client and peer links and client-certificate authentication. Each member
(:class:`EtcdProcess`) can be stopped (SIGTERM, then SIGKILL), killed, paused (SIGSTOP),
resumed (SIGCONT) and restarted on the same ports and data dir. No process outlives its owner:
each dies with the process that started it (``PR_SET_PDEATHSIG``), and whatever is still
running at interpreter exit is killed.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Iterator
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from types import TracebackType

from hvcluster.host.pki import Authority, CertFiles, etcd_tls_flags
from hvcluster.models.errors import HvcError

ETCD_BINARY = "/usr/bin/etcd"
HOST = "127.0.0.1"
PORT_FLOOR = 20000  # lab and test ports are chosen from here up to the ephemeral range

_PR_SET_PDEATHSIG = 1
_running: weakref.WeakSet[EtcdProcess] = weakref.WeakSet()


class EtcdLabError(HvcError):
    """An etcd process of the lab could not be started or did not become healthy."""


def _ephemeral_floor() -> int:
    """The lowest port the kernel hands out to outgoing connections."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on the loopback address right now, chosen below the
    kernel's ephemeral range: a port from that range, free when asked, can be taken a moment
    later by any outgoing connection (e.g. one etcd member dialling another) before the
    process meant to listen on it binds it."""
    low = _ephemeral_floor()
    tries = 4 * n + 64
    candidates = random.sample(range(PORT_FLOOR, max(low, PORT_FLOOR + tries)), k=tries)
    with contextlib.ExitStack() as stack:
        chosen: list[int] = []
        for port in candidates:
            s = stack.enter_context(socket.socket())
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            chosen.append(port)
            if len(chosen) == n:
                return chosen
    raise EtcdLabError(f"no {n} free TCP ports found on {HOST} in {PORT_FLOOR}-{low - 1}")


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass(eq=False)  # compared and hashed as the one process it is (``_running``)
class EtcdProcess:
    """One etcd member: its ports, data dir and process.

    ``cluster_state``: ``new`` (a member of a cluster starting now) or ``existing`` (one
    added to a running cluster: ``hvc node join``). ``tls``: this member's certificate (its
    client and peer URLs are then https and it asks every client and peer for a certificate
    signed by the same CA); ``client_tls``: the certificate its health check presents
    (default ``tls``)."""

    name: str
    data_dir: Path
    client_port: int
    peer_port: int
    initial_cluster: str
    cluster_token: str
    _: KW_ONLY
    heartbeat_ms: int = 100
    election_ms: int = 1000
    binary: str = ETCD_BINARY
    host: str = HOST
    tls: CertFiles | None = None
    client_tls: CertFiles | None = None
    cluster_state: str = "new"
    log_path: Path = field(init=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.client_tls = self.client_tls or self.tls
        self.log_path = self.data_dir.parent / f"{self.name}.log"

    @property
    def endpoint(self) -> str:
        """``<host>:<client port>``: what the store takes."""
        return f"{self.host}:{self.client_port}"

    @property
    def scheme(self) -> str:
        return "http" if self.tls is None else "https"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.peer_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        return [
            self.binary,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self.initial_cluster}",
            f"--initial-cluster-token={self.cluster_token}",
            f"--initial-cluster-state={self.cluster_state}",
            f"--heartbeat-interval={self.heartbeat_ms}",
            f"--election-timeout={self.election_ms}",
            "--logger=zap",
            "--log-outputs=stderr",
            "--log-level=warn",
            *self._tls_flags(),
        ]

    def _tls_flags(self) -> list[str]:
        if self.tls is None:
            return []
        ca, cert, key = self.tls.ca, self.tls.cert, self.tls.key
        return etcd_tls_flags(ca, cert, key)

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.client_tls is None:
            return None
        context = ssl.create_default_context(cafile=str(self.client_tls.ca))
        context.load_cert_chain(self.client_tls.cert, self.client_tls.key)
        return context

    def start(self, wait: bool = True, timeout: float = 20.0) -> None:
        """Start the member (same ports, same data dir as before); wait until it is healthy."""
        if self.running:
            return
        if not Path(self.binary).exists():
            raise EtcdLabError(f"{self.binary} not found: install the etcd-server package")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=_die_with_parent,
                start_new_session=True,
            )
        _running.add(self)
        if wait:
            self.wait_healthy(timeout)

    def health(self, timeout: float = 1.0) -> bool:
        """True when the member answers ``/health`` with ``true`` (it has a leader)."""
        try:
            url, context = f"{self.client_url}/health", self._ssl_context()
            with urllib.request.urlopen(url, timeout=timeout, context=context) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def last_words(self, lines: int = 3) -> str:
        """The end of the member's log (why it exited), for an error message."""
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:])

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise EtcdLabError(
                    f"etcd {self.name} exited at start; see {self.log_path}: {self.last_words()}"
                )
            if self.health(timeout=0.5):
                return
            time.sleep(0.05)
        raise EtcdLabError(f"etcd {self.name} not healthy after {timeout}s; see {self.log_path}")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it is still there after ``timeout``."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)  # a paused process cannot handle SIGTERM
                proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc = None
        _running.discard(self)

    def kill(self) -> None:
        """SIGKILL: a crash."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        self._proc = None
        _running.discard(self)

    def pause(self) -> None:
        """SIGSTOP: the process freezes with its sockets open."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def restart(self, wait: bool = True, timeout: float = 20.0) -> None:
        self.stop()
        self.start(wait=wait, timeout=timeout)

    def _signal(self, sig: signal.Signals) -> None:
        if not self.running or self._proc is None:
            raise EtcdLabError(f"etcd {self.name} is not running")
        self._proc.send_signal(sig)


class EtcdCluster:
    """``size`` etcd members on loopback, in ``base_dir`` (a new temp dir if not given).

    Use as a context manager, or call :meth:`start` and :meth:`stop` (in a ``finally``).
    """

    def __init__(
        self,
        size: int = 1,
        base_dir: Path | None = None,
        *,
        heartbeat_ms: int = 100,
        election_ms: int = 1000,
        name_prefix: str = "etcd",
        authority: Authority | None = None,
    ) -> None:
        """With ``authority``, every member runs with TLS and client-certificate auth, with
        a certificate of that CA; :attr:`client_tls` is one for clients."""
        if size < 1:
            raise EtcdLabError(f"an etcd cluster needs at least one member, got {size}")
        self._own_dir = base_dir is None
        self.base_dir = Path(tempfile.mkdtemp(prefix="hvc-etcd-")) if base_dir is None else base_dir
        ports = free_ports(2 * size)
        names = [f"{name_prefix}{i}" for i in range(size)]
        scheme = "http" if authority is None else "https"
        initial = ",".join(f"{n}={scheme}://{HOST}:{ports[2 * i + 1]}" for i, n in enumerate(names))
        self.client_tls: CertFiles | None = None
        certs: dict[str, CertFiles] = {}
        if authority is not None:
            self.client_tls = authority.issue(f"{name_prefix}-client")
            certs = {n: authority.issue(n, [HOST, "localhost"]) for n in names}
        token = f"hvc-{os.getpid()}-{ports[0]}"
        self.members = [
            EtcdProcess(
                name,
                self.base_dir / name,
                ports[2 * i],
                ports[2 * i + 1],
                initial,
                token,
                heartbeat_ms=heartbeat_ms,
                election_ms=election_ms,
                tls=certs.get(name),
                client_tls=self.client_tls,
            )
            for i, name in enumerate(names)
        ]

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def start(self, timeout: float = 30.0) -> None:
        """Start every member and wait until each is healthy; on failure stop them all."""
        try:
            for m in self.members:
                m.start(wait=False)
            deadline = time.monotonic() + timeout
            for m in self.members:
                m.wait_healthy(max(0.1, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for m in self.members:
            with contextlib.suppress(Exception):
                m.stop()

    def cleanup(self) -> None:
        """Stop, and remove the data dirs if this object made them."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()

    def __iter__(self) -> Iterator[EtcdProcess]:
        return iter(self.members)


def _kill_leftovers() -> None:
    for proc in list(_running):
        with contextlib.suppress(Exception):
            proc.kill()


atexit.register(_kill_leftovers)
