"""https_server: serve a directory over HTTPS, TLS done by the ssa engine.

    python examples/https_server.py [--bind ADDR] [--port N] [--directory DIR]
                                    [--cert CHAIN.pem --key KEY.pem]

The stdlib's ``http.server`` (SimpleHTTPRequestHandler on a
ThreadingHTTPServer) made TLS by changing the listening socket's protocol to
IPPROTO_TLS: the engine runs every handshake, and ``accept()`` hands the
server only connections whose handshake succeeded. Without --cert/--key the
engine serves the administrator's certificates (``ssa-engine serve
--certificate NAME``). Compare with examples/http_server_plain.py.
"""

from __future__ import annotations

import argparse
import functools
import socket
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import ssa_engine


class FileServer(ThreadingHTTPServer):
    """The stdlib's threading HTTP server, on IPv4 or IPv6 as the address asks."""

    def __init__(self, address: tuple[str, int], handler, cert=None, key=None) -> None:  # type: ignore[no-untyped-def]
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.cert, self.key = cert, key
        super().__init__(address, handler)

    def server_bind(self) -> None:
        self.socket.close()  # socketserver made a TCP socket: use a TLS one instead
        self.socket = socket.socket(self.address_family, self.socket_type, socket.IPPROTO_TLS)
        if self.cert:  # optional: the program's own certificate, not the administrator's
            self.socket.setsockopt(socket.IPPROTO_TLS, socket.TLS_CERTIFICATE_CHAIN, self.cert)
            self.socket.setsockopt(socket.IPPROTO_TLS, socket.TLS_PRIVATE_KEY, self.key)
        super().server_bind()


def main() -> int:
    ssa_engine.install()  # socket.socket(..., IPPROTO_TLS) now means a TLS socket
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="", help="address to listen on (default: all)")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--directory", default=".", help="directory to serve")
    parser.add_argument("--cert", help="certificate chain (PEM); default: the administrator's")
    parser.add_argument("--key", help="private key (PEM) for --cert")
    args = parser.parse_args()
    if bool(args.cert) != bool(args.key):
        parser.error("--cert and --key go together")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=args.directory)
    try:
        httpd = FileServer((args.bind, args.port), handler, args.cert, args.key)
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
