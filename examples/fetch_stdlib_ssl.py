"""The same tool on the stdlib ssl module, kept for the porting diff in the README."""

from __future__ import annotations

import argparse
import socket
import ssl
import sys
from urllib.parse import urlsplit


def fetch(url: str, out, cafile: str | None = None) -> int:  # type: ignore[no-untyped-def]
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise SystemExit(f"fetch: only https:// URLs, not {url!r}")
    port = parts.port or 443
    context = ssl.create_default_context(cafile=cafile)
    raw = socket.create_connection((parts.hostname, port))
    sock = context.wrap_socket(raw, server_hostname=parts.hostname)
    with sock:
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
    parser = argparse.ArgumentParser(description="download an https:// URL")
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
