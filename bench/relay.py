#!/usr/bin/env python3
"""Relay benchmark: the ssa engine's data path and connect path against its peers.

What is measured, in one run, on loopback, all against the same C TLS sink
(``bench/tls_sink.c``, TLS 1.3 with TLS_AES_256_GCM_SHA384 forced by the
server, ECDSA P-256 certificate made for the run):

Throughput: one stream of ``--size-mib`` MiB (default 512) written 16 KiB at a
time, timed from the end of the handshake until the sink confirms it has read
every byte, by

* a C OpenSSL client (``tls_sink client``), to show what the sink takes from a
  client with no Python in it (with the sink's own CPU use, the evidence that
  the sink is not what limits the others);
* an in-process stdlib ``ssl`` client on uvloop: **the reference** (1.0);
* an in-process pyOpenSSL client (blocking socket);
* the application's TLS socket through a private ssa engine
  (``ssa_engine.create_connection``; the engine does TLS, the application
  writes plaintext into its socketpair);
* stunnel (client mode) relaying the same plaintext from a Unix socket.

For each, MB/s (MB = 10**6 bytes) and the CPU time per MB of the client, of
the relay (engine or stunnel, read from /proc/PID/stat before and after) and
of the sink. The targets: through the engine >= 0.8x the reference, and the
engine's CPU per MB <= stunnel's.

Connect rate: sequential connects (connect, TLS 1.3 handshake, an 8-byte
request and its 8-byte answer, close) through the engine against the same
with the blocking stdlib ``ssl`` module in process; target >= 0.8x.

Why: the engine is a user-space relay, so it pays an extra copy and an extra
process hop per byte; these numbers say whether that cost stays near an
in-process TLS stack and below the classic relay (stunnel). Every figure is
the median of ``--runs`` (default 3) runs; the clients are interleaved in
each run so that drift of the machine hits them alike.

Run: ``python bench/relay.py`` (``--quick`` for 64 MiB streams). It installs
Debian's stunnel4 (and gcc/libssl-dev for the sink) when missing, builds the
sink, makes certificates and starts a private engine on a temporary socket,
and stops everything at the end. No address but 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import ipaddress
import json
import os
import platform
import resource
import select
import shutil
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
CHUNK = 16 * 1024
MiB = 1024 * 1024
MB = 1_000_000
HOST = "127.0.0.1"
SERVER_NAME = "localhost"
CIPHER = "TLS_AES_256_GCM_SHA384"
#: seconds any single socket operation may block
IO_TIMEOUT = 30.0
#: seconds a helper process may take to start or stop
START_TIMEOUT = 15.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: the CPU-reader role that counts the whole machine
MACHINE = "machine"
#: other load (cores) above which the report warns that figures are noisy
NOISY = 0.15

# ---------------------------------------------------------------------------
# measurement primitives


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a whole process (all its threads, live or gone)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_busy_seconds() -> float:
    """CPU time all processors gave to processes, or lost to the hypervisor.

    Interrupt and softirq time is left out: loopback TCP's receive work runs
    there and belongs to no process, so it would look like someone else's load.
    """
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = ticks
    return (user + nice + system + steal) / CLK_TCK


CpuReader = Callable[[], float]


@dataclass
class Sample:
    """One timed interval: wall seconds and CPU seconds spent by each role."""

    seconds: float
    cpu: dict[str, float]

    def other_cores(self) -> float:
        """Cores that processes outside the benchmark kept busy meanwhile."""
        ours = sum(v for role, v in self.cpu.items() if role != MACHINE)
        return max(0.0, self.cpu[MACHINE] - ours) / self.seconds


class Meter:
    """Brackets a timed interval; reads every role's CPU clock at both ends."""

    def __init__(self, readers: dict[str, CpuReader]) -> None:
        self._readers = readers
        self._t0 = 0.0
        self._cpu0: dict[str, float] = {}
        self.sample: Sample | None = None

    def start(self) -> None:
        self._cpu0 = {role: read() for role, read in self._readers.items()}
        self._t0 = time.perf_counter()

    def stop(self) -> None:
        seconds = time.perf_counter() - self._t0
        cpu = {role: read() - self._cpu0[role] for role, read in self._readers.items()}
        self.sample = Sample(seconds, cpu)


# ---------------------------------------------------------------------------
# set-up: packages, certificates, sink binary


