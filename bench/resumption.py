"""Connect time through the engine with and without TLS session resumption.

Runs an engine and ``openssl s_server`` on loopback, then times N connects
(connect, which returns once the handshake is verified, one byte, close) in
three modes side by side: a full handshake every time
(``TLS_SESSION_REUSE`` = 0), resumption (the default), and resumption with
the first byte sent as 0-RTT early data through
``sendto(..., MSG_FASTOPEN, ...)``. Prints medians, the engine's CPU per
connect, and the ratio resumed / full. On loopback the round trip saved by
resumption is tiny; what it saves here is the certificate exchange and
verification (CPU on both sides).

    python bench/resumption.py [--connects 300]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import OpenSSLServer, wait_for  # noqa: E402
from tests.pki import make_pki  # noqa: E402


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _one(mode: str, port: int, ca: bytes) -> float:
    import ssa_engine
    from ssa_engine import IPPROTO_TLS

    start = time.perf_counter()
    with ssa_engine.socket() as s:
        s.settimeout(20)
        s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_TRUSTED_PEER_CERTIFICATES, ca)
        if mode == "full":
            s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_SESSION_REUSE, 0)
        if mode == "0-rtt":
            s.sendto(b"x", ssa_engine.MSG_FASTOPEN, ("localhost", port))
        else:
            s.connect(("localhost", port))  # returns once the handshake is verified
            s.sendall(b"x")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connects", type=int, default=300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        pki = make_pki(d)
        sock = d / "engine.sock"
        log = (d / "engine.log").open("wb")
        engine = subprocess.Popen([sys.executable, "-m", "ssa_engine", "serve", "--socket",
                                   str(sock), "--config-dir", str(d / "config"),
                                   "--log-level", "warning"], stdout=log, stderr=log, cwd=REPO)
        os.environ["SSA_ENGINE_SOCKET"] = str(sock)
        # -early_data lets the 0-RTT row go out as early data
        srv = OpenSSLServer(d, pki.server, "-early_data")
        try:
            wait_for(sock.exists, 15, "the engine")
            ca = pki.ca.pem.read_bytes()
            rows = {}
            for mode in ("full", "resumed", "0-rtt", "full", "resumed", "0-rtt"):
                _one("resumed", srv.port, ca)  # a session to resume
                cpu0 = _cpu(engine.pid)
                times = [_one(mode, srv.port, ca) for _ in range(args.connects)]
                cpu = (_cpu(engine.pid) - cpu0) / args.connects
                rows.setdefault(mode, []).append((statistics.median(times), cpu))
        finally:
            srv.close()
            engine.terminate()
            engine.wait()
            log.close()
    print(f"connects through the engine to openssl s_server (TLS 1.3, ECDSA P-256), "
          f"{args.connects} per row, median of 2 rows")
    print(f"{'mode':<28}{'ms each':>10}{'engine ms CPU':>16}")
    out = {}
    for mode, values in rows.items():
        wall = statistics.median(v[0] for v in values) * 1000
        cpu = statistics.median(v[1] for v in values) * 1000
        out[mode] = (wall, cpu)
        print(f"{mode:<28}{wall:>10.3f}{cpu:>16.3f}")
    print(f"resumed / full wall time: {out['resumed'][0] / out['full'][0]:.2f}; "
          f"engine CPU: {out['resumed'][1] / out['full'][1]:.2f}")


if __name__ == "__main__":
    main()
