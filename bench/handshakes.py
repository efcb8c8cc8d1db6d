#!/usr/bin/env python3
"""Handshake benchmark: TLS servers through the ssa engine against nginx and s_server.

What is measured, in one run, on loopback:

Handshake rate: full TLS 1.3 handshakes (no session reuse) driven by a C
client (``bench/hs_client.c``: connect, handshake, close_notify, close, as
``openssl s_time -new`` does, several in flight) against

* an SSA server: a private ssa engine plus a Python application in its own
  process that accepts and closes (``ssa_engine.create_server`` + ``accept``);
* nginx with one worker process (Debian's package, run with a private
  configuration and prefix in the run's temporary folder);
* ``openssl s_server``;
* the floor: the engine's own TLS stack (pyOpenSSL on the OpenSSL of the
  ``cryptography`` wheel, uvloop) in one Python process that does nothing but
  accept, handshake, wait for the client's close_notify and close (this
  file with ``_floor``). No server built on that stack can cost less per
  handshake, so ssa / floor says how much the engine's design adds, and
  floor / nginx how much Python and that OpenSSL build cost by themselves;

each with an ECDSA P-256 and an RSA-2048 certificate made for the run. For
each: handshakes per second, server CPU per handshake (user + system from
/proc/PID/stat: the engine plus the application for SSA, the worker for
nginx), handshakes per second per server core (= handshakes / server CPU
seconds) and its ratio to nginx. The target: SSA >= 0.8x nginx per core.
A driver check measures ``openssl s_time -new`` against the C client on the
same nginx, to show which client was the cheaper driver.

Memory: RSS of a fresh engine per idle accepted TLS connection at 1,000 and
10,000 connections (the application keeps every accepted socket open; the
C client completes each handshake and idles), (RSS after - RSS before) / N;
the application's and, for comparison, an nginx worker's figures too.
Target: engine <= 40 kB per connection.

Why: a server through the engine pays an extra process hop per accepted
connection (handshake in the engine, the plaintext stream passed to the
application); these numbers say whether that stays near nginx in CPU and
small in memory.

Run: ``python bench/handshakes.py`` (``--quick`` for short measurements and
smaller connection counts). It installs Debian's nginx (and gcc/libssl-dev
for the client) when missing, makes certificates, starts everything on
temporary sockets and ports, and stops everything at the end. No address but
127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay import (
    HOST,
    IO_TIMEOUT,
    MACHINE,
    NOISY,
    START_TIMEOUT,
    Certs,
    CpuReader,
    Meter,
    Sample,
    Service,
    children_cpu_seconds,
    free_port,
    log,
    machine_busy_seconds,
    make_certs,
    proc_cpu_seconds,
    source_version,
    start_engine,
    tcp_port_open,
    time_limit,
    wait_for_quiet,
    wait_until,
)

BENCH_DIR = Path(__file__).resolve().parent
KINDS = {"ec": "ECDSA P-256", "rsa": "RSA-2048"}
SERVERS = {"nginx": "nginx (1 worker)", "ssa": "ssa (engine + app)",
           "s_server": "openssl s_server", "floor": "pyOpenSSL floor"}
#: the client's TLS 1.3 suite (all servers accept it; the key share is X25519)
SUITE = "TLS_AES_128_GCM_SHA256"
#: connections opened before the memory baseline (first-use allocations)
WARM = 16
#: handshakes in flight while the hold client opens its connections
HOLD_INFLIGHT = 32
#: kB = 1000 bytes
kB = 1000
#: descriptors the engine holds per accepted connection (TCP socket, plaintext
#: socketpair end, control socketpair end; the application's pidfd is shared
#: by all of its sockets); the memory figures print the measured count
ENGINE_FDS = 3
#: descriptors kept in reserve for everything else in a process
FD_RESERVE = 512


# ---------------------------------------------------------------------------
# set-up: packages, descriptors, the C client


def ensure_packages() -> None:
    """Install nginx, gcc and libssl-dev from Debian when missing."""
    wanted = {
        "nginx": nginx_binary(),
        "gcc": shutil.which("gcc"),
        "libssl-dev": Path("/usr/include/openssl/ssl.h").exists() or None,
    }
    missing = [pkg for pkg, present in wanted.items() if not present]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SystemExit(f"handshakes bench needs: {' '.join(missing)} (apt-get install -y ...)")
    log(f"installing {' '.join(missing)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, timeout=600, env=env,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", *missing], check=True, timeout=600, env=env,
                   stdout=subprocess.DEVNULL)


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if Path(p).exists()), None)


def raise_nofile(needed: int) -> int:
    """Soft limit up to the hard one; the hard one up to ``needed`` if allowed.

    Raising the hard limit needs CAP_SYS_RESOURCE (root on most machines, not
    in every container). Every process started from here inherits the
    limits (and raises its soft limit to the hard one itself). Returns the
    soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed and os.geteuid() == 0:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            soft, hard = needed, needed
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def build_client(directory: Path) -> Path:
    binary = directory / "hs_client"
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-o", str(binary), str(BENCH_DIR / "hs_client.c"),
         "-lssl", "-lcrypto"],
        check=True, timeout=120,
    )
    return binary


# ---------------------------------------------------------------------------
# the SSA application: a separate process (this file with "_app")