def ensure_packages() -> None:
    """Install stunnel4, gcc and libssl-dev from Debian when missing."""
    wanted = {
        "stunnel4": shutil.which("stunnel4") or shutil.which("stunnel"),
        "gcc": shutil.which("gcc"),
        "libssl-dev": Path("/usr/include/openssl/ssl.h").exists() or None,
    }
    missing = [pkg for pkg, present in wanted.items() if not present]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SystemExit(f"relay bench needs: {' '.join(missing)} (apt-get install -y ...)")
    log(f"installing {' '.join(missing)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, timeout=600, env=env,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", *missing], check=True, timeout=600, env=env,
                   stdout=subprocess.DEVNULL)


def stunnel_binary() -> str:
    found = shutil.which("stunnel4") or shutil.which("stunnel")
    assert found is not None
    return found


@dataclass(frozen=True)
class Certs:
    ca: Path
    cert: Path
    key: Path


def make_certs(directory: Path, key_type: str = "ec") -> Certs:
    """A throwaway CA and a leaf for localhost / 127.0.0.1.

    ``key_type`` "ec": ECDSA P-256 keys (CA and leaf); "rsa": RSA-2048.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    def new_key() -> Any:
        if key_type == "rsa":
            return rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return ec.generate_private_key(ec.SECP256R1())

    now = datetime.datetime.now(datetime.UTC)
    ca_key = new_key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ssa relay bench CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                       critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = new_key()
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName(SERVER_NAME), x509.IPAddress(ipaddress.ip_address(HOST))]),
            critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    certs = Certs(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    certs.ca.write_bytes(ca_cert.public_bytes(pem))
    certs.cert.write_bytes(leaf.public_bytes(pem) + ca_cert.public_bytes(pem))
    certs.key.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    certs.key.chmod(0o600)
    return certs


def build_sink(directory: Path) -> Path:
    binary = directory / "tls_sink"
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-o", str(binary), str(BENCH_DIR / "tls_sink.c"),
         "-lssl", "-lcrypto", "-lpthread"],
        check=True, timeout=120,
    )
    return binary


# ---------------------------------------------------------------------------
# helper processes: sink, engine, stunnel


class Service:
    """A helper process that this run started and must stop."""

    def __init__(self, name: str, argv: list[str], log_path: Path,
                 env: dict[str, str] | None = None, stdout: int | None = None) -> None:
        self.name = name
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=stdout if stdout is not None else self._log,
                                     stderr=self._log, stdin=subprocess.DEVNULL, env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return proc_cpu_seconds(self.proc.pid)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited early with status {self.proc.returncode}; "
                               f"see its log {self._log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=START_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=START_TIMEOUT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


def wait_until(ready: Callable[[], bool], service: Service, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        service.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{service.name}: {what} not ready after {START_TIMEOUT:g} s")
        time.sleep(0.05)


def start_sink(binary: Path, certs: Certs, workdir: Path) -> tuple[Service, int]:
    sink = Service("tls_sink", [str(binary), "server", str(certs.cert), str(certs.key)],
                   workdir / "sink.log", stdout=subprocess.PIPE)
    assert sink.proc.stdout is not None
    readable, _, _ = select.select([sink.proc.stdout], [], [], START_TIMEOUT)
    line = sink.proc.stdout.readline() if readable else b""
    if not line.strip().isdigit():
        sink.stop()
        raise RuntimeError(f"tls_sink did not report its port (see {workdir / 'sink.log'})")
    return sink, int(line)


def unix_socket_accepts(path: Path) -> bool:
    if not path.exists():
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def start_engine(workdir: Path) -> tuple[Service, Path]:
    """A private engine with no configuration, on a socket in the run's folder."""
    path = workdir / "engine" / "engine.sock"
    env = {
        **os.environ,
        "SSA_ENGINE_SOCKET": str(path),
        "SSA_CONFIG_DIR": str(workdir / "config"),
        "SSA_STATE_DIR": str(workdir / "state"),
    }
    argv = [sys.executable, "-m", "ssa_engine", "serve", "--socket", str(path),
            "--log-level", "warning"]
    engine = Service("ssa-engine", argv, workdir / "engine.log", env=env)
    wait_until(lambda: unix_socket_accepts(path), engine, "control socket")
    return engine, path


