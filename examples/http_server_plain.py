"""http_server_plain: serve a directory over plain HTTP (https_server.py before the port).

Kept for the porting diff in the README.
"""

from __future__ import annotations

import argparse
import functools
import socket
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer


class FileServer(ThreadingHTTPServer):
    """The stdlib's threading HTTP server, on IPv4 or IPv6 as the address asks."""

    def __init__(self, address: tuple[str, int], handler) -> None:  # type: ignore[no-untyped-def]
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, handler)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="", help="address to listen on (default: all)")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--directory", default=".", help="directory to serve")
    args = parser.parse_args()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=args.directory)
    try:
        httpd = FileServer((args.bind, args.port), handler)
    except OSError as exc:
        print(f"{parser.prog}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    with httpd:
        host, port = httpd.socket.getsockname()[:2]
        print(f"Serving {args.directory} on {host} port {port} ...", flush=True)
        try:
            httpd.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