def app_main(argv: list[str]) -> int:
    """``_app close|hold CERT KEY SECONDS [N,N,...]``: accept, then close or keep.

    Prints ``port P`` once listening; in hold mode ``held N`` when it holds N
    accepted sockets, for each N listed. Exits after SECONDS whatever happens.
    """
    mode, cert, key, seconds = argv[0], argv[1], argv[2], float(argv[3])
    targets = {int(n) for n in argv[4].split(",")} if len(argv) > 4 else set()
    signal.alarm(max(1, int(seconds)))  # never outlive the benchmark
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import ssa_engine

    lst = ssa_engine.create_server((HOST, 0), certfile=cert, keyfile=key)
    print(f"port {lst.getsockname()[1]}", flush=True)
    held = []
    while True:
        conn, _addr = lst.accept()
        if mode == "close":
            conn.close()
            continue
        held.append(conn)
        if len(held) in targets:
            print(f"held {len(held)}", flush=True)


def floor_main(argv: list[str]) -> int:
    """``_floor CERT KEY SECONDS``: the least a server on the engine's TLS stack can do.

    pyOpenSSL on uvloop, one process: accept, handshake (session tickets as
    OpenSSL sends them by default, as the engine does), read until the
    client's close_notify, answer it, close. Prints ``port P``.
    """
    cert, key, seconds = argv[0], argv[1], float(argv[2])
    signal.alarm(max(1, int(seconds)))  # never outlive the benchmark
    import socket

    import uvloop
    from OpenSSL import SSL

    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.use_certificate_chain_file(cert)
    ctx.use_privatekey_file(key)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST, 0))
    listener.listen(4096)
    listener.setblocking(False)
    loop = uvloop.new_event_loop()

    class Conn:
        __slots__ = ("tcp", "fd", "tls", "handshaking")

        def __init__(self, tcp: socket.socket) -> None:
            self.tcp, self.fd = tcp, tcp.fileno()
            self.tls = SSL.Connection(ctx, tcp)
            self.tls.set_accept_state()
            self.handshaking = True
            self.step()

        def step(self) -> None:
            try:
                if self.handshaking:
                    self.tls.do_handshake()
                    self.handshaking = False
                while True:
                    self.tls.recv(16384)
            except SSL.WantReadError:
                loop.add_reader(self.fd, self.step)
                return
            except SSL.ZeroReturnError:
                with contextlib.suppress(SSL.Error):
                    self.tls.shutdown()
            except (SSL.Error, OSError):
                pass
            loop.remove_reader(self.fd)
            self.tcp.close()

    def on_acceptable() -> None:
        for _ in range(64):
            try:
                tcp, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            tcp.setblocking(False)
            Conn(tcp)

    loop.add_reader(listener.fileno(), on_acceptable)
    print(f"port {listener.getsockname()[1]}", flush=True)
    loop.run_forever()
    return 0


def start_floor(kind: str, certs: Certs, workdir: Path, lifetime: float) -> tuple[Service, int]:
    argv = [sys.executable, str(Path(__file__).resolve()), "_floor", str(certs.cert),
            str(certs.key), str(int(lifetime))]
    server = Service(f"pyOpenSSL floor {kind}", argv, workdir / f"floor-{kind}.log",
                     stdout=subprocess.PIPE)
    try:
        port = int(LineReader(server.name, server.proc).expect("port", START_TIMEOUT))
    except BaseException:
        server.stop()
        raise
    return server, port


class LineReader:
    """Lines from a child's stdout pipe, each read bounded by a timeout."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self._name = name
        self._proc = proc
        self._fd = proc.stdout.fileno()
        self._buf = b""

    def _check_alive(self) -> None:
        if self._proc.poll() is not None:
            raise RuntimeError(f"{self._name} exited early with status {self._proc.returncode}")

    def line(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self._name}: no answer within {timeout:g} s")
            readable, _, _ = select.select([self._fd], [], [], min(left, 1.0))
            if readable:
                chunk = os.read(self._fd, 4096)
                if not chunk:
                    self._check_alive()
                    raise RuntimeError(f"{self._name} closed its output")
                self._buf += chunk
            else:
                self._check_alive()
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def expect(self, prefix: str, timeout: float) -> str:
        line = self.line(timeout)
        if not line.startswith(prefix):
            raise RuntimeError(f"{self._name}: expected {prefix!r}, got {line!r}")
        return line[len(prefix):].strip()


def start_app(name: str, mode: str, certs: Certs, engine_socket: Path, workdir: Path,
              lifetime: float, targets: list[int] | None = None) -> tuple[Service, LineReader, int]:
    argv = [sys.executable, str(Path(__file__).resolve()), "_app", mode, str(certs.cert),
            str(certs.key), str(int(lifetime))]
    if targets:
        argv.append(",".join(str(n) for n in targets))
    env = {**os.environ, "SSA_ENGINE_SOCKET": str(engine_socket)}
    app = Service(name, argv, workdir / f"{name.replace(' ', '-')}.log", env=env,
                  stdout=subprocess.PIPE)
    reader = LineReader(name, app.proc)
    try:
        port = int(reader.expect("port", START_TIMEOUT))
    except BaseException:
        app.stop()
        raise
    return app, reader, port


# ---------------------------------------------------------------------------
# the other servers


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections {connections};
}}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    client_header_timeout 600s;
    keepalive_timeout 600s;
{servers}}}
"""

