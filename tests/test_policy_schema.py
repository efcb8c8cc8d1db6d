"""Policy files without an engine: errors that say where they are, merging,
matching, the bundled profiles and docs/policy.md, and what an application may
change (docs/policy.md is the reference for every rule tested here).

Files are real: each test writes a configuration directory under tmp_path and
loads it with ``load_config``, or parses a text with ``yamlio`` and
``parse_document`` (the same two steps the loader takes).
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest

from ssa_engine.config import yamlio
from ssa_engine.config.loader import Config, load_config
from ssa_engine.policy.enforce import (
    AppRequests,
    InvalidSetting,
    PolicyViolation,
    check_cipher,
    check_version,
    effective,
    with_level,
)
from ssa_engine.policy.levels import LEVELS, TLS_1_2, TLS_1_3, VERSION_NAMES
from ssa_engine.policy.match import KINDS, Program
from ssa_engine.policy.model import DEFAULT_POLICY, Policy
from ssa_engine.policy.schema import (
    _AUDIT_GLOBAL,
    _REVOCATION,
    _SERVER,
    _TLS,
    _TOP,
    _VERIFY,
    AuditLogSettings,
    ConfigError,
    ConfigErrors,
    Document,
    parse_document,
)

REPO = Path(__file__).resolve().parent.parent
BUNDLED = REPO / "profiles"
BUNDLED_NAMES = ["curl", "git", "lighttpd", "netcat", "nginx", "postfix", "python", "wget"]
EXAMPLE = BUNDLED / "ssa.yaml.example"
POLICY_DOC = REPO / "docs" / "policy.md"

PIN_A = "sha256/" + "A" * 43 + "="
PIN_B = "sha256/" + "B" * 43 + "="
PIN_C = "sha256/" + "C" * 43 + "="


# -- helpers ----------------------------------------------------------------------------------
def write(directory: Path, main: str | None = None, **profiles: str) -> Path:
    """A configuration directory: ``ssa.yaml`` (if given) and ``profiles.d/NAME.yaml``."""
    (directory / "profiles.d").mkdir(parents=True, exist_ok=True)
    if main is not None:
        (directory / "ssa.yaml").write_text(main, encoding="utf-8")
    for name, text in profiles.items():
        (directory / "profiles.d" / f"{name}.yaml").write_text(text, encoding="utf-8")
    return directory


def load_errors(directory: Path) -> list[ConfigError]:
    with pytest.raises(ConfigErrors) as info:
        load_config(directory)
    return info.value.errors


def parse(text: str, *, profile: bool = True, file: str = "test.yaml") -> Document:
    tree = yamlio.load_text(text, file)
    return parse_document(tree, file, yamlio.locator(tree), profile=profile)


def parse_errors(text: str, *, profile: bool = True, file: str = "test.yaml") -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        parse(text, profile=profile, file=file)
    return [str(e) for e in info.value.errors]


def only(errors: list[str]) -> str:
    assert len(errors) == 1, errors
    return errors[0]


# -- one document: syntax ---------------------------------------------------------------------
def test_malformed_yaml_names_the_line_and_column() -> None:
    assert only(parse_errors("match:\n  name: [wget\nlevel: default\n")) == (
        "test.yaml:3:6: invalid YAML: expected ',' or ']', but got ':' while parsing a flow sequence")


def test_duplicate_key_is_an_error_at_the_second_one() -> None:
    error = only(parse_errors("match:\n  name: wget\nlevel: modern\nlevel: legacy\n"))
    assert error.startswith("test.yaml:4:1: invalid YAML: found duplicate key \"level\"")


def test_tab_indentation_is_an_error_where_the_tab_is() -> None:
    error = only(parse_errors("match:\n  name: wget\ntls:\n\tmin_version: '1.3'\n"))
    assert error.startswith("test.yaml:4:1: invalid YAML: found character '\\t' that cannot "
                            "start any token")


# -- one document: keys and values ------------------------------------------------------------
def test_unknown_keys_suggest_the_closest_known_one() -> None:
    errors = parse_errors("match:\n  nme: wget\nlevle: modern\ntls:\n  min_verison: '1.3'\n")
    assert errors == [
        "test.yaml:3:1: levle: unknown key; did you mean level? (known: match, description, level, "
        "tls, verify, pins, revocation, server, app_overrides, handshake_timeout, audit)",
        "test.yaml:2:3: match -> nme: unknown key; did you mean name? (known: path, unit, name, user)",
        "test.yaml:5:3: tls -> min_verison: unknown key; did you mean min_version? "
        "(known: min_version, max_version, ciphers, ciphersuites, groups)",
    ]


def test_unknown_key_without_a_close_one_has_no_suggestion() -> None:
    error = only(parse_errors("match:\n  name: wget\ncolour: blue\n"))
    assert error.startswith("test.yaml:3:1: colour: unknown key (known: match,")
    assert "did you mean" not in error


@pytest.mark.parametrize(("text", "expected"), [
    # a string where a list is expected
    ("tls:\n  ciphers: ECDHE-RSA-AES128-GCM-SHA256\n",
     "test.yaml:4:12: tls -> ciphers: must be a list of strings "
     "(got string 'ECDHE-RSA-AES128-GCM-SHA256')"),
    # a list where a boolean is expected
    ("verify:\n  allow_app_trust: [true]\n",
     "test.yaml:4:20: verify -> allow_app_trust: must be true or false (got a list)"),
    # numbers out of range
    ("verify:\n  verify_depth: 0\n",
     "test.yaml:4:17: verify -> verify_depth: must be between 1 and 100 (got 0)"),
    ("handshake_timeout: 1000\n",
     "test.yaml:3:20: handshake_timeout: must be between 0.1 and 300 (got 1000)"),
    # a string where a number is expected, a number where an integer is expected
    ("handshake_timeout: 10s\n",
     "test.yaml:3:20: handshake_timeout: must be a number (got string '10s')"),
    ("verify:\n  verify_depth: 2.5\n",
     "test.yaml:4:17: verify -> verify_depth: must be an integer (got number 2.5)"),
    # a mapping where a string is expected, and the reverse
    ("verify:\n  trust_store:\n    file: /x.pem\n",
     "test.yaml:5:5: verify -> trust_store: must be a non-empty string (got a mapping)"),
    ("server: www.example.com\n",
     "test.yaml:3:9: server: must be a mapping of certificates, client_auth, client_ca, "
     "ocsp_stapling, early_data, ticket_rotation (got string 'www.example.com')"),
    # choices
    ("tls:\n  min_version: '1.1'\n",
     "test.yaml:4:16: tls -> min_version: must be one of \"1.2\", \"1.3\" (got '1.1')"),
    ("server:\n  client_auth: optional\n",
     "test.yaml:4:16: server -> client_auth: must be one of none, request, require "
     "(got 'optional')"),
    ("app_overrides: [ciphers, verify]\n",
     "test.yaml:3:26: app_overrides -> 1: must be one of min_version, max_version, ciphers, "
     "client_auth, revocation (got 'verify')"),
    # names the level lists do not know
    ("tls:\n  ciphers:\n    - ECDHE-RSA-AES128-GCM-SHA265\n",
     "test.yaml:5:7: tls -> ciphers -> 0: unknown cipher 'ECDHE-RSA-AES128-GCM-SHA265'; "
     "did you mean ECDHE-RSA-AES128-GCM-SHA256?"),
    ("tls:\n  groups: [X25519, x448]\n",
     "test.yaml:4:20: tls -> groups -> 1: unknown group 'x448'; did you mean X448?"),
    ("tls:\n  ciphersuites: [TLS_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256]\n",
     "test.yaml:4:42: tls -> ciphersuites -> 1: 'TLS_AES_128_GCM_SHA256' is listed twice"),
    # in a profile, audit is only true or false
    ("audit:\n  path: /var/log/ssa.jsonl\n",
     "test.yaml:4:3: audit: must be true or false in a profile (the log's path, size and "
     "backups are set in ssa.yaml)"),
])
def test_wrong_types_and_values(text: str, expected: str) -> None:
    assert only(parse_errors("match:\n  name: wget\n" + text)) == expected


def test_an_unknown_level() -> None:
    assert only(parse_errors("match:\n  name: wget\nlevel: strict\n")) == (
        "test.yaml:3:8: level: must be one of legacy, default, modern, future, fips (got 'strict')")


def test_an_unquoted_version_is_read_as_the_version() -> None:
    doc = parse("match:\n  name: wget\ntls:\n  min_version: 1.3\n  max_version: 1.3\n")
    assert (doc.layer.min_version, doc.layer.max_version) == (TLS_1_3, TLS_1_3)


def test_iana_cipher_names_are_stored_as_openssl_names() -> None:
    doc = parse("match:\n  name: wget\ntls:\n  ciphers: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]\n")
    assert doc.layer.ciphers == ("ECDHE-RSA-AES128-GCM-SHA256",)


def test_bad_pins() -> None:
    errors = parse_errors(
        "match:\n  name: wget\npins:\n"
        "  a.example:\n    - sha256/abc\n"  # not 32 bytes
        f"    - {PIN_A[7:]}\n"  # no sha256/ prefix
        "  b.example: []\n"
        f"  c.example: {PIN_A}\n"  # one pin, not a list: accepted
        "  d.example: 42\n"
    )
    assert errors == [
        "test.yaml:5:7: pins -> a.example -> 0: 'sha256/abc' is not a pin: expected sha256/ and "
        "the base64 of a SHA-256 digest (ssa-admin pin add HOST --from HOST:443 computes it)",
        f"test.yaml:6:7: pins -> a.example -> 1: '{PIN_A[7:]}' is not a pin: expected sha256/ and "
        "the base64 of a SHA-256 digest (ssa-admin pin add HOST --from HOST:443 computes it)",
        "test.yaml:7:14: pins -> b.example: lists no pins (remove the host to unpin it)",
        "test.yaml:9:14: pins -> d.example: must be a list of strings (got integer 42)",
    ]


def test_bad_pin_hosts() -> None:
    errors = parse_errors(
        "match:\n  name: wget\npins:\n"
        f"  exa mple.com: [{PIN_A}]\n"
        f"  '*.com': [{PIN_A}]\n"
        f"  'www.*.example.com': [{PIN_A}]\n"
        f"  -bad.example.com: [{PIN_A}]\n"
        f"  Example.ORG: [{PIN_A}]\n"
        f"  example.org.: [{PIN_B}]\n"  # the same host as the line above
    )
    assert errors == [
        "test.yaml:4:3: pins -> exa mple.com: is not a host name, *.domain or IP address",
        "test.yaml:5:3: pins -> *.com: a wildcard needs at least two labels after *. "
        "(like *.example.com)",
        "test.yaml:6:3: pins -> www.*.example.com: is not a host name, *.domain or IP address",
        "test.yaml:7:3: pins -> -bad.example.com: is not a host name, *.domain or IP address",
        "test.yaml:9:3: pins -> example.org.: the same host as an earlier entry (example.org)",
    ]


def test_pin_hosts_are_stored_as_the_engine_looks_them_up() -> None:
    doc = parse("match:\n  name: wget\npins:\n"
                f"  Example.COM.: [{PIN_A}]\n  '[::0001]': [{PIN_B}]\n  '*.Example.net': [{PIN_C}]\n")
    assert doc.layer.pins == {"example.com": frozenset({PIN_A}), "::1": frozenset({PIN_B}),
                              "*.example.net": frozenset({PIN_C})}
    policy = replace(DEFAULT_POLICY, pins=tuple(sorted(doc.layer.pins.items())))
    assert policy.pins_for("EXAMPLE.com") == {PIN_A}
    assert policy.pins_for("::1") == {PIN_B}  # was never found: the key kept its brackets
    assert policy.pins_for("[::1]") == {PIN_B}
    assert policy.pins_for("www.example.net") == {PIN_C}
    assert policy.pins_for("a.www.example.net") == frozenset()  # one label only


def test_match_without_criteria() -> None:
    assert only(parse_errors("match: {}\n")) == (
        "test.yaml:1:8: match: names no criteria: give path, unit, name or user")
    assert only(parse_errors("match:\n  name: []\n")) == (
        "test.yaml:2:3: match: names no criteria: give path, unit, name or user")
    # a profile without match at all
    assert only(parse_errors("level: modern\n")) == (
        "test.yaml:1:1: a profile needs a match section (path, unit, name or user)")
    # an unknown key inside match is the one error (no second "no criteria")
    assert only(parse_errors("match:\n  nme: wget\n")).startswith("test.yaml:2:3: match -> nme:")


def test_match_without_criteria_is_reported_beside_other_errors() -> None:
    # it used to be dropped whenever an earlier key of the file had an error
    assert parse_errors("levle: modern\nmatch: {}\n") == [
        "test.yaml:1:1: levle: unknown key; did you mean level? (known: match, description, "
        "level, tls, verify, pins, revocation, server, app_overrides, handshake_timeout, audit)",
        "test.yaml:2:8: match: names no criteria: give path, unit, name or user",
    ]


def test_match_in_ssa_yaml_is_an_error_at_the_key() -> None:
    assert only(parse_errors("level: modern\nmatch:\n  name: wget\n", profile=False)) == (
        "test.yaml:2:1: match: only profiles (profiles.d/*.yaml) have a match section; "
        "ssa.yaml is the default policy for every program")


def test_relative_paths_are_refused() -> None:
    errors = parse_errors(
        "match:\n  path: [/usr/bin/wget, bin/wget]\n"
        "verify:\n  trust_store: certs/ca.pem\n"
        "server:\n  client_ca: ca.pem\n")
    assert errors == [
        "test.yaml:2:25: match -> path -> 1: must be an absolute path or glob (got 'bin/wget')",
        "test.yaml:4:16: verify -> trust_store: must be an absolute path (got 'certs/ca.pem')",
        "test.yaml:6:14: server -> client_ca: must be an absolute path (got 'ca.pem')",
    ]
    assert only(parse_errors("audit:\n  path: var/log/ssa.jsonl\n", profile=False)) == (
        "test.yaml:2:9: audit -> path: must be an absolute path (got 'var/log/ssa.jsonl')")


def test_ssa_yaml_audit_settings() -> None:
    doc = parse("audit:\n  path: /var/log/ssa.jsonl\n  max_size: 512k\n  backups: 2\n", profile=False)
    assert doc.audit_log == AuditLogSettings("/var/log/ssa.jsonl", 512 * 1024, 2)
    assert parse_errors("audit:\n  max_size: 1k\n  backups: -1\n", profile=False) == [
        "test.yaml:2:13: audit -> max_size: must be a size of at least 4k, like 10M or 512k "
        "(got '1k')",
        "test.yaml:3:12: audit -> backups: must be between 0 and 1000 (got -1)",
    ]


def test_all_errors_of_a_file_are_reported_together(tmp_path: Path) -> None:
    write(tmp_path, wget="match:\n  name: wget\nlevel: moden\ntls:\n  max_verison: '1.3'\n"
                         "verify:\n  verify_depth: 0\npins:\n  example.com:\n    - sha256/abc\n")
    f = tmp_path / "profiles.d" / "wget.yaml"
    errors = load_errors(tmp_path)
    assert [(e.file, e.line, e.column, e.keys) for e in errors] == [
        (str(f), 3, 8, ("level",)),
        (str(f), 5, 3, ("tls", "max_verison")),
        (str(f), 7, 17, ("verify", "verify_depth")),
        (str(f), 10, 7, ("pins", "example.com", 0)),
    ]
    assert str(errors[1]) == (f"{f}:5:3: tls -> max_verison: unknown key; did you mean "
                              "max_version? (known: min_version, max_version, ciphers, "
                              "ciphersuites, groups)")


def test_errors_across_several_files_are_all_reported(tmp_path: Path) -> None:
    write(tmp_path, "level: fast\n",
          curl="match:\n  name: curl\nhandshake_timeout: 0\n",
          git="match:\n  name: [git\n",
          wget="match:\n  name: wget\n")  # a good one among them
    errors = [str(e) for e in load_errors(tmp_path)]
    d = tmp_path
    assert errors == [
        f"{d}/ssa.yaml:1:8: level: must be one of legacy, default, modern, future, fips "
        "(got 'fast')",
        f"{d}/profiles.d/curl.yaml:3:20: handshake_timeout: must be between 0.1 and 300 (got 0)",
        f"{d}/profiles.d/git.yaml:3:1: invalid YAML: expected ',' or ']', but got '<stream end>' "
        "while parsing a flow sequence",
    ]


# -- whole files: size, encoding, aliases, names, files named by keys ----------------------------
def test_billion_laughs_is_refused_quickly(tmp_path: Path) -> None:
    lines = ["lol0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 10):
        lines.append(f"lol{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    write(tmp_path, "\n".join(lines) + "\n")
    start = time.monotonic()
    errors = load_errors(tmp_path)
    assert time.monotonic() - start < 2.0
    assert [str(e) for e in errors] == [
        f"{tmp_path}/ssa.yaml:1:7: YAML aliases (*name) are not supported in policy files"]


def test_a_file_over_256_kib_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "description: " + "x" * (256 * 1024) + "\n")
    assert [str(e) for e in load_errors(tmp_path)] == [
        f"{tmp_path}/ssa.yaml: larger than 256 KiB; is this the right file?"]


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    write(tmp_path)
    (tmp_path / "profiles.d" / "wget.yaml").write_bytes(b"match:\n  name: caf\xe9\n")
    assert [str(e) for e in load_errors(tmp_path)] == [
        f"{tmp_path}/profiles.d/wget.yaml:2:12: not UTF-8 text (byte 18)"]


def test_a_value_the_yaml_library_cannot_build_is_located(tmp_path: Path) -> None:
    """ruamel.yaml resolves `-_` and `._` as numbers, then fails to build them
    (IndexError, ValueError): a located error, never a traceback (found by the fuzzer)."""
    write(tmp_path, "level: default\nhandshake_timeout: -_\n")
    assert [str(e) for e in load_errors(tmp_path)] == [
        f"{tmp_path}/ssa.yaml:2:20: invalid YAML: '-_' looks like a number but is none; "
        "quote it if it is meant as text"]
    write(tmp_path, "tls:\n  groups: [X25519, ._]\n")
    assert [str(e) for e in load_errors(tmp_path)] == [
        f"{tmp_path}/ssa.yaml:2:20: invalid YAML: '._' looks like a number but is none; "
        "quote it if it is meant as text"]


def test_a_badly_named_profile_file(tmp_path: Path) -> None:
    write(tmp_path, **{"my wget": "match:\n  name: wget\n"})
    assert [str(e) for e in load_errors(tmp_path)] == [
        f"{tmp_path}/profiles.d/my wget.yaml: a profile file name is letters, digits, '.', '_' "
        "or '-'"]


def test_backups_and_dot_files_in_profiles_d_are_ignored(tmp_path: Path) -> None:
    write(tmp_path, wget="match:\n  name: wget\n")
    (tmp_path / "profiles.d" / ".wget.yaml.swp").write_text("garbage: [")
    (tmp_path / "profiles.d" / "wget.yaml~").write_text("garbage: [")
    assert [p.name for p in load_config(tmp_path).profiles] == ["wget"]


def test_files_named_by_keys_must_exist(tmp_path: Path) -> None:
    write(tmp_path, "verify:\n  trust_store: /nonexistent/ca.pem\n",
          nginx="match:\n  name: nginx\nserver:\n  client_ca: /nonexistent/clients.pem\n")
    assert [str(e) for e in load_errors(tmp_path)] == [
        f"{tmp_path}/ssa.yaml:2:16: verify -> trust_store: /nonexistent/ca.pem: no such file "
        "(a PEM bundle is expected)",
        f"{tmp_path}/profiles.d/nginx.yaml:4:14: server -> client_ca: /nonexistent/clients.pem: "
        "no such file (a PEM bundle is expected)",
    ]
    pem = tmp_path / "ca.pem"
    pem.write_text("")
    write(tmp_path, f"verify:\n  trust_store: {pem}\n",
          nginx=f"match:\n  name: nginx\nserver:\n  client_ca: {pem}\n")
    config = load_config(tmp_path)
    assert config.default.verify.trust_store == str(pem)
    assert config.profiles[0].policy.client_ca == str(pem)


def test_no_configuration_at_all_is_the_built_in_policy(tmp_path: Path) -> None:
    config = load_config(tmp_path / "absent")
    assert config.default == DEFAULT_POLICY and config.profiles == ()
    write(tmp_path, "")  # an empty ssa.yaml is the same
    assert load_config(tmp_path).default.level.name == "default"


# -- conflicting settings (after merging) -----------------------------------------------------
def test_min_version_above_max_version(tmp_path: Path) -> None:
    write(tmp_path, "tls:\n  min_version: '1.3'\n  max_version: '1.2'\n")
    assert [str(e) for e in load_errors(tmp_path)] == [
        f"{tmp_path}/ssa.yaml:2:16: tls -> min_version: is above tls.max_version"]


def test_modern_with_tls_1_2_needs_ciphers(tmp_path: Path) -> None:
    write(tmp_path, wget="match:\n  name: wget\nlevel: modern\ntls:\n  min_version: '1.2'\n")
    assert [str(e) for e in load_errors(tmp_path)] == [
        f"{tmp_path}/profiles.d/wget.yaml:5:3: tls -> ciphers: is empty but TLS 1.2 is allowed "
        "(level modern has no TLS 1.2 ciphers; list some or set tls.min_version to 1.3)"]
    # with ciphers it is a valid policy: TLS 1.2 with those, TLS 1.3 with the level's suites
    write(tmp_path, wget="match:\n  name: wget\nlevel: modern\ntls:\n  min_version: '1.2'\n"
                         "  ciphers: [ECDHE-RSA-AES128-GCM-SHA256]\n")
    policy = load_config(tmp_path).profiles[0].policy
    assert policy.effective_min_version == TLS_1_2
    assert policy.effective_ciphers == ("ECDHE-RSA-AES128-GCM-SHA256",)
    assert policy.effective_ciphersuites == LEVELS["modern"].ciphersuites


def test_empty_suites_and_groups_are_conflicts(tmp_path: Path) -> None:
    write(tmp_path, "level: modern\ntls:\n  ciphersuites: []\n  groups: []\n")
    assert [str(e) for e in load_errors(tmp_path)] == [
        f"{tmp_path}/ssa.yaml:3:17: tls -> ciphersuites: is empty but TLS 1.3 is allowed",
        f"{tmp_path}/ssa.yaml:4:11: tls -> groups: is empty: no key exchange is possible",
    ]


def test_a_conflict_in_ssa_yaml_is_reported_once_not_for_every_profile(tmp_path: Path) -> None:
    write(tmp_path, "tls:\n  min_version: '1.3'\n  max_version: '1.2'\n",
          curl="match:\n  name: curl\n", wget="match:\n  name: wget\ndescription: x\n")
    assert [str(e) for e in load_errors(tmp_path)] == [
        f"{tmp_path}/ssa.yaml:2:16: tls -> min_version: is above tls.max_version"]


def test_a_conflict_made_by_a_profile_is_reported_in_the_profile(tmp_path: Path) -> None:
    write(tmp_path, "tls:\n  min_version: '1.3'\n", wget="match:\n  name: wget\ntls:\n"
          "  max_version: '1.2'\n")
    errors = load_errors(tmp_path)
    assert [(e.file, e.line, e.column) for e in errors] == [
        (str(tmp_path / "profiles.d" / "wget.yaml"), 4, 3)]
    # a profile that names a level starts afresh, so ssa.yaml's minimum is gone
    write(tmp_path, "tls:\n  min_version: '1.3'\n", wget="match:\n  name: wget\nlevel: default\n"
          "tls:\n  max_version: '1.2'\n")
    policy = load_config(tmp_path).profiles[0].policy
    assert (policy.effective_min_version, policy.effective_max_version) == (TLS_1_2, TLS_1_2)


# -- merging ----------------------------------------------------------------------------------
def profile_policy(config: Config, name: str) -> Policy:
    profile = config.profile(name)
    assert profile is not None
    return profile.policy


def test_a_level_in_a_profile_starts_the_tls_settings_afresh(tmp_path: Path) -> None:
    write(tmp_path, "level: default\ntls:\n  min_version: '1.3'\n  groups: [X25519]\n",
          old="match:\n  name: old\nlevel: legacy\n",
          tuned="match:\n  name: tuned\nlevel: legacy\ntls:\n  groups: [P-256]\n")
    config = load_config(tmp_path)
    assert config.default.effective_min_version == TLS_1_3
    assert config.default.effective_groups == ("X25519",)
    old = profile_policy(config, "old")
    assert old.level.name == "legacy"
    assert old.effective_min_version == TLS_1_2  # ssa.yaml's 1.3 is gone
    assert old.effective_groups == LEVELS["legacy"].groups
    assert old.effective_ciphers == LEVELS["legacy"].ciphers
    tuned = profile_policy(config, "tuned")
    assert tuned.effective_groups == ("P-256",)
    assert tuned.effective_min_version == TLS_1_2


def test_tls_keys_without_a_level_adjust_the_inherited_settings(tmp_path: Path) -> None:
    write(tmp_path, "level: legacy\ntls:\n  groups: [X25519, P-256]\n",
          wget="match:\n  name: wget\ntls:\n  min_version: '1.3'\n")
    policy = profile_policy(load_config(tmp_path), "wget")
    assert policy.level.name == "legacy"
    assert policy.effective_min_version == TLS_1_3
    assert policy.effective_groups == ("X25519", "P-256")  # kept from ssa.yaml
    assert policy.effective_ciphers == LEVELS["legacy"].ciphers


def test_pins_are_replaced_host_by_host(tmp_path: Path) -> None:
    write(tmp_path, f"pins:\n  a.example: [{PIN_A}]\n  b.example: [{PIN_B}]\n",
          wget=f"match:\n  name: wget\npins:\n  a.example: [{PIN_C}]\n  c.example: [{PIN_C}]\n",
          curl="match:\n  name: curl\n")
    config = load_config(tmp_path)
    wget = profile_policy(config, "wget")
    assert wget.pins_for("a.example") == {PIN_C}  # the profile decides alone: not {A, C}
    assert wget.pins_for("b.example") == {PIN_B}  # kept
    assert wget.pins_for("c.example") == {PIN_C}  # added
    assert profile_policy(config, "curl").pins == config.default.pins
    assert dict(config.default.pins) == {"a.example": {PIN_A}, "b.example": {PIN_B}}


def test_verify_keys_merge_one_by_one(tmp_path: Path) -> None:
    pem = tmp_path / "ca.pem"
    pem.write_text("")
    write(tmp_path, f"verify:\n  trust_store: {pem}\n  verify_depth: 5\n  allow_ip_names: true\n",
          wget="match:\n  name: wget\nverify:\n  allow_app_trust: false\n  verify_depth: 3\n")
    v = profile_policy(load_config(tmp_path), "wget").verify
    assert (v.trust_store, v.verify_depth, v.allow_ip_names, v.allow_app_trust) == (
        str(pem), 3, True, False)


def test_other_keys_replace_the_inherited_value_whole(tmp_path: Path) -> None:
    write(tmp_path, "app_overrides: [ciphers, min_version]\nhandshake_timeout: 20\n"
                    "server:\n  certificates: [a.example, b.example]\n  client_auth: request\n",
          nginx="match:\n  name: nginx\napp_overrides: [client_auth]\n"
                "server:\n  certificates: [c.example]\n",
          curl="match:\n  name: curl\napp_overrides: []\nhandshake_timeout: 5\n",
          git="match:\n  name: git\n")
    config = load_config(tmp_path)
    nginx, curl, git = (profile_policy(config, n) for n in ("nginx", "curl", "git"))
    assert nginx.app_overrides == {"client_auth"}  # replaced, not added to
    assert nginx.server_certificates == ("c.example",)
    assert nginx.client_auth == "request" and nginx.handshake_timeout == 20.0
    assert curl.app_overrides == frozenset() and curl.handshake_timeout == 5.0
    assert git.app_overrides == {"ciphers", "min_version"}
    assert git.server_certificates == ("a.example", "b.example")
    assert (nginx.profile, nginx.source) == ("nginx", f"profile nginx ({tmp_path}/profiles.d/"
                                                      "nginx.yaml)")


def test_the_engine_options_are_the_layer_under_ssa_yaml(tmp_path: Path) -> None:
    # what `ssa-engine serve --level modern --handshake-timeout 30 --certificate cli.example` builds
    base = replace(with_level(DEFAULT_POLICY, "modern"), handshake_timeout=30.0,
                   server_certificates=("cli.example",))
    config = load_config(tmp_path, base)  # no ssa.yaml: the options are the default policy
    assert (config.default.level.name, config.default.handshake_timeout,
            config.default.server_certificates) == ("modern", 30.0, ("cli.example",))
    write(tmp_path, "handshake_timeout: 5\n")
    config = load_config(tmp_path, base)
    assert (config.default.level.name, config.default.handshake_timeout,
            config.default.server_certificates) == ("modern", 5.0, ("cli.example",))
    write(tmp_path, "level: default\nserver:\n  certificates: [file.example]\n")
    config = load_config(tmp_path, base)
    assert (config.default.level.name, config.default.handshake_timeout,
            config.default.server_certificates) == ("default", 30.0, ("file.example",))


# -- matching ---------------------------------------------------------------------------------
WGET = Program(pid=1, exe="/usr/bin/wget", comm="wget", uid=1000, user="alice",
               unit="fetch.service")


def test_specificity_path_exact_then_glob_then_unit_then_name_then_user(tmp_path: Path) -> None:
    profiles = {
        "p-exact": "match:\n  path: /usr/bin/wget\n",
        "p-glob": "match:\n  path: /usr/bin/w*\n",
        "p-unit": "match:\n  unit: fetch\n",
        "p-name": "match:\n  name: wget\n",
        "p-user": "match:\n  user: alice\n",
    }
    write(tmp_path, **profiles)
    winners = []
    for name in profiles:
        selection = load_config(tmp_path).select(WGET)
        assert selection.profile is not None and selection.tied == ()
        winners.append((selection.profile.name, selection.reason))
        (tmp_path / "profiles.d" / f"{name}.yaml").unlink()
    assert winners == [
        ("p-exact", "matched by path exactly (/usr/bin/wget)"),
        ("p-glob", "matched by path by pattern (/usr/bin/w*)"),
        ("p-unit", "matched by unit exactly (fetch)"),
        ("p-name", "matched by name exactly (wget)"),
        ("p-user", "matched by user exactly (alice)"),
    ]
    selection = load_config(tmp_path).select(WGET)
    assert (selection.profile, selection.reason) == (None, "no profile is applied")
    assert selection.policy == load_config(tmp_path).default


def test_kinds_are_combined_with_and(tmp_path: Path) -> None:
    write(tmp_path, postfix="match:\n  name: smtp\n  user: postfix\n")
    config = load_config(tmp_path)
    smtp = Program(exe="/usr/lib/postfix/sbin/smtp", comm="smtp", uid=107, user="postfix")
    assert config.select(smtp).profile is not None
    other = config.select(replace(smtp, user="alice", uid=1000))
    assert (other.profile, other.reason) == (None, "no profile matches")
    assert config.select(replace(smtp, comm="smtpd", exe="/usr/lib/postfix/sbin/smtpd")
                         ).profile is None


def test_any_value_of_a_kind_may_match(tmp_path: Path) -> None:
    write(tmp_path, git="match:\n  name: [git, git-remote-http*]\n")
    config = load_config(tmp_path)
    helper = Program(exe="/usr/lib/git-core/git-remote-https", comm="git-remote-http")
    assert config.select(helper).reason == "matched by name by pattern (git-remote-http*)"
    assert config.select(Program(exe="/usr/bin/git", comm="git")).reason == (
        "matched by name exactly (git)")


def test_unit_without_a_suffix_means_the_service(tmp_path: Path) -> None:
    write(tmp_path, nginx="match:\n  unit: nginx\n", mail="match:\n  unit: postfix@*\n")
    config = load_config(tmp_path)

    def chosen(unit: str | None) -> str | None:
        s = config.select(Program(exe="/usr/sbin/x", comm="x", unit=unit))
        return s.profile.name if s.profile else None

    assert chosen("nginx.service") == "nginx"
    assert chosen("nginx") == "nginx"
    assert chosen("nginx-debug.service") is None
    assert chosen("nginx.scope") is None
    assert chosen("postfix@-.service") == "mail"
    assert chosen(None) is None


def test_name_matches_the_process_name_or_the_executable_base_name(tmp_path: Path) -> None:
    write(tmp_path, wget="match:\n  name: wget\n", py="match:\n  name: python3*\n")
    config = load_config(tmp_path)

    def chosen(exe: str, comm: str | None) -> str | None:
        s = config.select(Program(exe=exe, comm=comm))
        return s.profile.name if s.profile else None

    assert chosen("/opt/wget2/bin/wget", "wget") == "wget"
    assert chosen("/usr/bin/wget", None) == "wget"  # comm unreadable: the exe's name
    assert chosen("/usr/local/bin/fetcher", "wget") == "wget"  # comm only
    assert chosen("/usr/bin/python3.12", "backup.py") == "py"  # a script: its interpreter
    assert chosen("/usr/bin/wget2", "wget2") is None


def test_a_symlinked_path_matches_the_resolved_executable(tmp_path: Path) -> None:
    real = tmp_path / "bin" / "python3.12"
    real.parent.mkdir()
    real.write_text("")
    link = tmp_path / "bin" / "python3"
    link.symlink_to(real.name)
    write(tmp_path / "config", py=f"match:\n  path: {link}\n")
    config = load_config(tmp_path / "config")
    # /proc/PID/exe is always the resolved path
    selection = config.select(Program(exe=str(real), comm="python3"))
    assert selection.profile is not None and selection.profile.name == "py"
    assert selection.reason == f"matched by path exactly ({real})"
    assert config.select(Program(exe=str(tmp_path / "bin" / "other"), comm="x")).profile is None


def test_user_by_name_uid_or_glob(tmp_path: Path) -> None:
    write(tmp_path, web="match:\n  user: www-*\n", root="match:\n  user: '0'\n")
    config = load_config(tmp_path)

    def chosen(user: str | None, uid: int | None) -> str | None:
        s = config.select(Program(exe="/usr/bin/x", comm="x", user=user, uid=uid))
        return s.profile.name if s.profile else None

    assert chosen("www-data", 33) == "web"  # a user glob matched nothing before
    assert chosen(None, 0) == "root"
    assert chosen("alice", 1000) is None
    assert chosen(None, None) is None


def test_ties_go_to_the_name_that_sorts_first_and_are_reported(tmp_path: Path) -> None:
    write(tmp_path, **{"b-wget": "match:\n  name: wget\n", "a-wget": "match:\n  name: wget\n",
                       "c-wget": "match:\n  name: wget\n"})
    selection = load_config(tmp_path).select(WGET)
    assert selection.profile is not None
    assert (selection.profile.name, selection.tied) == ("a-wget", ("b-wget", "c-wget"))


@pytest.mark.parametrize(("winner", "loser"), [
    # an exact value beats a glob of the same kind
    ("match:\n  name: wget\n", "match:\n  name: wge*\n"),
    # then the glob with more literal characters
    ("match:\n  path: /usr/bin/w*\n", "match:\n  path: /usr/*\n"),
    # then the profile matching more kinds
    ("match:\n  name: wget\n  user: alice\n", "match:\n  name: wget\n"),
    # the rank of a profile is its most specific kind, whatever else it names
    ("match:\n  unit: fetch\n", "match:\n  name: wget\n  user: alice\n"),
])
def test_tie_rules(tmp_path: Path, winner: str, loser: str) -> None:
    # the loser's name sorts first: only the rules can make the winner win
    write(tmp_path, **{"a-loser": loser, "b-winner": winner})
    selection = load_config(tmp_path).select(WGET)
    assert selection.profile is not None
    assert (selection.profile.name, selection.tied) == ("b-winner", ())


# -- the bundled profiles and the example ssa.yaml -----------------------------------------------
def test_the_bundled_profiles_are_the_documented_ones() -> None:
    assert sorted(p.stem for p in BUNDLED.glob("*.yaml")) == BUNDLED_NAMES


@pytest.mark.parametrize("name", BUNDLED_NAMES)
def test_every_bundled_profile_validates(tmp_path: Path, name: str) -> None:
    write(tmp_path)
    shutil.copy(BUNDLED / f"{name}.yaml", tmp_path / "profiles.d" / f"{name}.yaml")
    profile = load_config(tmp_path).profile(name)
    assert profile is not None
    text = (BUNDLED / f"{name}.yaml").read_text(encoding="utf-8")
    # commented: it says what the program is and why these settings
    assert text.startswith(f"# {name}: ")
    assert sum(line.startswith("#") for line in text.splitlines()) >= 5
    assert profile.description
    # bundled profiles match by name (`profile apply` resolves paths on the target machine)
    assert profile.match.names and not profile.match.paths


@pytest.mark.parametrize("name", [*BUNDLED_NAMES, "ssa.yaml.example"])
def test_bundled_files_survive_a_round_trip_edit_unchanged(name: str) -> None:
    path = BUNDLED / (name if name.endswith(".example") else f"{name}.yaml")
    text = path.read_text(encoding="utf-8")
    tree = yamlio.load_text(text, str(path))
    assert yamlio.dump(tree) == text  # written in the layout yamlio dumps
    tree["level"] = "future"
    changed = [(a, b) for a, b in zip(text.splitlines(), yamlio.dump(tree).splitlines(),
                                      strict=True) if a != b]
    assert len(changed) == 1 and changed[0][1] == "level: future"


def test_all_bundled_profiles_together(tmp_path: Path) -> None:
    write(tmp_path)
    for name in BUNDLED_NAMES:
        shutil.copy(BUNDLED / f"{name}.yaml", tmp_path / "profiles.d" / f"{name}.yaml")
    config = load_config(tmp_path)

    def chosen(**program: object) -> tuple[str | None, str]:
        s = config.select(Program(**program))  # type: ignore[arg-type]
        return (s.profile.name if s.profile else None), s.policy.level.name

    assert chosen(exe="/usr/bin/wget", comm="wget") == ("wget", "default")
    assert chosen(exe="/usr/bin/curl", comm="curl") == ("curl", "default")
    assert chosen(exe="/usr/sbin/nginx", comm="nginx", user="www-data") == ("nginx", "default")
    assert chosen(exe="/usr/bin/python3.12", comm="python3") == ("python", "default")
    assert chosen(exe="/usr/bin/python3.12", comm="netcat.py") == ("netcat", "default")
    assert chosen(exe="/usr/lib/git-core/git-remote-https", comm="git-remote-http") == (
        "git", "default")
    # postfix: legacy for outbound mail (smtp as user postfix), not for anybody else's smtp
    assert chosen(exe="/usr/lib/postfix/sbin/smtp", comm="smtp", user="postfix") == (
        "postfix", "legacy")
    assert chosen(exe="/usr/lib/postfix/sbin/smtp", comm="smtp", user="alice") == (
        None, "default")
    assert chosen(exe="/usr/lib/postfix/sbin/smtpd", comm="smtpd", user="postfix") == (
        None, "default")
    for server in ("nginx", "lighttpd", "netcat"):
        assert profile_policy(config, server).client_auth == "none"


def test_the_example_ssa_yaml_validates_and_changes_nothing(tmp_path: Path) -> None:
    write(tmp_path)
    shutil.copy(EXAMPLE, tmp_path / "ssa.yaml")
    config = load_config(tmp_path)
    d = config.default
    b = DEFAULT_POLICY
    assert d.level == b.level and d.verify == b.verify
    assert (d.effective_min_version, d.effective_max_version, d.effective_ciphers,
            d.effective_ciphersuites, d.effective_groups) == (
        b.effective_min_version, b.effective_max_version, b.effective_ciphers,
        b.effective_ciphersuites, b.effective_groups)
    assert (d.handshake_timeout, d.app_overrides, d.pins, d.server_certificates, d.client_auth,
            d.client_ca, d.audit) == (b.handshake_timeout, b.app_overrides, b.pins,
                                      b.server_certificates, b.client_auth, b.client_ca, b.audit)
    assert (d.revocation, d.server_ocsp_stapling) == (b.revocation, b.server_ocsp_stapling)
    assert config.audit_log == AuditLogSettings()


def schema_keys(*, profile_only: bool) -> set[str]:
    """Every key the schema accepts, as docs/policy.md writes it (``tls.min_version``)."""
    keys = {k for k in _TOP if k not in ("tls", "verify", "revocation", "server", "match")}
    keys |= {f"tls.{k}" for k in _TLS} | {f"verify.{k}" for k in _VERIFY}
    keys |= {f"revocation.{k}" for k in _REVOCATION}
    keys |= {f"server.{k}" for k in _SERVER} | {f"audit.{k}" for k in _AUDIT_GLOBAL}
    if profile_only:
        keys |= {f"match.{k}" for k in KINDS}
    return keys


def test_the_example_ssa_yaml_documents_every_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    for key in schema_keys(profile_only=False):
        leaf = key.rsplit(".", 1)[-1]
        assert re.search(rf"^[ #]*{leaf}:", text, re.M), f"{key} is not in ssa.yaml.example"


# -- docs/policy.md cannot drift from the code -------------------------------------------------
def _doc_section(title: str) -> str:
    text = POLICY_DOC.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def _level_tables() -> dict[str, tuple[str, dict[str, str]]]:
    """``### `name``` sections of "Levels": their first line and their table."""
    section = _doc_section("Levels")
    found = {}
    for m in re.finditer(r"^### `(\w+)`\n\n(.+?)\n\n((?:\|.*\|\n)+)", section, re.M):
        rows = {}
        for line in m.group(3).splitlines()[2:]:
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1]
        found[m.group(1)] = (m.group(2), rows)
    return found