def start_stunnel(certs: Certs, sink_port: int, workdir: Path) -> tuple[Service, Path]:
    """stunnel in client mode: plaintext in on a Unix socket, TLS out to the sink."""
    path = workdir / "stunnel.sock"
    conf = workdir / "stunnel.conf"
    conf.write_text(
        "foreground = yes\n"
        "pid =\n"
        "debug = 4\n"
        f"output = {workdir / 'stunnel.out'}\n"
        "[relay]\n"
        "client = yes\n"
        f"accept = {path}\n"
        f"connect = {HOST}:{sink_port}\n"
        f"sni = {SERVER_NAME}\n"
        f"checkHost = {SERVER_NAME}\n"
        f"CAfile = {certs.ca}\n"
        "verifyChain = yes\n"
        "sslVersionMin = TLSv1.3\n"
    )
    stunnel = Service("stunnel", [stunnel_binary(), str(conf)], workdir / "stunnel.log")
    wait_until(lambda: path.exists(), stunnel, "Unix socket")
    return stunnel, path


# ---------------------------------------------------------------------------
# the stream protocol of tls_sink: 8-byte length, the bytes, 8-byte answer

PAYLOAD = os.urandom(CHUNK)


def header(size: int) -> bytes:
    return struct.pack(">Q", size)


def check_answer(answer: bytes, size: int) -> None:
    if len(answer) != 8 or struct.unpack(">Q", answer)[0] != size:
        raise RuntimeError(f"the sink did not confirm {size} bytes (answer {answer!r})")