NGINX_SERVER = """\
    server {{
        listen {host}:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        location / {{ return 204; }}
    }}
"""


def start_nginx(certs: dict[str, Certs], workdir: Path,
                connections: int) -> tuple[Service, int, dict[str, int]]:
    """One nginx (master + one worker) with a port per certificate kind."""
    prefix = workdir / "nginx"
    prefix.mkdir()
    ports = {kind: free_port() for kind in certs}
    servers = "".join(NGINX_SERVER.format(host=HOST, port=ports[k], cert=c.cert, key=c.key)
                      for k, c in certs.items())
    conf = prefix / "nginx.conf"
    # nginx closes idle connections to make room once fewer than 1/16 of
    # worker_connections are free: leave it plenty, so it never does
    worker_connections = 2 * connections + 64
    conf.write_text(NGINX_CONF.format(prefix=prefix, servers=servers,
                                      connections=worker_connections,
                                      nofile=worker_connections + 256))
    binary = nginx_binary()
    assert binary is not None
    nginx = Service("nginx", [binary, "-p", str(prefix), "-c", str(conf),
                              "-e", str(prefix / "error.log")], workdir / "nginx.log")
    for port in ports.values():
        wait_until(lambda port=port: tcp_port_open(port), nginx, f"port {port}")
    workers: list[int] = []

    def have_worker() -> bool:
        workers[:] = children_of(nginx.pid)
        return len(workers) == 1

    wait_until(have_worker, nginx, "its one worker")
    return nginx, workers[0], ports


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
            found.append(int(entry))
    return found


def start_s_server(kind: str, certs: Certs, workdir: Path) -> tuple[Service, int]:
    port = free_port()
    argv = ["openssl", "s_server", "-quiet", "-accept", f"{HOST}:{port}",
            "-cert", str(certs.cert), "-key", str(certs.key), "-tls1_3"]
    server = Service(f"openssl s_server {kind}", argv, workdir / f"s_server-{kind}.log",
                     stdout=subprocess.DEVNULL)
    wait_until(lambda: tcp_port_open(port), server, "port")
    return server, port


# ---------------------------------------------------------------------------
# measuring


@dataclass(frozen=True)
class Endpoint:
    server: str  # a key of SERVERS
    kind: str  # a key of KINDS
    port: int
    roles: tuple[str, ...]  # the CPU-reader roles that make up the server


@dataclass
class Setup:
    client: Path
    endpoints: list[Endpoint]
    readers: dict[str, CpuReader]
    certs: dict[str, Certs]
    nginx_worker: int
    negotiated: dict[str, str] = field(default_factory=dict)


@dataclass
class RateRun:
    handshakes: int
    failures: int
    sample: Sample


@dataclass
class Results:
    rates: dict[str, list[RateRun]] = field(default_factory=dict)  # "server/kind"
    drivers: dict[str, RateRun] = field(default_factory=dict)
    sweep: dict[int, dict[str, RateRun]] = field(default_factory=dict)  # in flight -> server
    memory: dict[str, dict[str, Any]] = field(default_factory=dict)


def run_client_rate(setup: Setup, port: int, seconds: float, inflight: int) -> RateRun:
    meter = Meter(setup.readers)
    meter.start()
    out = subprocess.run(
        [str(setup.client), "rate", str(port), f"{seconds:g}", str(int(seconds * 50_000)),
         str(inflight)],
        check=True, capture_output=True, text=True, timeout=seconds + IO_TIMEOUT + 10,
    )
    meter.stop()
    assert meter.sample is not None
    count, elapsed, failures = out.stdout.split()
    meter.sample.seconds = float(elapsed)  # the client's own clock, without its start-up
    return RateRun(int(count), int(failures), meter.sample)


def run_s_time(setup: Setup, port: int, seconds: float) -> RateRun:
    meter = Meter(setup.readers)
    meter.start()
    out = subprocess.run(
        ["openssl", "s_time", "-connect", f"{HOST}:{port}", "-new", "-time", f"{seconds:g}",
         "-ciphersuites", SUITE],
        check=True, capture_output=True, text=True, timeout=seconds + IO_TIMEOUT + 10,
    )
    meter.stop()
    assert meter.sample is not None
    found = re.search(r"(\d+) connections in [\d.]+s", out.stdout)
    if found is None:
        raise RuntimeError(f"cannot read openssl s_time's output: {out.stdout[-300:]!r}")
    return RateRun(int(found.group(1)), 0, meter.sample)


def run_rates(setup: Setup, results: Results, seconds: float, runs: int, inflight: int,
              quiet_wait: float) -> None:
    for run in range(1, runs + 1):
        for ep in setup.endpoints:
            wait_for_quiet(quiet_wait)
            r = run_client_rate(setup, ep.port, seconds, inflight)
            results.rates.setdefault(f"{ep.server}/{ep.kind}", []).append(r)
            cpu = sum(r.sample.cpu[role] for role in ep.roles)
            log(f"  run {run}/{runs} {SERVERS[ep.server]:20s} {KINDS[ep.kind]:12s} "
                f"{r.handshakes / r.sample.seconds:7.0f} /s  "
                f"{r.handshakes / cpu if cpu else 0:7.0f} /s per server core")


