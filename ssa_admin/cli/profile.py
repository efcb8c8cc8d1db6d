"""``ssa-admin profile``: per-application profiles (ARCHITECTURE.md section 6).

Thin commands over :mod:`ssa_admin.profiles`. Edits are round trips (the
administrator's comments and layout survive), saved only when the whole
configuration still loads, and followed by a reload of the running engine
(a stopped engine is a warning: it reads the files when it starts).
"""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .common import (
    ConfigDir,
    Json,
    Socket,
    abort,
    config_dir,
    failures,
    is_terminal,
    pairs,
    print_config_errors,
    print_json,
    report_reload,
    table,
    usage_error,
    warn,
)
from .completion import (
    complete_applied_profiles,
    complete_bundled_profiles,
    complete_levels,
    complete_profiles,
)

if TYPE_CHECKING:
    from ssa_admin.effective import Effective

app = typer.Typer(
    name="profile",
    help="Per-application profiles: list, show, apply, remove, new, validate, diff, explain.",
    no_args_is_help=True,
)

Force = Annotated[bool, typer.Option("--force", help="Replace an applied profile that was "
                                     "changed since it was applied.")]


def _match_text(match: dict[str, list[str]]) -> str:
    return " ".join(f"{kind}={','.join(values)}" for kind, values in match.items()) or "-"


# -- showing a policy (shared with `policy show`) ------------------------------------------
_TRUST_DEFAULT = "none: OpenSSL's default (SSL_CERT_FILE, SSL_CERT_DIR)"
_COMMENT_COLUMN = 36


def _commented(doc: dict[str, Any], origins: dict[str, str], prefix: str = "") -> Any:
    """``doc`` as a YAML mapping whose lines say (in a comment) where each value comes from."""
    from ssa_engine.config import yamlio

    out = yamlio.new_map()
    for key, value in doc.items():
        path = f"{prefix}{key}"
        out[key] = (_commented(value, origins, path + ".")
                    if isinstance(value, dict) and value and key != "match" else value)
        note = origins.get(path)
        if path == "verify.trust_store" and value is None:
            note = f"{note}; {_TRUST_DEFAULT}" if note else _TRUST_DEFAULT
        elif path == "audit_log.path" and value is None:
            note = "none: no audit log (audit.path in ssa.yaml writes one)"
        if note:
            out.yaml_add_eol_comment(note, key, column=_COMMENT_COLUMN)
    return out


def show_effective(effective: Effective, title: str, as_json: bool) -> None:
    """Print effective settings as YAML with their origins, or as JSON."""
    from ssa_engine.config import yamlio

    doc = effective.to_json()
    if as_json:
        print_json(doc)
        return
    about = {k: v for k, v in doc.items() if k in ("name", "state", "file", "description",
                                                    "match") and v is not None}
    tree = _commented({**about, **doc["settings"], **({"audit_log": doc["audit_log"]}
                                                      if "audit_log" in doc else {})},
                      doc["origins"])
    layers = "ssa.yaml, then the profile" if effective.source else "ssa.yaml"
    tree.yaml_set_start_comment(
        f"{title}\n"
        f"Built-in defaults, overlaid by {layers}.\n"
        "Each comment says which of them decided the value (built-in: the defaults\n"
        "of ssa-engine serve, which its --level option may change).")
    text = yamlio.dump(tree)
    if is_terminal():
        from rich.console import Console
        from rich.syntax import Syntax

        Console().print(Syntax(text, "yaml", background_color="default", word_wrap=True))
    else:
        typer.echo(text, nl=False)


# -- commands ------------------------------------------------------------------------------
@app.command("list")
def list_(config: ConfigDir = None, as_json: Json = False) -> None:
    """List bundled and applied profiles: state, level, match rules, description."""
    from ssa_admin.effective import profile_list

    with failures():
        rows = profile_list(config_dir(config))
    if as_json:
        print_json(rows)
        return
    if not rows:
        typer.echo("No profiles: none bundled, none applied.")
        return
    table(None, ["name", "state", "level", "match", "description"],
          [[r["name"], r["state"], r["level"] or "-",
            _match_text(r["match"]) if not r["error"] else "-",
            (r["description"] or "") if not r["error"] else f"error: {r['error']}"] for r in rows])


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Profile name (applied, else bundled).",
                                        show_default=False, autocompletion=complete_profiles)],
    bundled: Annotated[bool, typer.Option("--bundled", help="Show the bundled profile even "
                                          "when one of that name is applied.")] = False,
    config: ConfigDir = None,
    as_json: Json = False,
) -> None:
    """Show the effective settings of a profile: the default policy plus the profile."""
    from ssa_admin.effective import effective_profile

    with failures():
        eff = effective_profile(config_dir(config), name, bundled=bundled)
    assert eff.source is not None
    state = "bundled, not applied" if eff.source.bundled else "applied"
    if eff.source.bundled and not bundled:
        state = "bundled, not applied (ssa-admin profile apply " + name + ")"
    show_effective(eff, f"profile {name} ({state}: {eff.source.path})", as_json)


