"""Start an engine on embedded defaults and make a real TLS round trip through it.

What happens:
1. a throwaway CA and a certificate for ``localhost`` are generated;
2. ``ssa-engine serve`` starts with no configuration at all (built-in default
   policy, the system trust store) on a private control socket;
3. ``openssl s_server -www`` serves HTTPS on a loopback port;
4. an application opens ``socket(AF_INET, SOCK_STREAM, IPPROTO_TLS)``, trusts
   the throwaway CA for itself, connects by name and fetches a page; the
   engine did the handshake and verification;
5. the same connect without the app's trusted CA is refused (EPROTO): the
   engine never skips verification.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import ssa_engine
from ssa_engine import IPPROTO_TLS


def make_certs(directory: Path) -> tuple[Path, Path, Path]:
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ssa demo CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ssa demo"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    paths[2].chmod(0o600)
    return paths


def wait(predicate, what: str, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            sys.exit(f"demo: timed out waiting for {what}")
        time.sleep(0.05)


def listening(port: int) -> bool:
    with open("/proc/net/tcp") as f:
        return any(line.split()[3] == "0A" and int(line.split()[1].split(":")[1], 16) == port
                   for line in f.readlines()[1:])


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="ssa-demo-") as tmp:
        work = Path(tmp)
        ca, cert, key = make_certs(work)
        sock_path = work / "engine.sock"
        engine = subprocess.Popen([sys.executable, "-m", "ssa_engine", "serve",
                                   "--socket", str(sock_path)])
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = subprocess.Popen(["openssl", "s_server", "-accept", f"127.0.0.1:{port}",
                                   "-cert", str(cert), "-key", str(key), "-www", "-quiet"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait(sock_path.exists, "the engine")
            wait(lambda: listening(port), "openssl s_server")
            os.environ["SSA_ENGINE_SOCKET"] = str(sock_path)
            return round_trip(port, ca)
        finally:
            server.kill()
            server.wait()
            engine.terminate()
            engine.wait(10)


def round_trip(port: int, ca: Path) -> int:
    print(f"\n== TLS round trip through the engine to openssl s_server on port {port}")
    s = ssa_engine.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_TLS)
    with s:
        s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_TRUSTED_PEER_CERTIFICATES, str(ca))
        s.connect(("localhost", port))
        s.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
        version = s.getsockopt(IPPROTO_TLS, ssa_engine.TLS_VERSION_CONN)
        print("peer identity :", s.getsockopt(IPPROTO_TLS, ssa_engine.TLS_PEER_IDENTITY).decode())
        print("cipher        :", s.getsockopt(IPPROTO_TLS, ssa_engine.TLS_CHOSEN_CIPHER).decode())
        print("version       :", {ssa_engine.TLS_1_2: "TLS 1.2", ssa_engine.TLS_1_3: "TLS 1.3"}
              .get(version, hex(version)))
        print("reply         :", reply.split(b"\r\n", 1)[0].decode(), f"({len(reply)} bytes)")
    print("\n== the same connect without trusting the demo CA")
    s = ssa_engine.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_TLS)
    with s:
        try:
            s.connect(("localhost", port))
        except OSError as exc:
            print(f"refused       : errno {exc.errno} ({os.strerror(exc.errno or 0)})")
            print("TLS_ERROR     :", s.getsockopt(IPPROTO_TLS, ssa_engine.TLS_ERROR).decode())
        else:
            print("demo: an untrusted server was accepted; this is a bug", file=sys.stderr)
            return 1
    return 0 if reply.startswith(b"HTTP/1.0 200") else 1


if __name__ == "__main__":
    sys.exit(main())