def run_drivers(setup: Setup, results: Results, seconds: float, inflight: int,
                quiet_wait: float) -> None:
    """s_time -new against the C client, both on nginx with the ECDSA certificate."""
    ep = next(e for e in setup.endpoints if e.server == "nginx" and e.kind == "ec")
    for key, run in (
        ("s_time", lambda: run_s_time(setup, ep.port, seconds)),
        ("c1", lambda: run_client_rate(setup, ep.port, seconds, 1)),
        ("c", lambda: run_client_rate(setup, ep.port, seconds, inflight)),
    ):
        wait_for_quiet(quiet_wait)
        results.drivers[key] = run()
        r = results.drivers[key]
        log(f"  driver {key:7s} {r.handshakes / r.sample.seconds:7.0f} /s")


def run_sweep(setup: Setup, results: Results, seconds: float, levels: list[int],
              quiet_wait: float) -> None:
    """nginx and ssa (ECDSA) at several handshakes in flight, one run each."""
    for level in levels:
        for ep in setup.endpoints:
            if ep.kind != "ec" or ep.server not in ("nginx", "ssa"):
                continue
            wait_for_quiet(quiet_wait)
            r = run_client_rate(setup, ep.port, seconds, level)
            results.sweep.setdefault(level, {})[ep.server] = r
            cpu = sum(r.sample.cpu[role] for role in ep.roles)
            log(f"  {level:3d} in flight {SERVERS[ep.server]:20s} "
                f"{r.handshakes / cpu if cpu else 0:7.0f} /s per server core")


def probe(setup: Setup, port: int) -> str:
    out = subprocess.run([str(setup.client), "probe", str(port)], check=True,
                         capture_output=True, text=True, timeout=IO_TIMEOUT)
    return out.stdout.strip()


# memory


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def settle(pids: list[int], window: float = 0.5, limit: float = 20.0) -> None:
    """Wait until these processes stop using CPU (their work is done)."""
    deadline = time.monotonic() + limit
    before = sum(proc_cpu_seconds(p) for p in pids)
    while time.monotonic() < deadline:
        time.sleep(window)
        now = sum(proc_cpu_seconds(p) for p in pids)
        if now - before <= 0.01:
            return
        before = now
    log(f"  (servers still busy after {limit:g} s; reading memory anyway)")


class Holder:
    """hs_client hold: N connections, handshaken and idle until its stdin closes."""

    def __init__(self, client: Path, port: int, n: int, log_path: Path) -> None:
        self.name = f"hs_client hold {n}"
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(client), "hold", str(port), str(n), str(HOLD_INFLIGHT)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log)
        try:
            LineReader(self.name, self.proc).expect("ready", IO_TIMEOUT + n / 50)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()  # the client exits; the kernel closes its sockets
        try:
            self.proc.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=START_TIMEOUT)
        self.proc.stdout.close()
        self._log.close()


def measure_memory(client: Path, port: int, sizes: list[int], pids: dict[str, int],
                   workdir: Path, name: str,
                   accepted: Callable[[int], None] | None = None) -> dict[str, Any]:
    """RSS of each process in ``pids`` per idle connection, at each size.

    ``accepted(total)`` waits until the server side holds ``total``
    connections (the application's own count); without it, the wait is for
    the server processes to go idle.
    """
    holders: list[Holder] = []
    figures: dict[str, Any] = {"sizes": {}}
    try:
        holders.append(Holder(client, port, WARM, workdir / f"hold-{name}-warm.log"))
        if accepted:
            accepted(WARM)
        settle(list(pids.values()))
        base = {role: rss_bytes(pid) for role, pid in pids.items()}
        base_fds = {role: fd_count(pid) for role, pid in pids.items()}
        figures["baseline_rss_bytes"] = base
        held = 0
        for n in sizes:
            t0 = time.perf_counter()
            holders.append(Holder(client, port, n - held, workdir / f"hold-{name}-{n}.log"))
            held = n
            if accepted:
                accepted(WARM + n)
            seconds = time.perf_counter() - t0
            settle(list(pids.values()))
            row: dict[str, Any] = {"seconds_to_open": round(seconds, 2)}
            for role, pid in pids.items():
                rss = rss_bytes(pid)
                row[role] = {
                    "rss_bytes": rss,
                    "bytes_per_connection": round((rss - base[role]) / n),
                    "fds_per_connection": round((fd_count(pid) - base_fds[role]) / n, 2),
                }
            figures["sizes"][n] = row
            log(f"  {name}: {n} idle connections: " + ", ".join(
                f"{role} {row[role]['bytes_per_connection'] / kB:.1f} kB each"
                for role in pids))
    finally:
        for h in reversed(holders):
            h.stop()
    return figures


def run_memory_ssa(setup: Setup, results: Results, workdir: Path, sizes: list[int],
                   lifetime: float) -> None:
    """A fresh engine and a holding application: nothing else has run through them."""
    (workdir / "mem").mkdir()
    engine, engine_socket = start_engine(workdir / "mem")
    app: Service | None = None
    try:
        targets = [WARM, *(WARM + n for n in sizes)]
        app, reader, port = start_app("ssa app hold", "hold", setup.certs["ec"], engine_socket,
                                      workdir, lifetime, targets)

        def accepted(total: int) -> None:
            got = int(reader.expect("held", IO_TIMEOUT + total / 50))
            if got != total:
                raise RuntimeError(f"the application holds {got}, expected {total}")

        results.memory["ssa"] = measure_memory(
            setup.client, port, sizes, {"engine": engine.pid, "app": app.pid}, workdir, "ssa",
            accepted)
        engine.check_alive()
        app.check_alive()
    finally:
        if app is not None:
            app.stop()
        engine.stop()


