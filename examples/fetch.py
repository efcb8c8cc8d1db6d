"""fetch: download an https:// URL to stdout or a file, TLS done by the ssa engine.

    python examples/fetch.py https://example.com/ [-o FILE] [--cafile CA.pem]

This is the paper's wget example in miniature. Compared with the same tool
on the stdlib ``ssl`` module, the port changed the socket's protocol and
dropped the context set-up: the engine verifies the server under the
administrator's policy, whatever the program does.
"""

from __future__ import annotations

import argparse
import socket
import sys
from urllib.parse import urlsplit

import ssa_engine


def fetch(url: str, out, cafile: str | None = None) -> int:  # type: ignore[no-untyped-def]
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise SystemExit(f"fetch: only https:// URLs, not {url!r}")
    port = parts.port or 443
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, ssa_engine.IPPROTO_TLS)
    with sock:
        if cafile:  # optional: trust one more CA for this program (policy permitting)
            sock.setsockopt(ssa_engine.IPPROTO_TLS, ssa_engine.TLS_TRUSTED_PEER_CERTIFICATES,
                            cafile)
        sock.connect((parts.hostname, port))
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {parts.hostname}\r\n"
                     "Connection: close\r\n\r\n".encode())
        response = sock.makefile("rb")
        status = response.readline().decode("latin-1").strip()
        while response.readline() not in (b"\r\n", b"\n", b""):
            pass  # headers
        while chunk := response.read(65536):
            out.write(chunk)
        response.close()
    print(status, file=sys.stderr)
    return 0 if " 200 " in f"{status} " else 1


def main() -> int:
    ssa_engine.install()  # socket.socket(..., IPPROTO_TLS) now means a TLS socket
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("-o", "--output", help="write the body here instead of stdout")
    parser.add_argument("--cafile", help="extra CA certificate (PEM) to trust")
    args = parser.parse_args()
    try:
        if args.output:
            with open(args.output, "wb") as out:
                return fetch(args.url, out, args.cafile)
        return fetch(args.url, sys.stdout.buffer, args.cafile)
    except OSError as exc:
        print(f"fetch: {exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