def recv_exact(recv: Callable[[int], bytes], n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def send_stream(sendall: Callable[[bytes], Any], size: int) -> None:
    sendall(header(size))
    for _ in range(size // CHUNK):
        sendall(PAYLOAD)


def set_kernel_timeouts(sock: socket.socket, seconds: float) -> None:
    """Bound blocking calls without making the socket non-blocking (pyOpenSSL)."""
    tv = struct.pack("ll", int(seconds), 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)


# ---------------------------------------------------------------------------
# the clients


@dataclass(frozen=True)
class Target:
    """Where the clients go and what they trust."""

    sink_port: int
    certs: Certs
    stunnel_socket: Path
    sink_binary: Path


def stdlib_context(ca: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cafile=str(ca))
    return ctx


def stream_ssa(t: Target, size: int, meter: Meter) -> str:
    import ssa_engine

    sock = ssa_engine.create_connection((HOST, t.sink_port), timeout=IO_TIMEOUT,
                                        hostname=SERVER_NAME, cafile=str(t.certs.ca))
    with sock:
        cipher = sock.getsockopt(ssa_engine.IPPROTO_TLS, ssa_engine.TLS_CHOSEN_CIPHER)
        meter.start()
        send_stream(sock.sendall, size)
        answer = recv_exact(sock.recv, 8)
        meter.stop()
    check_answer(answer, size)
    return bytes(cipher).decode()


def stream_stunnel(t: Target, size: int, meter: Meter) -> str:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(IO_TIMEOUT)
    with sock:
        sock.connect(str(t.stunnel_socket))
        # stunnel connects and handshakes when the client connects; the first
        # bytes wait for it, so the interval includes one handshake (~1 ms).
        meter.start()
        send_stream(sock.sendall, size)
        answer = recv_exact(sock.recv, 8)
        meter.stop()
    check_answer(answer, size)
    return CIPHER + " (server-forced)"


def stream_pyopenssl(t: Target, size: int, meter: Meter) -> str:
    from OpenSSL import SSL

    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.load_verify_locations(str(t.certs.ca))
    ctx.set_verify(SSL.VERIFY_PEER)
    raw = socket.create_connection((HOST, t.sink_port), timeout=IO_TIMEOUT)
    raw.settimeout(None)
    set_kernel_timeouts(raw, IO_TIMEOUT)
    with raw:
        conn = SSL.Connection(ctx, raw)
        conn.set_tlsext_host_name(SERVER_NAME.encode())
        conn.set_connect_state()
        conn.do_handshake()
        check_peer_name(conn.get_peer_certificate(as_cryptography=True))
        meter.start()
        send_stream(conn.sendall, size)
        answer = recv_exact(conn.recv, 8)
        meter.stop()
        conn.shutdown()
    check_answer(answer, size)
    return conn.get_cipher_name() or "?"


def check_peer_name(cert: Any) -> None:
    """pyOpenSSL has no host-name check: look at the SAN ourselves."""
    from cryptography import x509

    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    if SERVER_NAME not in names.get_values_for_type(x509.DNSName):
        raise RuntimeError(f"the sink's certificate is not for {SERVER_NAME}")


def stream_uvloop(t: Target, size: int, meter: Meter) -> str:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_stream_asyncio(t, size, meter))


async def _stream_asyncio(t: Target, size: int, meter: Meter) -> str:
    deadline = IO_TIMEOUT + size / (5 * MB)  # >= 5 MB/s or give up
    async with asyncio.timeout(deadline):
        reader, writer = await asyncio.open_connection(
            HOST, t.sink_port, ssl=stdlib_context(t.certs.ca), server_hostname=SERVER_NAME)
        cipher = writer.get_extra_info("cipher")[0]
        meter.start()
        writer.write(header(size))
        for _ in range(size // CHUNK):
            writer.write(PAYLOAD)
            await writer.drain()
        answer = await reader.readexactly(8)
        meter.stop()
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    check_answer(answer, size)
    return str(cipher)


def stream_c(t: Target, size: int, meter: Meter) -> str:
    """The C client times itself; the meter brackets the whole process."""
    meter.start()
    out = subprocess.run(
        [str(t.sink_binary), "client", str(t.sink_port), str(t.certs.ca), str(size)],
        check=True, capture_output=True, timeout=IO_TIMEOUT + size / (5 * MB),
    )
    meter.stop()
    assert meter.sample is not None
    meter.sample.seconds = float(out.stdout)
    return CIPHER + " (server-forced)"


StreamClient = Callable[[Target, int, Meter], str]


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    client: StreamClient
    relay: str | None  # the role whose CPU is the relay's, if any


CONTENDERS = (
    Contender("c", "C client (system OpenSSL)", stream_c, None),
    Contender("uvloop", "stdlib ssl on uvloop (reference)", stream_uvloop, None),
    Contender("pyopenssl", "pyOpenSSL in process", stream_pyopenssl, None),
    Contender("ssa", "app -> ssa engine", stream_ssa, "engine"),
    Contender("stunnel", "app -> stunnel", stream_stunnel, "stunnel"),
)


# connects: connect, handshake, 8-byte request, 8-byte answer, close

def connect_ssa(t: Target) -> None:
    import ssa_engine

    with ssa_engine.create_connection((HOST, t.sink_port), timeout=IO_TIMEOUT,
                                      hostname=SERVER_NAME, cafile=str(t.certs.ca)) as sock:
        sock.sendall(header(0))
        check_answer(recv_exact(sock.recv, 8), 0)


def connect_stdlib(t: Target, ctx: ssl.SSLContext) -> None:
    raw = socket.create_connection((HOST, t.sink_port), timeout=IO_TIMEOUT)
    with ctx.wrap_socket(raw, server_hostname=SERVER_NAME) as sock:
        sock.sendall(header(0))
        check_answer(recv_exact(sock.recv, 8), 0)


# ---------------------------------------------------------------------------
# running and reporting


@dataclass
class Results:
    streams: dict[str, list[Sample]] = field(default_factory=dict)
    ciphers: dict[str, str] = field(default_factory=dict)
    connects: dict[str, list[Sample]] = field(default_factory=dict)
    s_server_mbps: float | None = None


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def wait_for_quiet(max_wait: float, window: float = 0.5) -> None:
    """Before a measurement, wait (at most ``max_wait`` s) for other load to pass.

    Between measurements our own processes are idle, so whatever keeps the
    processors busy is someone else's (a shared machine, a test run).
    """
    deadline = time.monotonic() + max_wait
    while True:
        before = machine_busy_seconds()
        time.sleep(window)
        busy = (machine_busy_seconds() - before) / window
        if busy <= NOISY:
            return
        if time.monotonic() >= deadline:
            log(f"  (other processes keep {busy:.2f} cores busy; measuring anyway)")
            return


def mbps(sample: Sample, size: int) -> float:
    return size / sample.seconds / MB


def run_streams(t: Target, readers: dict[str, CpuReader], size: int, runs: int,
                results: Results, quiet_wait: float) -> None:
    for run in range(1, runs + 1):
        for c in CONTENDERS:
            wait_for_quiet(quiet_wait)
            meter = Meter(readers)
            results.ciphers[c.key] = c.client(t, size, meter)
            assert meter.sample is not None
            results.streams.setdefault(c.key, []).append(meter.sample)
            log(f"  run {run}/{runs} {c.label:34s} {mbps(meter.sample, size):8.0f} MB/s")


def run_connects(t: Target, readers: dict[str, CpuReader], count: int, runs: int,
                 results: Results, quiet_wait: float) -> None:
    ctx = stdlib_context(t.certs.ca)
    kinds: dict[str, Callable[[], None]] = {
        "stdlib": lambda: connect_stdlib(t, ctx),
        "ssa": lambda: connect_ssa(t),
    }
    for once in kinds.values():
        once()  # warm-up: contexts, caches, first-use imports
    for run in range(1, runs + 1):
        for key, once in kinds.items():
            wait_for_quiet(quiet_wait)
            meter = Meter(readers)
            meter.start()
            for _ in range(count):
                once()
            meter.stop()
            assert meter.sample is not None
            results.connects.setdefault(key, []).append(meter.sample)
            log(f"  run {run}/{runs} connects {key:8s} {count / meter.sample.seconds:8.0f} /s")


def check_s_server(t: Target, workdir: Path, size: int) -> float:
    """openssl s_server as a sink, for the record: how fast can it take a stream?"""
    port = free_port()
    # -naccept 2: the readiness probe's connection is the first
    argv = ["openssl", "s_server", "-quiet", "-naccept", "2", "-accept", f"{HOST}:{port}",
            "-cert", str(t.certs.cert), "-key", str(t.certs.key), "-tls1_3",
            "-ciphersuites", CIPHER]
    server = Service("openssl s_server", argv, workdir / "s_server.log",
                     stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: tcp_port_open(port), server, "port")
        out = subprocess.run(
            [str(t.sink_binary), "client", str(port), str(t.certs.ca), str(size), "--no-ack"],
            check=True, capture_output=True, timeout=IO_TIMEOUT + size / MB,
        )
        return size / float(out.stdout) / MB
    finally:
        server.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def tcp_port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((HOST, port)) == 0


def median_sample(samples: list[Sample]) -> Sample:
    return Sample(
        statistics.median(s.seconds for s in samples),
        {role: statistics.median(s.cpu[role] for s in samples) for role in samples[0].cpu},
    )


def machine_info() -> dict[str, str]:
    from OpenSSL import SSL

    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                  if line.startswith("model name")), "?")
    stunnel = subprocess.run([stunnel_binary(), "-version"], capture_output=True, text=True,
                             timeout=START_TIMEOUT).stderr.splitlines()
    return {
        "cpus": f"{os.cpu_count()} x {model}",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "system OpenSSL (sink, stdlib ssl, stunnel)": ssl.OPENSSL_VERSION,
        "pyOpenSSL's OpenSSL (engine, pyOpenSSL client)":
            SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode(),
        "stunnel": next((line for line in stunnel if line.startswith("stunnel ")), "?"),
        "ssa source": source_version(),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def source_version() -> str:
    """The commit of the engine under test, marked dirty if the tree has edits."""
    import ssa_engine

    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=START_TIMEOUT,
                             cwd=Path(ssa_engine.__file__).resolve().parent)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return out.stdout.strip() or "?"