# ---------------------------------------------------------------------------
# figures and report


def rate_figures(setup: Setup, results: Results) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for ep in setup.endpoints:
        key = f"{ep.server}/{ep.kind}"
        runs = results.rates[key]
        per_s = [r.handshakes / r.sample.seconds for r in runs]
        server_cpu = [sum(r.sample.cpu[role] for role in ep.roles) for r in runs]
        per_core = [r.handshakes / c if c else 0.0 for r, c in zip(runs, server_cpu, strict=True)]
        row: dict[str, Any] = {
            "server": SERVERS[ep.server],
            "certificate": KINDS[ep.kind],
            "handshakes_per_s": round(statistics.median(per_s), 1),
            "server_cpu_ms": round(statistics.median(
                c * 1e3 / r.handshakes for r, c in zip(runs, server_cpu, strict=True)), 3),
            "per_core": round(statistics.median(per_core), 1),
            "server_cores": round(statistics.median(
                c / r.sample.seconds for r, c in zip(runs, server_cpu, strict=True)), 2),
            "client_cpu_ms": round(statistics.median(
                r.sample.cpu["client"] * 1e3 / r.handshakes for r in runs), 3),
            "other_cores": round(statistics.median(r.sample.other_cores() for r in runs), 2),
            "failures": sum(r.failures for r in runs),
            "runs_per_core": [round(x, 1) for x in per_core],
            "negotiated": setup.negotiated.get(key, "?"),
        }
        if ep.server == "ssa":
            row["engine_cpu_ms"] = round(statistics.median(
                r.sample.cpu["engine"] * 1e3 / r.handshakes for r in runs), 3)
            row["app_cpu_ms"] = round(statistics.median(
                r.sample.cpu[f"app_{ep.kind}"] * 1e3 / r.handshakes for r in runs), 3)
        rows[key] = row
    for kind in KINDS:
        ref = rows[f"nginx/{kind}"]["per_core"]
        for server in SERVERS:
            row = rows[f"{server}/{kind}"]
            row["x_nginx"] = round(row["per_core"] / ref, 3) if ref else None
            # the ratio in each run (servers interleaved, so like with like)
            row["runs_x_nginx"] = [
                round(a / b, 3) if b else None
                for a, b in zip(row["runs_per_core"], rows[f"nginx/{kind}"]["runs_per_core"],
                                strict=True)]
        floor = rows[f"floor/{kind}"]["per_core"]
        rows[f"ssa/{kind}"]["x_floor"] = round(rows[f"ssa/{kind}"]["per_core"] / floor, 3) \
            if floor else None
    return rows


def driver_figures(results: Results) -> dict[str, dict[str, Any]]:
    labels = {"s_time": "openssl s_time -new", "c1": "hs_client, 1 in flight",
              "c": "hs_client (the driver used)"}
    rows = {}
    for key, r in results.drivers.items():
        rows[key] = {
            "label": labels[key],
            "handshakes_per_s": round(r.handshakes / r.sample.seconds, 1),
            "client_cpu_ms": round(r.sample.cpu["client"] * 1e3 / r.handshakes, 3),
            "nginx_per_core": round(r.handshakes / r.sample.cpu["nginx"], 1)
            if r.sample.cpu["nginx"] else None,
            "nginx_cores": round(r.sample.cpu["nginx"] / r.sample.seconds, 2),
        }
    return rows


def sweep_figures(results: Results) -> dict[int, dict[str, Any]]:
    rows: dict[int, dict[str, Any]] = {}
    for level, runs in results.sweep.items():
        nginx, ssa = runs["nginx"], runs["ssa"]
        nginx_cpu = nginx.sample.cpu["nginx"]
        ssa_cpu = ssa.sample.cpu["engine"] + ssa.sample.cpu["app_ec"]
        rows[level] = {
            "nginx_per_s": round(nginx.handshakes / nginx.sample.seconds, 1),
            "nginx_per_core": round(nginx.handshakes / nginx_cpu, 1) if nginx_cpu else None,
            "ssa_per_s": round(ssa.handshakes / ssa.sample.seconds, 1),
            "ssa_per_core": round(ssa.handshakes / ssa_cpu, 1) if ssa_cpu else None,
            "engine_cpu_ms": round(ssa.sample.cpu["engine"] * 1e3 / ssa.handshakes, 3),
            "app_cpu_ms": round(ssa.sample.cpu["app_ec"] * 1e3 / ssa.handshakes, 3),
            "engine_cores": round(ssa.sample.cpu["engine"] / ssa.sample.seconds, 2),
            "other_cores": round(max(nginx.sample.other_cores(), ssa.sample.other_cores()), 2),
        }
        if nginx_cpu and ssa_cpu:
            rows[level]["x_nginx"] = round(rows[level]["ssa_per_core"]
                                           / rows[level]["nginx_per_core"], 3)
    return rows