def _codes(cell: str) -> tuple[str, ...]:
    return tuple(re.findall(r"`([^`]+)`", cell))


def test_policy_doc_level_tables_equal_levels_py() -> None:
    tables = _level_tables()
    assert list(tables) == list(LEVELS)
    for name, level in LEVELS.items():
        summary, rows = tables[name]
        assert summary == level.summary + "."
        assert list(rows) == ["versions", "TLS 1.2 ciphers", "TLS 1.3 suites", "groups",
                              "minimum RSA key", "minimum EC key", "signature algorithms",
                              "OpenSSL security level"]
        versions = tuple(VERSION_NAMES[v] for v in sorted(VERSION_NAMES)
                         if level.min_version <= v <= level.max_version)
        assert tuple(re.findall(r"TLS (1\.\d)", rows["versions"])) == versions, name
        assert _codes(rows["TLS 1.2 ciphers"]) == level.ciphers, name
        assert (TLS_1_2 in range(level.min_version, level.max_version + 1)) == bool(level.ciphers)
        assert _codes(rows["TLS 1.3 suites"]) == level.ciphersuites, name
        assert _codes(rows["groups"]) == level.groups, name
        assert rows["minimum RSA key"] == f"{level.min_rsa_bits} bits", name
        assert rows["minimum EC key"] == f"{level.min_ec_bits} bits", name
        assert _codes(rows["signature algorithms"]) == level.sigalgs, name
        assert rows["OpenSSL security level"] == str(level.openssl_seclevel), name