def per_mb(cpu_seconds: float, size: int) -> float:
    """CPU microseconds per MB (10**6 bytes)."""
    return cpu_seconds * 1e6 / (size / MB)


def stream_figures(results: Results, size: int) -> dict[str, dict[str, Any]]:
    """Median figures per contender; ratios against the uvloop reference."""
    med = {key: median_sample(samples) for key, samples in results.streams.items()}
    ref = mbps(med["uvloop"], size)
    rows: dict[str, dict[str, Any]] = {}
    for c in CONTENDERS:
        s = med[c.key]
        rate = mbps(s, size)
        rows[c.key] = {
            "label": c.label,
            "mb_per_s": round(rate, 1),
            "x_reference": round(rate / ref, 3),
            "relay_cpu_us_per_mb": round(per_mb(s.cpu[c.relay], size), 1) if c.relay else None,
            "client_cpu_us_per_mb": round(per_mb(s.cpu["c_client" if c.key == "c" else "client"],
                                                 size), 1),
            "sink_cpu_us_per_mb": round(per_mb(s.cpu["sink"], size), 1),
            "sink_cores": round(s.cpu["sink"] / s.seconds, 2),
            "other_cores": round(statistics.median(x.other_cores()
                                                   for x in results.streams[c.key]), 2),
            "cipher": results.ciphers[c.key],
            "runs_mb_per_s": [round(mbps(x, size), 1) for x in results.streams[c.key]],
        }
    return rows