@app.command("apply")
def apply(
    profile: Annotated[str, typer.Argument(metavar="NAME|FILE", help="A bundled profile's name, "
                                           "or a profile file of your own.", show_default=False,
                                           autocompletion=complete_bundled_profiles)],
    path: Annotated[str | None, typer.Option("--path", help="The program's executable on this "
                                             "machine (instead of looking its name up in "
                                             "PATH).", show_default=False)] = None,
    name_only: Annotated[bool, typer.Option("--name-only", help="Match the program by name only; "
                                            "do not look up its path.")] = False,
    force: Force = False,
    config: ConfigDir = None,
    socket: Socket = None,
) -> None:
    """Install a profile into profiles.d/, naming the program's path here, and reload."""
    from ssa_admin.engine import reload_engine
    from ssa_admin.profiles import apply_profile

    if path is not None and name_only:
        usage_error("--path and --name-only exclude each other")
    with failures(edit=True):
        done = apply_profile(config_dir(config), profile, path=path, name_only=name_only,
                             force=force)
    origin = f"bundled {done.source.path}" if done.source.bundled else str(done.source.path)
    if done.changed:
        verb = "replaced" if done.replaced else "applied"
        typer.echo(f"{verb} {done.name}: {done.file} (from {origin})")
    else:
        typer.echo(f"{done.name}: {done.file} is already what apply writes; nothing to do")
    if done.paths:
        how = "named by --path" if path is not None else "found in PATH"
        typer.echo(f"match.path: {', '.join(done.paths)} ({how})")
    for note in done.notes:
        typer.echo(f"note: {note}")
    if done.changed:
        report_reload(reload_engine(socket), after_edit=True)


@app.command("remove")
def remove(
    name: Annotated[str, typer.Argument(help="Applied profile.", show_default=False,
                                        autocompletion=complete_applied_profiles)],
    config: ConfigDir = None,
    socket: Socket = None,
) -> None:
    """Remove an applied profile from profiles.d/ and reload."""
    from ssa_admin.engine import reload_engine
    from ssa_admin.profiles import remove_profile

    with failures(edit=True):
        path = remove_profile(config_dir(config), name)
    typer.echo(f"removed {name}: {path}")
    report_reload(reload_engine(socket), after_edit=True)


@app.command("new")
def new(
    name: Annotated[str, typer.Argument(help="Name of the new profile (its file name).",
                                        show_default=False)],
    path: Annotated[list[str] | None, typer.Option("--path", help="Match this executable "
                                                   "(exact or glob; repeatable).",
                                                   show_default=False)] = None,
    program: Annotated[list[str] | None, typer.Option("--name", help="Match this program name "
                                                      "(repeatable).", show_default=False)] = None,
    user: Annotated[list[str] | None, typer.Option("--user", help="Match this user (name or uid; "
                                                   "repeatable).", show_default=False)] = None,
    unit: Annotated[list[str] | None, typer.Option("--unit", help="Match this systemd unit "
                                                   "(repeatable).", show_default=False)] = None,
    level: Annotated[str | None, typer.Option("--level", help="Security level (default: "
                                              "ssa.yaml's).", show_default=False,
                                              autocompletion=complete_levels)] = None,
    config: ConfigDir = None,
    socket: Socket = None,
) -> None:
    """Create a commented skeleton profile in profiles.d/ and reload."""
    from ssa_admin.engine import reload_engine
    from ssa_admin.profiles import new_profile
    from ssa_engine.policy.levels import LEVELS

    if not (path or program or user or unit):
        usage_error("say which programs it governs: --path, --name, --user or --unit")
    if level is not None and level not in LEVELS:
        raise typer.BadParameter(f"{level!r}; one of {', '.join(LEVELS)}", param_hint="--level")
    paths_ = [p if p.startswith("/") else os.path.abspath(p) for p in path or ()]
    for p in paths_:
        if not set("*?[") & set(p) and not os.path.exists(p):
            warn(f"{p}: no such file on this machine (yet)")
    with failures(edit=True):
        dest = new_profile(config_dir(config), name, level=level,
                           match={"path": paths_, "name": program or [], "user": user or [],
                                  "unit": unit or []})
    typer.echo(f"created {name}: {dest}")
    report_reload(reload_engine(socket), after_edit=True)