def test_policy_doc_documents_exactly_the_keys_the_schema_accepts() -> None:
    section = _doc_section("Keys")
    documented = set(re.findall(r"^\| `([a-z_.]+)` \|", section, re.M))
    assert documented == schema_keys(profile_only=True)


# -- what an application may change (ssa_engine.policy.enforce) -------------------------------
def policies(tmp_path: Path) -> tuple[Policy, Policy]:
    """The same profile twice: without and with app_overrides for everything."""
    body = "level: default\ntls:\n  max_version: '1.2'\n  ciphers: [ECDHE-RSA-AES128-GCM-SHA256]\n"
    write(tmp_path, strict="match:\n  name: strict\n" + body,
          relaxed="match:\n  name: relaxed\n" + body
          + "app_overrides: [min_version, max_version, ciphers]\n")
    config = load_config(tmp_path)
    return profile_policy(config, "strict"), profile_policy(config, "relaxed")


def test_a_lower_minimum_version_is_refused_unless_overridden(tmp_path: Path) -> None:
    strict, relaxed = policies(tmp_path)
    modern = replace(strict, level=LEVELS["modern"], min_version=None, max_version=None)
    with pytest.raises(PolicyViolation) as info:
        check_version(modern, "min", TLS_1_2)
    assert str(info.value) == ("TLS_VERSION_MIN TLS 1.2 is below the minimum TLS 1.3 set by the "
                               f"profile strict ({tmp_path}/profiles.d/strict.yaml)")
    check_version(modern, "min", TLS_1_3)  # the same: allowed
    relaxed_modern = replace(relaxed, level=LEVELS["modern"], min_version=None, max_version=None)
    check_version(relaxed_modern, "min", TLS_1_2)  # allowed by app_overrides
    settings = effective(relaxed_modern, AppRequests(min_version=TLS_1_2))
    assert settings.min_version == TLS_1_2


