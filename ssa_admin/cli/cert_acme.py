"""``ssa-admin cert issue``: a certificate from an ACME CA into the store.

Thin: options are checked here, the work is in :mod:`ssa_admin.acme`. Each
step is shown as it happens (or as JSON events with ``--json``); failures
are the CA's problem documents in words (ssa_admin.acme.errors), exit 1.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from ssa_engine import paths

from .common import Json, Socket, StateDir, abort, is_terminal, warn
from .completion import complete_certificates

ServerOpt = Annotated[str, typer.Option(
    "--server", help="ACME directory URL, or letsencrypt / letsencrypt-staging.")]
CaBundle = Annotated[Path | None, typer.Option(
    "--ca-bundle", help="PEM file trusted for the ACME server's own TLS certificate "
    "(a private CA).", show_default=False)]
CHALLENGES = ("http-01", "tls-alpn-01", "dns-01")


class Reporter:
    """Progress of one command: lines on a terminal, JSON events on stderr with --json."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.steps: list[dict[str, str]] = []
        self._status: Any = None
        if not as_json and is_terminal():
            from rich.console import Console

            self.console: Any = Console()
            self._status = self.console.status("contacting the CA ...")
            self._status.start()

    def __call__(self, step: str, detail: str) -> None:
        self.steps.append({"step": step, "detail": detail})
        if self.as_json:
            return
        if self._status is not None:
            self.console.print(f"[green]✓[/green] {step}: {detail}")
            self._status.update(f"{step} ...")
        else:
            typer.echo(f"{step}: {detail}")

    def close(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


@contextlib.contextmanager
def acme_failures(reporter: Reporter | None = None) -> Iterator[None]:
    """ACME, store and file errors -> the message on stderr, exit 1, no traceback."""
    from ssa_admin.acme.errors import AcmeError
    from ssa_engine.store import LockTimeout, StoreError

    try:
        yield
    except LockTimeout as exc:
        _close(reporter)
        abort(f"{exc} (another ssa-admin is issuing or renewing it)")
    except (AcmeError, StoreError, ValueError) as exc:
        _close(reporter)
        abort(str(exc))
    except OSError as exc:
        _close(reporter)
        abort(f"{exc.filename or ''}: {exc.strerror}".lstrip(": "))
    finally:
        _close(reporter)


def _close(reporter: Reporter | None) -> None:
    if reporter is not None:
        reporter.close()


def make_responder(challenge: str, *, http_port: int, tls_port: int, webroot: Path | None,
                   dns_hook: str | None, engine_socket: Path | None,
                   dns_server: str | None = None, dns_zone: str | None = None,
                   dns_tsig_key: Path | None = None, dns_propagation_timeout: float = 60.0,
                   identifiers: list[str] | None = None) -> Any:
    """The responder for ``challenge``; ``identifiers`` lets an RFC 2136 responder check
    its key and the server's update policy for each name before the order is placed."""
    from ssa_admin.acme import responders

    if challenge == "http-01":
        return responders.Webroot(webroot) if webroot else responders.Http01Standalone(http_port)
    if challenge == "tls-alpn-01":
        from ssa_admin.acme.engine_alpn import engine_listens_on

        if engine_listens_on(engine_socket, tls_port):
            from ssa_admin.acme.engine_alpn import TlsAlpn01Engine

            return TlsAlpn01Engine(engine_socket, tls_port)
        return responders.TlsAlpn01Standalone(tls_port)
    if challenge == "dns-01":
        if dns_server and dns_hook:
            abort("--dns-server (RFC 2136) and --dns-hook both answer dns-01; pick one", 2)
        if dns_server:
            from ssa_admin.acme.rfc2136 import Dns01Rfc2136, load_tsig_key

            key = load_tsig_key(dns_tsig_key, warn) if dns_tsig_key else None
            return Dns01Rfc2136(dns_server, key, zone=dns_zone,
                                propagation_timeout=dns_propagation_timeout,
                                names=identifiers or (), warn=warn)
        if not dns_hook:
            abort("dns-01 needs --dns-server HOST[:PORT] with --dns-tsig-key FILE (RFC 2136 "
                  "dynamic update), or --dns-hook COMMAND (it adds and removes the TXT records)",
                  2)
        return responders.Dns01Hook(dns_hook, warn)
    abort(f"--challenge: one of {', '.join(CHALLENGES)}", 2)


def run_deploy_hooks(hooks: tuple[str, ...], name: str, version: Any) -> list[str]:
    """Run each hook with the new certificate's paths in its environment; return failures."""
    failed = []
    for hook in hooks:
        env = dict(os.environ, SSA_CERT_NAME=name, SSA_CERT_DIR=str(version.path),
                   SSA_CERT_PATH=str(version.cert_path), SSA_CHAIN_PATH=str(version.chain_path),
                   SSA_FULLCHAIN_PATH=str(version.fullchain_path),
                   SSA_KEY_PATH=str(version.key_path), SSA_DOMAINS=" ".join(version.domains))
        try:
            res = subprocess.run(hook, shell=True, env=env, capture_output=True, text=True,
                                 timeout=600)
        except subprocess.TimeoutExpired:
            failed.append(f"deploy hook {hook!r} timed out")
            continue
        if res.returncode != 0:
            failed.append(f"deploy hook {hook!r} failed (exit {res.returncode}): "
                          f"{res.stderr.strip()[:300]}")
    return failed


def issue(
    names: Annotated[list[str], typer.Argument(help="Names for the certificate: host names, "
                                               "*.wildcards (dns-01), IP addresses.",
                                               show_default=False)],
    server: ServerOpt = "letsencrypt",
    challenge: Annotated[str, typer.Option("--challenge", help="http-01, tls-alpn-01 or dns-01."
                                           )] = "http-01",
    http_port: Annotated[int, typer.Option("--http-port", help="Port of the http-01 "
                                           "standalone responder.")] = 80,
    tls_port: Annotated[int, typer.Option("--tls-port", help="Port of tls-alpn-01 (a running "
                                          "engine's listener there answers it).")] = 443,
    webroot: Annotated[Path | None, typer.Option("--webroot", help="Answer http-01 through a "
                                                 "web server's document root.",
                                                 show_default=False)] = None,
    dns_hook: Annotated[str | None, typer.Option("--dns-hook", help="Command that adds/removes "
                                                 "the dns-01 TXT record.",
                                                 show_default=False)] = None,
    dns_server: Annotated[str | None, typer.Option(
        "--dns-server", help="dns-01 by RFC 2136 dynamic update: the zone's primary DNS "
        "server, HOST[:PORT].", show_default=False)] = None,
    dns_zone: Annotated[str | None, typer.Option(
        "--dns-zone", help="The zone to update (default: found by SOA lookups on "
        "--dns-server).", show_default=False)] = None,
    dns_tsig_key: Annotated[Path | None, typer.Option(
        "--dns-tsig-key", help='TSIG key file: BIND\'s key "NAME" { algorithm ...; secret '
        '"..."; }; (tsig-keygen), Knot\'s (keymgr -t) or NAME:ALGORITHM:SECRET.',
        show_default=False)] = None,
    dns_propagation_timeout: Annotated[float, typer.Option(
        "--dns-propagation-timeout", help="Seconds to wait until every authoritative "
        "server answers the new TXT records (polled, 0: do not wait).")] = 60.0,
    cert_name: Annotated[str | None, typer.Option("--cert-name", help="Store name (default: "
                                                  "the first name).", show_default=False,
                                                  autocompletion=complete_certificates)] = None,
    email: Annotated[str | None, typer.Option("--email", help="Contact for the account.",
                                              show_default=False)] = None,
    agree_tos: Annotated[bool, typer.Option("--agree-tos", help="Accept the CA's terms of "
                                            "service.")] = False,
    key_type: Annotated[str, typer.Option("--key-type", help="ec-p256, ec-p384, rsa-2048, "
                                          "rsa-3072 or rsa-4096.")] = "ec-p256",
    profile: Annotated[str | None, typer.Option("--profile", help="ACME profile offered by the "
                                                "CA.", show_default=False)] = None,
    preferred_chain: Annotated[str | None, typer.Option(
        "--preferred-chain", help="Issuer CN of the chain's top certificate to prefer.",
        show_default=False)] = None,
    eab_kid: Annotated[str | None, typer.Option("--eab-kid", help="External Account Binding "
                                                "key id.", show_default=False)] = None,
    eab_hmac_key: Annotated[str | None, typer.Option(
        "--eab-hmac-key", help="External Account Binding HMAC key (base64url).",
        show_default=False)] = None,
    deploy_hook: Annotated[list[str] | None, typer.Option(
        "--deploy-hook", help="Command run after each issuance and renewal (repeat).",
        show_default=False)] = None,
    ca_bundle: CaBundle = None,
    state_dir: StateDir = None,
    socket: Socket = None,
    as_json: Json = False,
) -> None:
    """Obtain a certificate from an ACME CA (Let's Encrypt by default) into the store."""
    from ssa_admin.acme.accounts import AccountStore, connect
    from ssa_admin.acme.client import resolve_server
    from ssa_admin.acme.order import KEY_TYPES, IssueRequest, normalize_identifiers
    from ssa_admin.acme.order import issue as run_issue
    from ssa_admin.engine import reload_engine
    from ssa_engine.store import Store, validate_name

    if challenge not in CHALLENGES:
        abort(f"--challenge: one of {', '.join(CHALLENGES)}", 2)
    if key_type not in KEY_TYPES:
        abort(f"--key-type: one of {', '.join(KEY_TYPES)}", 2)
    if webroot is not None and challenge != "http-01":
        abort("--webroot answers http-01 only", 2)
    if (dns_server or dns_zone or dns_tsig_key) and challenge != "dns-01":
        abort("--dns-server, --dns-zone and --dns-tsig-key answer dns-01 only "
              "(add --challenge dns-01)", 2)
    if (dns_zone or dns_tsig_key) and not dns_server:
        abort("--dns-zone and --dns-tsig-key go with --dns-server HOST[:PORT]", 2)
    if challenge == "dns-01" and bool(dns_server) == bool(dns_hook):
        abort("--dns-server (RFC 2136) and --dns-hook both answer dns-01; pick one" if dns_hook
              else "dns-01 needs --dns-server HOST[:PORT] with --dns-tsig-key FILE (RFC 2136 "
              "dynamic update), or --dns-hook COMMAND (it adds and removes the TXT records)", 2)
    if dns_propagation_timeout < 0:
        abort("--dns-propagation-timeout: seconds, 0 or more", 2)
    if dns_server:
        from ssa_admin.acme.errors import ChallengeError
        from ssa_admin.acme.rfc2136 import load_tsig_key, parse_server

        try:
            parse_server(dns_server)
        except ChallengeError as exc:
            abort(str(exc), 2)
        if dns_tsig_key is not None:
            try:
                load_tsig_key(dns_tsig_key)  # a bad key file stops us before the CA is asked
            except ChallengeError as exc:
                abort(str(exc))
    try:
        identifiers = normalize_identifiers(names)
        name = validate_name(cert_name or identifiers[0].removeprefix("*."))
        server_url = resolve_server(server)
    except ValueError as exc:
        abort(str(exc), 2)
    if any(i.startswith("*.") for i in identifiers) and challenge != "dns-01":
        abort("wildcard names can only be validated with --challenge dns-01", 2)
    if ca_bundle is not None and not ca_bundle.is_file():
        abort(f"--ca-bundle {ca_bundle}: no such file")
    state = state_dir or paths.state_dir()
    reporter = Reporter(as_json)
    with acme_failures(reporter):
        acme, account = connect(server_url, AccountStore(state),
                                ca_bundle=str(ca_bundle) if ca_bundle else None, email=email,
                                agree_tos=agree_tos, eab_kid=eab_kid, eab_hmac_key=eab_hmac_key)
        with acme:
            reporter("account", account.uri)
            responder = make_responder(challenge, http_port=http_port, tls_port=tls_port,
                                       webroot=webroot, dns_hook=dns_hook, engine_socket=socket,
                                       dns_server=dns_server, dns_zone=dns_zone,
                                       dns_tsig_key=dns_tsig_key,
                                       dns_propagation_timeout=dns_propagation_timeout,
                                       identifiers=identifiers)
            request = IssueRequest(identifiers, name, key_type, profile, preferred_chain,
                                   deploy_hooks=tuple(deploy_hook or ()),
                                   ca_bundle=str(ca_bundle.resolve()) if ca_bundle else None)
            version = run_issue(acme, account, responder, request, Store(state), reporter)
    hook_failures = run_deploy_hooks(tuple(deploy_hook or ()), name, version)
    reload = reload_engine(socket)
    doc = {"name": name, "domains": list(version.domains), "version": version.number,
           "not_after": version.meta.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
           "key_type": version.meta.key_type, "issuer": version.meta.issuer,
           "path": str(version.path.parent.parent), "account": account.uri,
           "steps": reporter.steps, "engine_reloaded": reload.reloaded,
           "deploy_hook_failures": hook_failures}
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
    else:
        typer.echo(f"Issued {name} (version {version.number}, {version.meta.key_type}, "
                   f"{', '.join(version.domains)}), valid until {doc['not_after']}.")
        typer.echo(f"Certificate chain: {version.path.parent.parent / 'current' / 'fullchain.pem'}")
        if not reload.running:
            warn(reload.message)
    for failure in hook_failures:
        warn(failure)
    if hook_failures:
        raise typer.Exit(code=1)