@app.command("validate")
def validate(
    files: Annotated[list[Path] | None, typer.Argument(help="Files to check alone (ssa.yaml as "
                                                       "the default policy, any other as a "
                                                       "profile); none: the whole configuration.",
                                                       show_default=False)] = None,
    config: ConfigDir = None,
    as_json: Json = False,
) -> None:
    """Check configuration files; print every error as FILE:LINE:COL: KEYS: MESSAGE."""
    from ssa_admin.effective import validate_files
    from ssa_engine.config import ConfigErrors, load_config

    directory = config_dir(config)
    checked: list[str]
    if files:
        errors = validate_files(directory, files)
        checked = [str(f) for f in files]
    else:
        try:
            loaded = load_config(directory)
        except ConfigErrors as exc:
            errors, checked = exc.errors, [str(directory)]
        else:
            errors, checked = [], [str(f) for f in loaded.files]
    if as_json:
        print_json({"ok": not errors, "checked": checked,
                    "errors": [{"file": e.file, "line": e.line, "column": e.column,
                                "keys": list(e.keys), "message": e.message, "text": str(e)}
                               for e in errors]})
    elif errors:
        print_config_errors(errors, err=False)
    if errors:
        if not as_json:
            n = len(errors)
            abort(f"{n} error{'s' if n != 1 else ''}")
        raise typer.Exit(code=1)
    if not as_json:
        what = ", ".join(checked) if files or checked else f"{directory} (no files: built-in defaults)"
        typer.echo(f"valid: {what}")


@app.command("diff")
def diff(
    name: Annotated[str, typer.Argument(help="Applied profile that is also bundled.",
                                        show_default=False, autocompletion=complete_applied_profiles)],
    config: ConfigDir = None,
) -> None:
    """Show how an applied profile differs from the bundled one (exit 1 when it does).

    The bundled side is taken as `apply` writes it here (with the applied file's
    match.path), so only real changes show. Exit 2 when there is nothing to compare.
    """
    from ssa_admin.profiles import ProfileError, diff_profile

    try:
        text, _, applied = diff_profile(config_dir(config), name)
    except ProfileError as exc:
        typer.echo(f"ssa-admin: {exc}", err=True)
        raise typer.Exit(code=2) from None
    if not text:
        typer.echo(f"{name}: {applied} is the bundled profile as applied", err=True)
        return
    if is_terminal():
        from rich.console import Console
        from rich.syntax import Syntax

        Console().print(Syntax(text, "diff", background_color="default", word_wrap=True))
    else:
        typer.echo(text, nl=False)
    raise typer.Exit(code=1)


def _uid(user: str) -> int:
    if user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise typer.BadParameter(f"no user named {user!r}", param_hint="--user") from None


@app.command("explain")
def explain(
    target: Annotated[str, typer.Argument(metavar="PID|PATH", help="A running process, or an "
                                          "executable (a bare name is looked up in PATH).",
                                          show_default=False)],
    user: Annotated[str | None, typer.Option("--user", help="For a PATH: as if this user ran "
                                             "it (default: you).", show_default=False)] = None,
    unit: Annotated[str | None, typer.Option("--unit", help="For a PATH: as if it ran in this "
                                             "systemd unit.", show_default=False)] = None,
    config: ConfigDir = None,
    as_json: Json = False,
) -> None:
    """Which profile governs a process or a program, and why."""
    from ssa_admin.effective import explain as explain_
    from ssa_engine.config import load_config
    from ssa_engine.config.program import program_for_path, program_for_pid

    if target.isdigit():
        if user is not None or unit is not None:
            usage_error("--user and --unit describe a PATH; a PID has its own")
        try:
            program = program_for_pid(int(target))
        except ProcessLookupError:
            abort(f"no process {target}")
    else:
        exe = target if "/" in target else shutil.which(target)
        if exe is None:
            abort(f"{target}: not found in PATH (give its path)")
        if not os.path.exists(exe):
            warn(f"{exe}: no such file; explaining it as if it existed")
        program = program_for_path(exe, _uid(user) if user is not None else None, unit)
    with failures():
        doc = explain_(load_config(config_dir(config)), program)
    if as_json:
        print_json(doc)
        return
    p = doc["program"]
    who = f"{p['user'] or '?'} (uid {p['uid']})" if p["uid"] is not None else "?"
    items = [("program", p["exe"] or "?")]
    if p["pid"] is not None:
        items.append(("pid", str(p["pid"])))
    items += [("name", p["comm"] or "-"), ("user", who), ("unit", p["unit"] or "-")]
    if doc["profile"]:
        items.append(("profile", f"{doc['profile']} ({doc['file']})"))
    else:
        items.append(("profile", "none: the default policy (ssa.yaml) applies"))
    items += [("why", doc["reason"]), ("level", doc["level"])]
    if doc["tied"]:
        items.append(("tied", f"{', '.join(doc['tied'])} match as specifically; "
                      f"{doc['profile']} wins by name order"))
    pairs(items)
    if doc["candidates"]:
        typer.echo("")
        table("profiles that match", ["profile", "result", "matched by", "why it lost"],
              [[c["name"], c["result"], c["matched_by"], c["why_lost"] or ""]
               for c in doc["candidates"]])
    if doc["not_matching"]:
        typer.echo(f"\nnot matching: {', '.join(doc['not_matching'])}")
