"""Teach the stdlib ``socket`` module the SSA (the paper's "Python support")."""

from __future__ import annotations

import socket as _socket
from typing import Any

from ..protocol import options as opt
from . import constants
from .tlssocket import TLSSocket

_original_socket: type[_socket.socket] | None = None


class _SocketMeta(type):
    def __instancecheck__(cls, obj: object) -> bool:
        assert _original_socket is not None
        return isinstance(obj, _original_socket)

    def __subclasscheck__(cls, sub: type) -> bool:
        assert _original_socket is not None
        return issubclass(sub, _original_socket)


def install() -> None:
    """Add the SSA constants to ``socket`` and route IPPROTO_TLS to TLSSocket.

    After this, ``socket.socket(AF_INET, SOCK_STREAM, IPPROTO_TLS)`` returns a
    :class:`TLSSocket`; every other socket is the stdlib's, unchanged.
    Calling it twice is harmless.
    """
    global _original_socket
    for name in constants.__all__:
        if not hasattr(_socket, name):
            setattr(_socket, name, getattr(constants, name))
    if _original_socket is not None:
        return
    original = _socket.socket
    _original_socket = original

    class socket(original, metaclass=_SocketMeta):  # type: ignore[misc,valid-type]
        __slots__ = ()

        def __new__(cls, family: int = -1, type: int = -1,  # noqa: A002
                    proto: int = -1, fileno: int | None = None) -> Any:
            if cls is not socket:  # a subclass defined after install(): as usual
                return original.__new__(cls, family, type, proto, fileno)
            if proto == opt.IPPROTO_TLS:
                return TLSSocket(_socket.AF_INET if family == -1 else family,
                                 _socket.SOCK_STREAM if type == -1 else type, proto, fileno)
            return original(family, type, proto, fileno)

    socket.__doc__ = original.__doc__
    socket.__module__ = original.__module__
    socket.__qualname__ = original.__qualname__
    _socket.socket = socket  # type: ignore[misc]


def uninstall() -> None:
    """Undo :func:`install` (the constants stay)."""
    global _original_socket
    if _original_socket is not None:
        _socket.socket = _original_socket  # type: ignore[misc]
        _original_socket = None
