"""The engine's TLS servers graded by sslyze against Mozilla's configurations."""

from __future__ import annotations

import re
import subprocess
import threading

import pytest

import ssa_engine

from .conftest import REPO

SSLYZE = REPO / ".tools" / "sslyze" / "bin" / "sslyze"

# The test certificates come from a CA made at test time, which no public
# trust store knows: sslyze's certificate_path_validation check cannot pass
# and is the one finding allowed. Every other finding fails the test.
ALLOWED = {"certificate_path_validation"}


def _grade(engine_socket, pki, config: str) -> tuple[str, set[str]]:  # type: ignore[no-untyped-def]
    if not SSLYZE.exists():
        pytest.fail(f"sslyze is missing: run scripts/setup.sh (it installs {SSLYZE})")
    lst = ssa_engine.TLSSocket(engine_socket=engine_socket)
    lst.setsockopt(ssa_engine.IPPROTO_TLS, ssa_engine.TLS_CERTIFICATE_CHAIN, pki.server.chain)
    lst.setsockopt(ssa_engine.IPPROTO_TLS, ssa_engine.TLS_PRIVATE_KEY, pki.server.key)
    lst.bind(("127.0.0.1", 0))
    lst.listen()
    port = lst.getsockname()[1]

    def accept_and_close() -> None:
        while True:
            try:
                conn, _ = lst.accept()
            except OSError:
                return
            conn.close()

    t = threading.Thread(target=accept_and_close, daemon=True)
    t.start()
    try:
        res = subprocess.run([str(SSLYZE), f"--mozilla_config={config}", f"127.0.0.1:{port}"],
                             capture_output=True, text=True, timeout=180)
    finally:
        lst.close()
    out = res.stdout + res.stderr
    findings = set(re.findall(r"^\s+\* (\w+):", out.split("COMPLIANCE AGAINST")[-1], re.M))
    return out, findings


def test_default_level_is_mozilla_intermediate(engine, pki) -> None:  # type: ignore[no-untyped-def]
    out, findings = _grade(engine.socket, pki, "intermediate")
    assert "COMPLIANCE AGAINST" in out, out[-2000:]
    assert findings <= ALLOWED, out[-2000:]
    assert "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" in out  # it did scan the ciphers


def test_modern_level_is_mozilla_modern(engine_factory, pki) -> None:  # type: ignore[no-untyped-def]
    eng = engine_factory("--level", "modern")
    out, findings = _grade(eng.socket, pki, "modern")
    assert "COMPLIANCE AGAINST" in out, out[-2000:]
    assert findings <= ALLOWED, out[-2000:]
    assert "TLS_AES_256_GCM_SHA384" in out


def test_the_grading_has_teeth(engine_factory, pki) -> None:  # type: ignore[no-untyped-def]
    # the legacy level offers CBC ciphers: sslyze must object
    eng = engine_factory("--level", "legacy")
    out, findings = _grade(eng.socket, pki, "intermediate")
    assert "ciphers" in findings, out[-2000:]