CONNECT_LABELS = {"stdlib": "stdlib ssl in process (blocking)", "ssa": "app -> ssa engine"}


def connect_figures(results: Results, count: int) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for key, samples in results.connects.items():
        s = median_sample(samples)
        rows[key] = {
            "label": CONNECT_LABELS[key],
            "per_s": round(count / s.seconds, 1),
            "ms_each": round(s.seconds * 1e3 / count, 3),
            "engine_cpu_ms": round(s.cpu["engine"] * 1e3 / count, 3) if key == "ssa" else None,
            "client_cpu_ms": round(s.cpu["client"] * 1e3 / count, 3),
            "sink_cpu_ms": round(s.cpu["sink"] * 1e3 / count, 3),
            "other_cores": round(statistics.median(x.other_cores() for x in samples), 2),
            "runs_per_s": [round(count / x.seconds, 1) for x in samples],
        }
    return rows


def target_figures(st: dict[str, Any], cn: dict[str, Any]) -> dict[str, tuple[float, bool | None]]:
    """The issue's targets: (ratio, met?); None where there is no target."""
    engine, stunnel = st["ssa"], st["stunnel"]
    cpu = engine["relay_cpu_us_per_mb"] / stunnel["relay_cpu_us_per_mb"]
    connects = cn["ssa"]["per_s"] / cn["stdlib"]["per_s"]
    return {
        "engine MB/s / reference MB/s (>= 0.80)":
            (engine["x_reference"], engine["x_reference"] >= 0.8),
        "engine MB/s / stunnel MB/s": (round(engine["mb_per_s"] / stunnel["mb_per_s"], 3), None),
        "engine CPU per MB / stunnel CPU per MB (<= 1.00)": (round(cpu, 3), cpu <= 1.0),
        "engine connects/s / stdlib ssl connects/s (>= 0.80)": (round(connects, 3),
                                                                 connects >= 0.8),
    }


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def print_report(figures: dict[str, Any], size: int, count: int, runs: int) -> None:
    print(f"\nrelay benchmark: {size // MiB} MiB stream in {CHUNK // 1024} KiB writes, "
          f"TLS 1.3 {CIPHER}, loopback, median of {runs} runs")
    for key, value in figures["machine"].items():
        print(f"  {key}: {value}")
    print("\n(MB = 10^6 bytes; CPU per MB is user + system time of that process; "
          "'other' = cores busy outside the benchmark)")
    print(f"{'stream':34s} {'MB/s':>6s} {'x ref':>6s} {'relay':>7s} {'client':>7s} "
          f"{'sink':>7s} {'sink':>6s} {'other':>6s}")
    print(f"{'':34s} {'':>6s} {'':>6s} {'µs/MB':>7s} {'µs/MB':>7s} {'µs/MB':>7s} "
          f"{'cores':>6s} {'cores':>6s}")
    for row in figures["streams"].values():
        print(f"{row['label']:34s} {row['mb_per_s']:6.0f} {row['x_reference']:6.2f} "
              f"{_cell(row['relay_cpu_us_per_mb'], '7.0f'):>7s} "
              f"{row['client_cpu_us_per_mb']:7.0f} {row['sink_cpu_us_per_mb']:7.0f} "
              f"{row['sink_cores']:6.2f} {row['other_cores']:6.2f}")
    if figures["s_server_mb_per_s"] is not None:
        print(f"openssl s_server as the sink instead (C client): "
              f"{figures['s_server_mb_per_s']:.0f} MB/s, too slow to be the sink")
    print(f"\n{'connects (' + str(count) + ' in a row)':34s} {'/s':>6s} {'ms each':>8s} "
          f"{'engine':>7s} {'client':>7s} {'sink':>7s} {'other':>6s}")
    print(f"{'':34s} {'':>6s} {'':>8s} {'ms CPU':>7s} {'ms CPU':>7s} {'ms CPU':>7s} "
          f"{'cores':>6s}")
    for row in figures["connects"].values():
        print(f"{row['label']:34s} {row['per_s']:6.0f} {row['ms_each']:8.3f} "
              f"{_cell(row['engine_cpu_ms'], '7.3f'):>7s} {row['client_cpu_ms']:7.3f} "
              f"{row['sink_cpu_ms']:7.3f} {row['other_cores']:6.2f}")
    print("\ntargets")
    for name, (value, met) in figures["targets"].items():
        verdict = "" if met is None else ("met" if met else "MISSED")
        print(f"  {name:52s} {value:6.2f}  {verdict}")
    others = [row["other_cores"] for table in ("streams", "connects")
              for row in figures[table].values()]
    if max(others) > NOISY:
        print(f"\nnote: other processes kept up to {max(others):.2f} cores busy during the "
              "run; these figures are noisy, rerun on a quiet machine")


