"""The audit log writer (rotation, permissions, full disk) and ``ssa-admin report``."""

from __future__ import annotations

import gzip
import json
import logging
import os
import pty
import re
import select
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ssa_engine.daemon.audit import FIELDS, AuditLog, timestamp

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(30)
T0 = 1_764_464_523.456  # 2025-11-30T01:02:03.456Z


class Clock:
    """A monotonic clock the test moves by hand (the writer stats at most once a second)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(n: int = 0, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "time": timestamp(T0 + n), "event": "connect", "program": "curl", "exe": "/usr/bin/curl",
        "pid": 4242, "uid": 1000, "user": "alice", "profile": "default",
        "local": "[::1]:50000", "remote": "[2001:db8::1]:443", "sni": "example.com",
        "version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384", "group": "X25519",
        "alpn": "h2", "resumed": False, "verify": "ok", "error": None, "seq": n,
    }
    base.update(fields)
    return base


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def audit_log(tmp_path: Path) -> Iterator[tuple[AuditLog, Clock]]:
    clock = Clock()
    log = AuditLog(tmp_path / "log" / "audit.log", max_bytes=2000, backups=2, clock=clock)
    yield log, clock
    log.close()


@pytest.fixture
def umask022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "ssa.audit" and r.levelno == logging.WARNING]


# -- the writer --------------------------------------------------------------------------
def test_timestamp_is_rfc3339_utc_with_milliseconds() -> None:
    assert timestamp(T0) == "2025-11-30T01:02:03.456Z"
    assert timestamp(T0 + 0.5441) == "2025-11-30T01:02:04.000Z"
    assert timestamp(59.9996) == "1970-01-01T00:01:00.000Z"  # no ".1000"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", timestamp())


def test_records_are_json_lines_in_field_order(audit_log: tuple[AuditLog, Clock]) -> None:
    log, _ = audit_log
    records = [record(0), record(1, error="handshake failed: \"x\"\nline 2", sni="été.example")]
    for r in records:
        log.write(r)
    assert lines(log.path) == records
    first = log.path.read_text().splitlines()[0]
    assert first.startswith('{"time":"2025-11-30T01:02:03.456Z","event":"connect",')
    assert list(json.loads(first))[:len(FIELDS)] == list(FIELDS)
    assert log.dropped == 0


def test_file_0640_in_a_directory_created_0750(audit_log: tuple[AuditLog, Clock],
                                               umask022: None) -> None:
    log, _ = audit_log
    log.write(record())
    assert stat.S_IMODE(log.path.stat().st_mode) == 0o640
    assert stat.S_IMODE(log.path.parent.stat().st_mode) == 0o750


def test_rotation_keeps_backups_and_the_newest_in_path(audit_log: tuple[AuditLog, Clock],
                                                       umask022: None) -> None:
    log, _ = audit_log
    for n in range(40):
        log.write(record(n))
    names = sorted(p.name for p in log.path.parent.iterdir())
    assert names == ["audit.log", "audit.log.1", "audit.log.2"]
    files = [log.path.with_name("audit.log.2"), log.path.with_name("audit.log.1"), log.path]
    for f in files:
        assert 0 < f.stat().st_size <= log.max_bytes
        assert stat.S_IMODE(f.stat().st_mode) == 0o640
    seqs = [r["seq"] for f in files for r in lines(f)]
    # oldest file first, no gap, nothing lost between the kept files, newest last in `path`
    assert seqs == list(range(seqs[0], 40)) and seqs[0] > 0


def test_no_backups_truncates_in_place(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log", max_bytes=1000, backups=0)
    for n in range(30):
        log.write(record(n))
    log.close()
    assert [p.name for p in tmp_path.iterdir()] == ["audit.log"]
    assert log.path.stat().st_size <= 1000
    assert lines(log.path)[-1]["seq"] == 29


def test_external_rotation_is_noticed(audit_log: tuple[AuditLog, Clock]) -> None:
    log, clock = audit_log
    log.write(record(0))
    moved = log.path.with_name("audit.log-20251130")
    log.path.rename(moved)  # what logrotate does, before it signals nobody
    log.write(record(1))  # within the second: still the file we hold
    clock.now += 1.5
    log.write(record(2))
    assert [r["seq"] for r in lines(moved)] == [0, 1]
    assert [r["seq"] for r in lines(log.path)] == [2]
    log.path.unlink()  # deleted outright: a new file as well
    clock.now += 1.5
    log.write(record(3))
    assert [r["seq"] for r in lines(log.path)] == [3]


def test_full_disk_drops_warns_once_and_recovers(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ssa.audit")
    path = tmp_path / "audit.log"
    path.symlink_to("/dev/full")  # every write fails with ENOSPC, as on a full disk
    log = AuditLog(path)
    for n in range(5):
        log.write(record(n))  # must not raise
    assert log.dropped == 5
    assert len(warnings(caplog)) == 1
    assert "No space left on device" in warnings(caplog)[0]
    path.unlink()
    path.mkdir()  # a different problem (EISDIR) is worth its own warning, once
    log.write(record(5))
    log.write(record(6))
    assert log.dropped == 7
    assert len(warnings(caplog)) == 2
    path.rmdir()  # the problem goes away: the next record is written, in a fresh file
    log.write(record(7))
    log.write(record(8))
    assert log.dropped == 7
    assert [r["seq"] for r in lines(path)] == [7, 8]
    assert any("writable again" in r.getMessage() for r in caplog.records)
    path.unlink()
    path.symlink_to("/dev/full")  # after a success, the same errno warns again
    log.close()
    log.write(record(9))
    assert len(warnings(caplog)) == 3
    log.close()


def test_read_only_directory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ssa.audit")
    tmp_path.chmod(0o500)
    try:
        if os.access(tmp_path, os.W_OK):  # root (CAP_DAC_OVERRIDE): the full-disk test covers it
            pytest.skip("this user may write into read-only directories")
        log = AuditLog(tmp_path / "audit.log")
        log.write(record(0))
        log.write(record(1))
        assert log.dropped == 2 and len(warnings(caplog)) == 1
    finally:
        tmp_path.chmod(0o700)
    log.write(record(2))
    log.close()
    assert log.dropped == 2 and [r["seq"] for r in lines(log.path)] == [2]


def test_unserialisable_record_is_dropped_not_raised(audit_log: tuple[AuditLog, Clock],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    log, _ = audit_log
    loop: dict[str, Any] = {}
    loop["self"] = loop
    log.write(loop)
    log.write(record(1, extra=object()))  # an odd type is written as text, not dropped
    assert log.dropped == 1 and len(warnings(caplog)) == 1
    assert lines(log.path)[0]["extra"].startswith("<object object")


# -- ssa-admin report ---------------------------------------------------------------------
def admin(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ssa_admin", "report", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=20, **kw)


VERIFY = "certificate verify failed: Hostname mismatch"
T12 = dict(version="TLSv1.2", cipher="ECDHE-RSA-AES128-GCM-SHA256", group="secp256r1")
FAILED = dict(version=None, cipher=None, group=None)


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    """curl: 3 good; wget: 1 good, 3 failed; one malformed line; python only in audit.log.1.gz."""
    path = tmp_path / "audit.log"
    recs = [
        record(0), record(1),
        record(2, **T12),
        record(3, program="wget", sni="a.example"),
        record(4, program="wget", verify="failed", error=VERIFY, **FAILED),
        record(5, program="wget", verify="failed", error=VERIFY, **FAILED),
        record(6, program="wget", verify="failed", error=None, **FAILED),
    ]
    text = [json.dumps(r) for r in recs]
    text.insert(2, '{"time": "2025-11-30T01:02:0')  # cut short by a crash: line 3
    path.write_text("\n".join(text) + "\n")
    with gzip.open(tmp_path / "audit.log.1.gz", "wt") as f:
        f.write(json.dumps(record(-100, program="python3", error="[Errno 111] refused",
                                  **FAILED)) + "\n")
    return path


def test_report_text(logs: Path) -> None:
    r = admin(str(logs))
    assert r.returncode == 0, r.stderr
    assert r.stderr == f"ssa-admin: 1 malformed line skipped (first at {logs}:3)\n"
    out = r.stdout
    assert "curl: 3 connections, 0 failures; first 2025-11-30T01:02:03.456Z, " \
           "last 2025-11-30T01:02:05.456Z" in out
    assert "versions: TLSv1.3 2, TLSv1.2 1" in out
    assert "ciphers:  TLS_AES_256_GCM_SHA384 2, ECDHE-RSA-AES128-GCM-SHA256 1" in out
    assert "wget: 4 connections, 3 failures" in out
    assert re.search(rf"^ +2  {re.escape(VERIFY)}$", out, re.M)
    assert re.search(r"^ +1  certificate verification failed$", out, re.M)
    assert out.index("wget:") < out.index("curl:")  # busiest first
    assert "python3" not in out
    assert out.rstrip().endswith("Total: 7 connections, 3 failures, 2 programs.")


def test_report_json_has_the_exact_numbers(logs: Path) -> None:
    r = admin(str(logs), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["connections"] == 7 and doc["failures"] == 3
    assert doc["malformed"] == {"count": 1, "first": f"{logs}:3"}
    assert list(doc["programs"]) == ["wget", "curl"]
    assert doc["programs"]["curl"] == {
        "connections": 3, "failures": 0,
        "versions": {"TLSv1.3": 2, "TLSv1.2": 1},
        "ciphers": {"TLS_AES_256_GCM_SHA384": 2, "ECDHE-RSA-AES128-GCM-SHA256": 1},
        "groups": {"X25519": 2, "secp256r1": 1},
        "top_failures": [],
        "first_seen": "2025-11-30T01:02:03.456Z", "last_seen": "2025-11-30T01:02:05.456Z",
    }
    wget = doc["programs"]["wget"]
    assert wget["versions"] == {"TLSv1.3": 1}
    assert wget["top_failures"] == [{"error": VERIFY, "count": 2},
                                    {"error": "certificate verification failed", "count": 1}]


def test_report_rotated_and_gzip_files(logs: Path) -> None:
    doc = json.loads(admin(str(logs), "--json", "--include-rotated").stdout)
    assert doc["files"] == [f"{logs}.1.gz", str(logs)]
    assert doc["connections"] == 8
    assert doc["programs"]["python3"]["top_failures"] == [{"error": "[Errno 111] refused",
                                                          "count": 1}]
    assert doc["programs"]["python3"]["first_seen"] == "2025-11-30T01:00:23.456Z"
    # named directly, a .gz is read transparently as well
    assert json.loads(admin(f"{logs}.1.gz", "--json").stdout)["connections"] == 1


def test_report_since(logs: Path) -> None:
    doc = json.loads(admin(str(logs), "--json", "--since", "2025-11-30T01:02:07Z").stdout)
    assert doc["connections"] == 3
    assert list(doc["programs"]) == ["wget"]
    r = admin(str(logs), "--since", "yesterday")
    assert r.returncode == 2 and "--since" in r.stderr


def test_report_top_failures_are_capped_at_five(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    errors = [f"error {i}" for i in range(7) for _ in range(i + 1)]  # "error 6" most often
    path.write_text("".join(json.dumps(record(n, error=e)) + "\n" for n, e in enumerate(errors)))
    top = json.loads(admin(str(path), "--json").stdout)["programs"]["curl"]["top_failures"]
    assert top == [{"error": f"error {i}", "count": i + 1} for i in (6, 5, 4, 3, 2)]


def test_report_missing_file_is_one_line_and_exit_1(logs: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.log"
    r = admin(str(logs), str(missing))
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.splitlines()[-1] == f"ssa-admin: cannot read {missing}: No such file or directory"
    assert "Traceback" not in r.stderr


def test_report_escapes_control_characters(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text(json.dumps(record(0, program="evil\x1b]0;owned\x07", error="x\x1b[2J")) + "\n")
    out = admin(str(path)).stdout
    assert "\x1b" not in out
    assert "evil\\x1b]0;owned\\x07: 1 connection, 1 failure" in out


def test_report_rich_table_on_a_terminal(logs: Path) -> None:
    """On a terminal the same numbers come as rich tables; error texts are not markup."""
    (logs.parent / "audit.log").write_text(
        logs.read_text() + json.dumps(record(9, program="wget", error="[SSL: BAD] x")) + "\n")
    primary, secondary = pty.openpty()
    env = {**os.environ, "COLUMNS": "200", "LINES": "50", "TERM": "xterm"}
    proc = subprocess.Popen([sys.executable, "-m", "ssa_admin", "report", str(logs)], cwd=REPO,
                            stdin=subprocess.DEVNULL, stdout=secondary,
                            stderr=subprocess.DEVNULL, env=env)
    os.close(secondary)
    chunks = []
    while True:
        ready, _, _ = select.select([primary], [], [], 20)
        if not ready:
            break
        try:
            data = os.read(primary, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(primary)
    assert proc.wait(timeout=20) == 0
    out = re.sub(r"\x1b\[[0-9;]*m", "", b"".join(chunks).decode())
    assert "TLS connections by program" in out and "Top failure reasons" in out
    assert re.search(r"wget\s*│\s*5\s*│\s*4\s*│", out)
    assert "[SSL: BAD] x" in out
    assert "Total: 8 connections, 4 failures, 2 programs." in out
