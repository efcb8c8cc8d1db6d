"""The example programs work against real servers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import REPO


@pytest.mark.parametrize("tool", ["fetch.py", "fetch_stdlib_ssl.py"])
def test_fetch_against_openssl_www(engine, pki, openssl_server, tmp_path, tool) -> None:  # type: ignore[no-untyped-def]
    srv = openssl_server(pki.server, "-www")
    out = tmp_path / "page.html"
    res = subprocess.run(
        [sys.executable, str(REPO / "examples" / tool), f"https://localhost:{srv.port}/",
         "-o", str(out), "--cafile", str(pki.ca.pem)],
        capture_output=True, text=True, timeout=60, env=dict(os.environ),
    )
    assert res.returncode == 0, res.stderr
    assert "200 ok" in res.stderr
    assert b"<HTML>" in out.read_bytes()


def test_fetch_refuses_an_untrusted_server(engine, pki, openssl_server) -> None:  # type: ignore[no-untyped-def]
    srv = openssl_server(pki.untrusted, "-www")
    res = subprocess.run(
        [sys.executable, str(REPO / "examples" / "fetch.py"), f"https://localhost:{srv.port}/"],
        capture_output=True, text=True, timeout=60,
    )
    assert res.returncode == 1
    assert "untrusted root" in res.stderr
