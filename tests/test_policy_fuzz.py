"""Any configuration text gives a policy or a documented error, never a crash.

ARCHITECTURE.md section 9: the profile loader is fuzzed like the control
channel's decoder. Two generators: random bytes and near-YAML text (mostly
garbage), and well-formed YAML trees built from the schema's own keys with
values of every type (mostly type errors, sometimes valid).
"""

from __future__ import annotations

import string
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ssa_engine.config import ConfigErrors, yamlio
from ssa_engine.policy.schema import Document, parse_document

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

_KEYS = ["match", "description", "level", "tls", "verify", "pins", "server", "app_overrides",
         "handshake_timeout", "audit", "min_version", "max_version", "ciphers", "ciphersuites",
         "groups", "trust_store", "verify_depth", "allow_app_trust", "allow_ip_names",
         "certificates", "client_auth", "client_ca", "path", "name", "user", "unit", "enabled",
         "max_size", "backups", "example.com", "*.example.com", "modern", "1.3", "bogus",
         "revocation", "checks", "mode", "ocsp_stapling", "ocsp", "crl", "cache", "hard"]

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["1.2", "1.3", "modern", "legacy", "X25519", "/usr/bin/wget", "sha256/",
                     "sha256/" + "A" * 43 + "=", "require", "10M", "", "\x00", "é", "*"]),
    st.text(max_size=20),
)
_trees = st.recursive(
    _scalars,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.sampled_from(_KEYS), children, max_size=5)),
    max_leaves=25,
)


def _check(text: str, profile: bool) -> None:
    try:
        tree = yamlio.load_text(text, "fuzz.yaml")
        doc = parse_document(tree, "fuzz.yaml", yamlio.locator(tree), profile=profile)
    except ConfigErrors as exc:
        assert exc.errors and all(str(e).startswith("fuzz.yaml") for e in exc.errors)
        return
    assert isinstance(doc, Document)


@FUZZ
@given(st.binary(max_size=300), st.booleans())
def test_random_bytes(data: bytes, profile: bool) -> None:
    _check(data.decode("utf-8", "replace"), profile)


@FUZZ
@given(st.text(alphabet=string.printable + "é\t", max_size=300), st.booleans())
@example("-_", False)  # ruamel.yaml's IndexError, found by this test
@example("._", True)  # and its ValueError
def test_near_yaml_text(text: str, profile: bool) -> None:
    _check(text, profile)


@FUZZ
@given(st.dictionaries(st.sampled_from(_KEYS), _trees, max_size=6), st.booleans())
def test_trees_with_schema_keys(tree: dict[str, object], profile: bool) -> None:
    # through YAML and back, as a file would be: the loader sees what an editor wrote
    import io

    from ruamel.yaml import YAML

    out = io.StringIO()
    yaml = YAML(typ="safe")
    yaml.allow_unicode = True
    try:
        yaml.dump(tree, out)
    except Exception:  # noqa: BLE001 - values YAML itself cannot write
        return
    _check(out.getvalue(), profile)


def test_a_whole_directory_of_garbage_loads_to_errors(tmp_path: Path) -> None:
    from ssa_engine.config import load_config

    (tmp_path / "profiles.d").mkdir()
    (tmp_path / "ssa.yaml").write_bytes(b"\xff\xfe garbage: [")
    (tmp_path / "profiles.d" / "a.yaml").write_text("- just\n- a list\n")
    (tmp_path / "profiles.d" / "b.yaml").write_text("match: {name: b}\nlevel: 3\n")
    try:
        load_config(tmp_path)
    except ConfigErrors as exc:
        files = sorted({Path(e.file).name for e in exc.errors})
        assert files == ["a.yaml", "b.yaml", "ssa.yaml"]
    else:
        raise AssertionError("garbage loaded")
