"""The one module that touches ruamel.yaml.

Loading keeps what the administrator wrote (round-trip mode: comments, key
order, quoting) so that ``ssa-admin`` can edit a file and save it with only
the edited value changed, and keeps line and column numbers so that every
configuration error can say where it is.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode

from ..policy.schema import ConfigError, ConfigErrors, Key

#: Security parameter: a configuration file larger than this is refused.
MAX_FILE_SIZE = 256 * 1024


#: (mapping, sequence, offset) indentation, as ``YAML.indent`` takes them: the
#: layout of the bundled profiles (two spaces; list dashes two in under their key)
DEFAULT_LAYOUT = (2, 4, 2)
#: a line that opens a block: ``key:`` or ``- key:`` with nothing after but a comment
_OPENS_BLOCK = re.compile(r"(- +)?[^\s#-][^#]*?:\s*(#.*)?$")


def _yaml(layout: tuple[int, int, int] = DEFAULT_LAYOUT) -> YAML:
    y = YAML(typ="rt")
    y.preserve_quotes = True
    mapping, sequence, offset = layout
    y.indent(mapping=mapping, sequence=sequence, offset=offset)
    y.width = 100
    return y


def layout_of(text: str) -> tuple[int, int, int]:
    """The indentation ``text`` uses most, so that a file saved after an edit
    keeps the administrator's layout (ruamel.yaml keeps comments and order, but
    writes one indentation for the whole file)."""
    maps: Counter[int] = Counter()
    dashes: Counter[int] = Counter()
    opened: int | None = None  # the column of the key that the previous line opened
    for raw in text.splitlines():
        stripped = raw.lstrip(" ")
        if not stripped or stripped.startswith("#") or raw.startswith("\t"):
            continue
        indent = len(raw) - len(stripped)
        if opened is not None and indent >= opened:
            if stripped == "-" or stripped.startswith("- "):
                dashes[indent - opened] += 1
            elif indent > opened:
                maps[indent - opened] += 1
        found = _OPENS_BLOCK.match(stripped)
        opened = indent + len(found.group(1) or "") if found else None
    mapping = maps.most_common(1)[0][0] if maps else DEFAULT_LAYOUT[0]
    offset = dashes.most_common(1)[0][0] if dashes else DEFAULT_LAYOUT[2]
    if not 1 < mapping <= 8 or not 0 <= offset <= 8:
        return DEFAULT_LAYOUT
    return (mapping, offset + 2, offset)


def _error(file: str, message: str, line: int | None = None, col: int | None = None) -> ConfigErrors:
    return ConfigErrors([ConfigError(file, line, col, (), message)])


def load_text(text: str, file: str) -> Any:
    """Parse ``text``; raise :class:`ConfigErrors` naming the line of a syntax error."""
    if len(text.encode("utf-8", "replace")) > MAX_FILE_SIZE:
        raise _error(file, f"larger than {MAX_FILE_SIZE // 1024} KiB; is this the right file?")
    try:
        tree = _yaml().load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(str(p) for p in (exc.problem, exc.context) if p) or "invalid YAML"
        if mark is None:
            raise _error(file, f"invalid YAML: {problem}") from None
        raise _error(file, f"invalid YAML: {problem}", mark.line + 1, mark.column + 1) from None
    except YAMLError as exc:
        raise _error(file, f"invalid YAML: {exc}") from None
    except (ValueError, IndexError, TypeError, OverflowError) as exc:
        # ruamel.yaml's own bugs: some plain scalars (``-_``, ``._``) resolve as
        # numbers that its constructor then fails to build
        where = _unbuildable_number(text)
        if where is None:
            raise _error(file, f"invalid YAML: the YAML library could not read this file "
                         f"({type(exc).__name__}: {exc})") from None
        line, col, value = where
        raise _error(file, f"invalid YAML: {value!r} looks like a number but is none; quote "
                     "it if it is meant as text", line, col) from None
    _refuse_aliases(tree, file)
    if isinstance(tree, CommentedMap):
        tree._ssa_layout = layout_of(text)  # type: ignore[attr-defined]  # read by dump()
    return tree


def _unbuildable_number(text: str) -> tuple[int, int, str] | None:
    """(line, column, value) of the first plain scalar resolved as a number
    without a digit in it, found on the composed nodes (nothing built)."""
    try:
        root = YAML(typ="rt").compose(text)
    except YAMLError:
        return None
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        if isinstance(node, ScalarNode):
            if str(node.tag).endswith((":int", ":float")) and not any(
                    c.isdigit() for c in str(node.value)):
                return node.start_mark.line + 1, node.start_mark.column + 1, str(node.value)
        elif isinstance(node, MappingNode):
            stack.extend(v for pair in reversed(node.value) for v in reversed(pair))
        elif isinstance(node, SequenceNode):
            stack.extend(reversed(node.value))
    return None


def load_file(path: Path) -> Any:
    """Read and parse ``path``; unreadable or not UTF-8 is a :class:`ConfigErrors` too."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_SIZE + 1)
    except OSError as exc:
        raise _error(str(path), f"cannot read: {exc.strerror}") from None
    if len(data) > MAX_FILE_SIZE:
        raise _error(str(path), f"larger than {MAX_FILE_SIZE // 1024} KiB; is this the right file?")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise _error(str(path), f"not UTF-8 text (byte {exc.start})", line, col) from None
    return load_text(text, str(path))


def _refuse_aliases(tree: Any, file: str) -> None:
    # An alias makes the same node appear twice; walking "billion laughs"
    # documents would take forever, and a policy has no use for them.
    seen: set[int] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (CommentedMap, CommentedSeq)):
            if id(node) in seen:
                line, col = node.lc.line, node.lc.col
                raise _error(file, "YAML aliases (*name) are not supported in policy files",
                             line + 1 if line is not None else None,
                             col + 1 if col is not None else None)
            seen.add(id(node))
            stack.extend(node.values() if isinstance(node, CommentedMap) else node)


def locator(tree: Any) -> Any:
    """A :data:`ssa_engine.policy.schema.Locator` for ``tree``."""

    def locate(keys: tuple[Key, ...], at_key: bool) -> tuple[int, int] | None:
        node = tree
        best: tuple[int, int] | None = (1, 1)
        for i, key in enumerate(keys):
            last = i == len(keys) - 1
            try:
                if isinstance(node, CommentedMap) and key in node:
                    pos = node.lc.key(key) if (last and at_key) else node.lc.value(key)
                elif isinstance(node, CommentedSeq) and isinstance(key, int) and key < len(node):
                    pos = node.lc.item(key)
                else:
                    return best
            except (KeyError, IndexError, TypeError):
                return best
            best = (pos[0] + 1, pos[1] + 1)
            node = node[key]
        return best

    return locate


def dump(tree: Any) -> str:
    """YAML text of ``tree``, in the layout of the text it was loaded from."""
    out = io.StringIO()
    _yaml(getattr(tree, "_ssa_layout", DEFAULT_LAYOUT)).dump(tree, out)
    return out.getvalue()


def new_map() -> CommentedMap:
    return CommentedMap()


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``text``: a killed process leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