def target_figures(rates: dict[str, Any], memory: dict[str, Any], sizes: list[int],
                   skipped: dict[int, str]) -> dict[str, tuple[float | None, bool | None]]:
    """The issue's targets: (value, met?); (None, None) where not measured."""
    targets: dict[str, tuple[float | None, bool | None]] = {}
    for kind, label in KINDS.items():
        x = rates[f"ssa/{kind}"]["x_nginx"]
        targets[f"ssa / nginx handshakes per core, {label} (>= 0.80)"] = (x, x >= 0.8)
    for n in sorted(set(sizes) | set(skipped)):
        name = f"engine kB per idle connection at {n:,} (<= 40)"
        if n in skipped:
            targets[name] = (None, None)
            continue
        per = memory["ssa"]["sizes"][n]["engine"]["bytes_per_connection"] / kB
        targets[name] = (round(per, 1), per <= 40)
    return targets


def count_errors(log_path: Path) -> int:
    """ERROR lines in an engine log (each one a connection the engine mishandled)."""
    try:
        with open(log_path, errors="replace") as f:
            return sum(" ERROR " in line for line in f)
    except OSError:
        return 0


def machine_info(setup: Setup) -> dict[str, str]:
    from OpenSSL import SSL

    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                  if line.startswith("model name")), "?")
    binary = nginx_binary()
    nginx = subprocess.run([binary or "nginx", "-v"], capture_output=True, text=True,
                           timeout=START_TIMEOUT).stderr.strip()
    openssl = subprocess.run(["openssl", "version"], capture_output=True, text=True,
                             timeout=START_TIMEOUT).stdout.strip()
    return {
        "cpus": f"{os.cpu_count()} x {model}",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "system OpenSSL (nginx, s_server, hs_client)": openssl,
        "engine's OpenSSL (cryptography wheel)": SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode(),
        "nginx": nginx.removeprefix("nginx version: "),
        "ssa source": source_version(),
        "open files limit": str(resource.getrlimit(resource.RLIMIT_NOFILE)[0]),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def print_report(figures: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\nhandshakes benchmark: full TLS 1.3 handshakes, loopback, hs_client with "
          f"{args.inflight} in flight, {args.seconds:g} s per measurement, median of "
          f"{args.runs} runs")
    for key, value in figures["machine"].items():
        print(f"  {key}: {value}")
    print("\n(per core = handshakes / server CPU seconds, user + system; ssa's server CPU = "
          "engine + application;\n 'other' = cores busy outside the benchmark)")
    print(f"{'certificate':12s} {'server':20s} {'hs/s':>6s} {'server':>7s} {'per':>6s} "
          f"{'x':>6s} {'server':>6s} {'client':>7s} {'other':>6s}")
    print(f"{'':12s} {'':20s} {'':>6s} {'ms CPU':>7s} {'core':>6s} {'nginx':>6s} "
          f"{'cores':>6s} {'ms CPU':>7s} {'cores':>6s}")
    for row in figures["rates"].values():
        print(f"{row['certificate']:12s} {row['server']:20s} {row['handshakes_per_s']:6.0f} "
              f"{row['server_cpu_ms']:7.3f} {row['per_core']:6.0f} {row['x_nginx']:6.2f} "
              f"{row['server_cores']:6.2f} {row['client_cpu_ms']:7.3f} "
              f"{row['other_cores']:6.2f}")
    for row in figures["rates"].values():
        if "engine_cpu_ms" in row:
            print(f"  {row['certificate']}: ssa server CPU per handshake = engine "
                  f"{row['engine_cpu_ms']:.3f} ms + application {row['app_cpu_ms']:.3f} ms; "
                  f"ssa / pyOpenSSL floor per core {row['x_floor'] or 0:.2f}")
    print("  (pyOpenSSL floor: the engine's TLS stack alone, accept + handshake + close in "
          "one process;\n   no server on that stack can do better)")
    print("negotiated (version, suite, group, server key, signature hash, key bits):")
    for row in figures["rates"].values():
        print(f"  {row['certificate']:12s} {row['server']:20s} {row['negotiated']}")
    failures = sum(row["failures"] for row in figures["rates"].values())
    if failures:
        print(f"note: {failures} handshakes failed during the rate measurements")

    print("\ndriver check (nginx, ECDSA P-256): which client costs less per handshake")
    print(f"  {'client':30s} {'hs/s':>6s} {'client':>7s} {'nginx':>6s} {'nginx':>6s}")
    print(f"  {'':30s} {'':>6s} {'ms CPU':>7s} {'/core':>6s} {'cores':>6s}")
    for row in figures["drivers"].values():
        print(f"  {row['label']:30s} {row['handshakes_per_s']:6.0f} "
              f"{row['client_cpu_ms']:7.3f} {row['nginx_per_core'] or 0:6.0f} "
              f"{row['nginx_cores']:6.2f}")

    if figures["sweep"]:
        print("\nload sweep (ECDSA P-256, one run each): per-core figures against handshakes "
              "in flight")
        print(f"  {'in flight':>9s} {'nginx':>6s} {'nginx':>6s} {'ssa':>6s} {'ssa':>6s} "
              f"{'x':>6s} {'engine':>7s} {'app':>7s} {'engine':>6s} {'other':>6s}")
        print(f"  {'':>9s} {'hs/s':>6s} {'/core':>6s} {'hs/s':>6s} {'/core':>6s} "
              f"{'nginx':>6s} {'ms CPU':>7s} {'ms CPU':>7s} {'cores':>6s} {'cores':>6s}")
        for level, row in figures["sweep"].items():
            print(f"  {level:9d} {row['nginx_per_s']:6.0f} {row['nginx_per_core'] or 0:6.0f} "
                  f"{row['ssa_per_s']:6.0f} {row['ssa_per_core'] or 0:6.0f} "
                  f"{row.get('x_nginx') or 0:6.2f} {row['engine_cpu_ms']:7.3f} "
                  f"{row['app_cpu_ms']:7.3f} {row['engine_cores']:6.2f} "
                  f"{row['other_cores']:6.2f}")

    print("\nmemory per idle TLS connection: (RSS with N held - RSS before) / N, "
          "kB = 1000 bytes; ECDSA P-256")
    sizes = figures["memory_sizes"]
    head = "".join(f"{'N=' + format(n, ','):>10s}" for n in sizes)
    fds = "".join(f"{'fds@' + format(n, ','):>10s}" for n in sizes[-1:])
    print(f"  {'process':34s}{head}{fds}")
    labels = {("ssa", "engine"): "ssa engine (fresh)", ("ssa", "app"): "ssa application (info)",
              ("nginx", "worker"): "nginx worker (info)"}
    for (server, role), label in labels.items():
        mem = figures["memory"].get(server)
        if mem is None:
            continue
        cells = "".join(f"{mem['sizes'][n][role]['bytes_per_connection'] / kB:10.1f}"
                        for n in sizes)
        fd = mem["sizes"][sizes[-1]][role]["fds_per_connection"]
        print(f"  {label:34s}{cells}{fd:10.2f}")
    for n, why in figures["memory_not_measured"].items():
        print(f"  not measured at {int(n):,} connections: {why}")
    for server, mem in figures["memory"].items():
        opened = ", ".join(f"{n:,} in {mem['sizes'][n]['seconds_to_open']:.1f} s" for n in sizes)
        print(f"  ({server}: opened {opened})")

    print("\ntargets")
    for name, (value, met) in figures["targets"].items():
        if value is None:
            print(f"  {name:56s} {'-':>7s}  not measured (see above)")
            continue
        verdict = "" if met is None else ("met" if met else "MISSED")
        print(f"  {name:56s} {value:7.2f}  {verdict}")
    errors = sum(figures["engine_log_errors"].values())
    if errors:
        print(f"\nnote: the engines logged {errors} ERROR lines "
              f"({figures['engine_log_errors']}); rerun with --keep to read them")
    others = [row["other_cores"] for row in figures["rates"].values()]
    if max(others) > NOISY:
        print(f"\nnote: other processes kept up to {max(others):.2f} cores busy during the "
              "run; these figures are noisy, rerun on a quiet machine")


# ---------------------------------------------------------------------------
# main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=8.0,
                   help="seconds per rate measurement (default 8)")
    p.add_argument("--runs", type=int, default=3, help="runs; medians are reported (default 3)")
    p.add_argument("--inflight", type=int, default=16,
                   help="handshakes the client keeps in flight (default 16)")
    p.add_argument("--sweep", default="1,4,16,64",
                   help="in-flight counts for the load sweep of nginx and ssa, ECDSA "
                        "(default 1,4,16,64; '' for none)")
    p.add_argument("--connections", default="1000,10000",
                   help="idle connection counts for the memory figures (default 1000,10000)")
    p.add_argument("--quick", action="store_true",
                   help="2 s measurements, 1 run, memory at 500 and 2,000 connections")
    p.add_argument("--timeout", type=float, default=900.0,
                   help="seconds the whole benchmark may take (default 900)")
    p.add_argument("--quiet-wait", type=float, default=10.0,
                   help="seconds to wait before each measurement for other load on the "
                        "machine to pass (default 10)")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.runs, args.connections = 2.0, 1, "500,2000"
        args.sweep = "4,64" if args.sweep == p.get_default("sweep") else args.sweep
    try:
        args.sizes = sorted({int(n) for n in args.connections.split(",")})
        args.levels = [int(n) for n in args.sweep.split(",") if n.strip()]
    except ValueError:
        p.error("--connections and --sweep take numbers separated by commas")
    if (args.seconds <= 0 or args.runs < 1 or args.inflight < 1 or min(args.sizes) < 1
            or any(n < 1 or n > 256 for n in args.levels) or args.inflight > 256):
        p.error("--seconds, --runs, --inflight, --sweep and --connections must be positive; "
                "at most 256 in flight (the engine's cap on handshakes per listener)")
    if max(args.sizes) > 50_000:
        p.error("--connections: at most 50000")
    return args