def test_a_higher_maximum_version_is_refused_unless_overridden(tmp_path: Path) -> None:
    strict, relaxed = policies(tmp_path)
    with pytest.raises(PolicyViolation, match=r"TLS_VERSION_MAX TLS 1\.3 is above the maximum "
                                              r"TLS 1\.2 set by the profile strict"):
        check_version(strict, "max", TLS_1_3)
    check_version(strict, "max", TLS_1_2)
    check_version(relaxed, "max", TLS_1_3)
    assert effective(relaxed, AppRequests(max_version=TLS_1_3)).max_version == TLS_1_3


def test_a_maximum_below_the_policy_minimum_is_refused_even_with_overrides(tmp_path: Path) -> None:
    strict, relaxed = policies(tmp_path)
    for policy in (strict, relaxed):
        raised = replace(policy, min_version=TLS_1_3, max_version=TLS_1_3)
        with pytest.raises(PolicyViolation, match="is below the minimum TLS 1.3"):
            check_version(raised, "max", TLS_1_2)


def test_raising_the_minimum_and_lowering_the_maximum_are_always_allowed(tmp_path: Path) -> None:
    strict, _ = policies(tmp_path)
    policy = replace(strict, max_version=None)
    check_version(policy, "min", TLS_1_3)
    check_version(policy, "max", TLS_1_2)
    settings = effective(policy, AppRequests(min_version=TLS_1_3))
    assert (settings.min_version, settings.max_version) == (TLS_1_3, TLS_1_3)