def build_figures(results: Results, size: int, count: int,
                  info: dict[str, str]) -> dict[str, Any]:
    streams = stream_figures(results, size)
    connects = connect_figures(results, count)
    return {
        "machine": info,
        "streams": streams,
        "s_server_mb_per_s": None if results.s_server_mbps is None
        else round(results.s_server_mbps, 1),
        "connects": connects,
        "targets": target_figures(streams, connects),
    }


# ---------------------------------------------------------------------------
# main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mib", type=int, default=512, help="stream size (default 512)")
    p.add_argument("--quick", action="store_true", help="64 MiB streams, 200 connects")
    p.add_argument("--runs", type=int, default=3, help="runs; medians are reported (default 3)")
    p.add_argument("--connects", type=int, default=500,
                   help="sequential connects per client per run (default 500)")
    p.add_argument("--timeout", type=float, default=1800.0,
                   help="seconds the whole benchmark may take (default 1800)")
    p.add_argument("--quiet-wait", type=float, default=10.0,
                   help="seconds to wait before each measurement for other load on the "
                        "machine to pass (default 10)")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    args = p.parse_args(argv)
    if args.quick:
        args.size_mib, args.connects = 64, 200
    if args.size_mib < 1 or args.runs < 1 or args.connects < 1:
        p.error("--size-mib, --runs and --connects must be positive")
    return args


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError(f"the benchmark did not finish within {seconds:g} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def start_services(stack: contextlib.ExitStack, workdir: Path) -> tuple[Target, dict[str, CpuReader]]:
    """Certificates, sink, private engine and stunnel; each stopped by ``stack``."""
    certs = make_certs(workdir)
    sink_binary = build_sink(workdir)
    sink, port = start_sink(sink_binary, certs, workdir)
    stack.callback(sink.stop)
    engine, engine_socket = start_engine(workdir)
    stack.callback(engine.stop)
    os.environ["SSA_ENGINE_SOCKET"] = str(engine_socket)  # this process's TLS sockets use it
    stunnel, stunnel_socket = start_stunnel(certs, port, workdir)
    stack.callback(stunnel.stop)
    readers: dict[str, CpuReader] = {
        "client": self_cpu_seconds,
        "c_client": children_cpu_seconds,
        "sink": sink.cpu,
        "engine": engine.cpu,
        "stunnel": stunnel.cpu,
        MACHINE: machine_busy_seconds,
    }
    for service in (sink, engine, stunnel):
        stack.callback(service.check_alive)  # runs before the stops: did one crash?
    return Target(port, certs, stunnel_socket, sink_binary), readers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    size = args.size_mib * MiB
    ensure_packages()
    results = Results()
    with contextlib.ExitStack() as stack, time_limit(args.timeout):
        workdir = Path(tempfile.mkdtemp(prefix="ssa-bench-relay-"))
        if args.keep:
            log(f"keeping {workdir}")
        else:
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        target, readers = start_services(stack, workdir)
        info = machine_info()
        log(f"streams of {args.size_mib} MiB, {args.runs} runs")
        run_streams(target, readers, size, args.runs, results, args.quiet_wait)
        log(f"{args.connects} connects per client, {args.runs} runs")
        run_connects(target, readers, args.connects, args.runs, results, args.quiet_wait)
        results.s_server_mbps = check_s_server(target, workdir, min(size, 64 * MiB))
    figures = build_figures(results, size, args.connects, info)
    print_report(figures, size, args.connects, args.runs)
    if args.json:
        figures["command"] = " ".join(["python", "bench/relay.py", *sys.argv[1:]])
        figures["date"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (TimeoutError, RuntimeError, subprocess.SubprocessError) as exc:
        sys.exit(f"relay bench: {exc}")