def fit_sizes(args: argparse.Namespace) -> dict[int, str]:
    """Keep the memory sizes that the open-files limit allows the engine.

    Sizes beyond it are replaced by the largest that fits (rounded down to a
    hundred); returns the ones left out, with the reason.
    """
    needed = ENGINE_FDS * (WARM + max(args.sizes)) + FD_RESERVE
    nofile = raise_nofile(needed)
    fits = (nofile - FD_RESERVE) // ENGINE_FDS - WARM
    skipped = {n: (f"needs {ENGINE_FDS * (WARM + n) + FD_RESERVE:,} descriptors in the engine "
                   f"({ENGINE_FDS} per connection); the open-files limit is {nofile:,} and "
                   "raising the hard limit needs CAP_SYS_RESOURCE")
               for n in args.sizes if n > fits}
    if skipped:
        largest = fits // 100 * 100 if fits >= 100 else fits
        args.sizes = sorted({n for n in args.sizes if n <= fits} | {largest})
        for n, why in skipped.items():
            log(f"note: no memory figure at {n:,} connections: {why}; measuring at "
                f"{largest:,} instead")
    return skipped


def start_servers(stack: contextlib.ExitStack, workdir: Path, args: argparse.Namespace) -> Setup:
    """Certificates, client, engine + applications, nginx, s_servers; stopped by ``stack``."""
    certs = {}
    for kind in KINDS:
        (workdir / kind).mkdir()
        certs[kind] = make_certs(workdir / kind, key_type=kind)
    client = build_client(workdir)
    readers: dict[str, CpuReader] = {"client": children_cpu_seconds,
                                     MACHINE: machine_busy_seconds}
    endpoints = []
    services: list[Service] = []

    nginx, worker, nginx_ports = start_nginx(certs, workdir, WARM + max(args.sizes))
    stack.callback(nginx.stop)
    services.append(nginx)
    readers["nginx"] = lambda: proc_cpu_seconds(worker)

    engine, engine_socket = start_engine(workdir)
    stack.callback(engine.stop)
    services.append(engine)
    readers["engine"] = engine.cpu
    ssa_ports = {}
    for kind in KINDS:
        app, _reader, port = start_app(f"ssa app {kind}", "close", certs[kind], engine_socket,
                                       workdir, args.timeout + 60)
        stack.callback(app.stop)
        services.append(app)
        readers[f"app_{kind}"] = app.cpu
        ssa_ports[kind] = port

    s_ports = {}
    for kind in KINDS:
        server, port = start_s_server(kind, certs[kind], workdir)
        stack.callback(server.stop)
        services.append(server)
        readers[f"s_server_{kind}"] = server.cpu
        s_ports[kind] = port

    floor_ports = {}
    for kind in KINDS:
        server, port = start_floor(kind, certs[kind], workdir, args.timeout + 60)
        stack.callback(server.stop)
        services.append(server)
        readers[f"floor_{kind}"] = server.cpu
        floor_ports[kind] = port

    for kind in KINDS:
        endpoints += [
            Endpoint("nginx", kind, nginx_ports[kind], ("nginx",)),
            Endpoint("ssa", kind, ssa_ports[kind], ("engine", f"app_{kind}")),
            Endpoint("s_server", kind, s_ports[kind], (f"s_server_{kind}",)),
            Endpoint("floor", kind, floor_ports[kind], (f"floor_{kind}",)),
        ]
    for service in services:
        stack.callback(service.check_alive)  # runs before the stops: did one crash?
    setup = Setup(client, endpoints, readers, certs, worker)
    for ep in endpoints:
        setup.negotiated[f"{ep.server}/{ep.kind}"] = probe(setup, ep.port)
    return setup


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_packages()
    skipped = fit_sizes(args)
    results = Results()
    with contextlib.ExitStack() as stack, time_limit(args.timeout):
        workdir = Path(tempfile.mkdtemp(prefix="ssa-bench-handshakes-"))
        if args.keep:
            log(f"keeping {workdir}")
        else:
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        setup = start_servers(stack, workdir, args)
        info = machine_info(setup)
        log(f"handshake rates: {args.seconds:g} s each, {args.runs} runs")
        run_rates(setup, results, args.seconds, args.runs, args.inflight, args.quiet_wait)
        if args.levels:
            log(f"load sweep: {args.sweep} in flight")
            run_sweep(setup, results, args.seconds, args.levels, args.quiet_wait)
        log("driver check")
        run_drivers(setup, results, args.seconds, args.inflight, args.quiet_wait)
        log(f"memory: {', '.join(f'{n:,}' for n in args.sizes)} idle connections")
        wait_for_quiet(args.quiet_wait)
        run_memory_ssa(setup, results, workdir, args.sizes, args.timeout + 60)
        nginx_ep = next(e for e in setup.endpoints if e.server == "nginx" and e.kind == "ec")
        results.memory["nginx"] = measure_memory(
            setup.client, nginx_ep.port, args.sizes,
            {"worker": setup.nginx_worker}, workdir, "nginx")
        engine_errors = {path.relative_to(workdir).as_posix(): count_errors(path)
                         for path in (workdir / "engine.log", workdir / "mem" / "engine.log")}
    rates = rate_figures(setup, results)
    figures = {
        "machine": info,
        "engine_log_errors": engine_errors,
        "rates": rates,
        "sweep": sweep_figures(results),
        "drivers": driver_figures(results),
        "memory_sizes": args.sizes,
        "memory_not_measured": {str(n): why for n, why in skipped.items()},
        "memory": results.memory,
        "targets": target_figures(rates, results.memory, args.sizes, skipped),
    }
    print_report(figures, args)
    if args.json:
        figures["command"] = " ".join(["python", "bench/handshakes.py", *sys.argv[1:]])
        figures["date"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["_app"]:
        sys.exit(app_main(sys.argv[2:]))
    if sys.argv[1:2] == ["_floor"]:
        sys.exit(floor_main(sys.argv[2:]))
    try:
        sys.exit(main())
    except (TimeoutError, RuntimeError, subprocess.SubprocessError) as exc:
        sys.exit(f"handshakes bench: {exc}")