def test_enabling_a_cipher_outside_the_lists_is_refused_unless_overridden(tmp_path: Path) -> None:
    strict, relaxed = policies(tmp_path)
    outside = "ECDHE-ECDSA-AES256-GCM-SHA384"
    with pytest.raises(PolicyViolation) as info:
        check_cipher(strict, "enable", outside)
    assert str(info.value) == (f"TLS_ENABLE_CIPHER {outside}: not allowed by the profile strict "
                               f"({tmp_path}/profiles.d/strict.yaml)")
    assert check_cipher(relaxed, "enable", outside) == outside
    settings = effective(relaxed, AppRequests(enabled={outside}))
    assert settings.ciphers == ("ECDHE-RSA-AES128-GCM-SHA256", outside)
    # the IANA spelling is the same cipher, refused the same way
    with pytest.raises(PolicyViolation):
        check_cipher(strict, "enable", "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384")


def test_enabling_a_tls_1_3_suite_outside_the_list_is_refused_unless_overridden(
        tmp_path: Path) -> None:
    strict, relaxed = policies(tmp_path)
    suite = "TLS_AES_128_GCM_SHA256"  # not in the future level's suites
    future, future_relaxed = (replace(p, level=LEVELS["future"], max_version=None, ciphers=None)
                              for p in (strict, relaxed))
    with pytest.raises(PolicyViolation, match="TLS_ENABLE_CIPHER TLS_AES_128_GCM_SHA256"):
        check_cipher(future, "enable", suite)
    assert check_cipher(future_relaxed, "enable", suite) == suite
    assert suite in effective(future_relaxed, AppRequests(enabled={suite})).ciphersuites
    assert suite not in effective(future, AppRequests(enabled={suite})).ciphersuites


def test_disabling_and_re_enabling_within_the_lists_are_always_allowed(tmp_path: Path) -> None:
    strict, _ = policies(tmp_path)
    cipher = "ECDHE-RSA-AES128-GCM-SHA256"
    assert check_cipher(strict, "disable", cipher) == cipher
    assert effective(strict, AppRequests(disabled={cipher})).ciphers == ()
    assert check_cipher(strict, "enable", cipher) == cipher  # in the list: not a weakening
    assert effective(strict, AppRequests(enabled={cipher})).ciphers == (cipher,)


def test_meaningless_values_are_invalid_not_violations(tmp_path: Path) -> None:
    _, relaxed = policies(tmp_path)
    with pytest.raises(InvalidSetting, match="0x0301 is not a supported version"):
        check_version(relaxed, "min", 0x0301)  # TLS 1.0: never, overrides or not
    with pytest.raises(InvalidSetting, match="unknown cipher 'RC4-MD5'"):
        check_cipher(relaxed, "enable", "RC4-MD5")
    with pytest.raises(InvalidSetting, match="unknown level"):
        with_level(relaxed, "insecure")
