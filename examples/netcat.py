"""netcat: relay stdin and stdout over TLS, the TLS done by the ssa engine.

    python examples/netcat.py HOST PORT [--cafile CA.pem]            # client
    python examples/netcat.py -l PORT [--bind ADDR] [--cert C --key K]  # server

Client mode connects to HOST:PORT; the engine verifies the server under the
administrator's policy (--cafile only adds a CA to trust, it cannot turn
verification off). Server mode accepts one connection, with --cert/--key or
the administrator's certificates. Then both directions flow at once: stdin to
the peer, the peer to stdout. At end of stdin the sending half is shut down
(the peer gets TLS close_notify) and the program waits for the peer. When the
peer has closed (its close_notify) and stdin is done, it exits 0; a peer that
only half-closed still gets the rest of stdin, unless stdin is a terminal.
It exits 1 with the reason on stderr if the connection is refused or fails,
if sending fails, or if the stream is cut without close_notify (truncated).
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
import threading

import ssa_engine

PROG = "netcat"
CHUNK = 65536


def fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)
    return 1


def describe(exc: OSError) -> str:
    reason = f"{exc.strerror or exc} [{errno.errorcode.get(exc.errno or 0, 'error')}]"
    if exc.errno == errno.ECONNRESET:  # never a clean end: what came may be cut short
        reason += "; the data received may be truncated"
    return reason


def relay(sock: socket.socket, verbose: bool) -> int:
    """Copy stdin -> sock (in a thread) and sock -> stdout; return the exit status."""
    if verbose:
        peer = sock.getpeername()
        ident = sock.getsockopt(socket.IPPROTO_TLS, socket.TLS_PEER_IDENTITY).decode()
        cipher = sock.getsockopt(socket.IPPROTO_TLS, socket.TLS_CHOSEN_CIPHER).decode()
        version = sock.getsockopt(socket.IPPROTO_TLS, socket.TLS_VERSION_CONN)
        print(f"{PROG}: connected to {peer[0]} port {peer[1]}: {ident or '(no certificate)'}, "
              f"TLS 1.{(version & 0xFF) - 1}, {cipher}",
              file=sys.stderr, flush=True)
    upload_error: list[OSError] = []
    uploaded = threading.Event()

    def upload() -> None:
        try:
            while data := os.read(sys.stdin.fileno(), CHUNK):
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)  # our half is done: close_notify to the peer
        except OSError as exc:
            upload_error.append(exc)
        finally:
            uploaded.set()

    threading.Thread(target=upload, daemon=True).start()
    out = sys.stdout.buffer
    while True:
        try:
            data = sock.recv(CHUNK)
        except OSError as exc:  # refused, reset, or cut without close_notify
            return fail(describe(exc))
        if not data:  # the peer's close_notify: a clean end
            break
        try:
            out.write(data)
            out.flush()
        except OSError as exc:  # e.g. stdout is a closed pipe
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return fail(f"cannot write to stdout: {describe(exc)}")
    # The peer sends no more, but it may still read (a TLS half-close): finish
    # sending stdin first, unless stdin is a terminal (then the session is over).
    if not os.isatty(sys.stdin.fileno()):
        uploaded.wait()
    if upload_error:
        return fail(f"the connection ended before all of stdin was sent: "
                    f"{describe(upload_error[0])}")
    return 0


def client(host: str, port: int, cafile: str | None, verbose: bool) -> int:
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TLS)
    except OSError as exc:  # e.g. the engine is not running: the message says how to start it
        return fail(describe(exc))
    with sock:
        try:
            if cafile:  # one more CA to trust, as far as the policy allows
                sock.setsockopt(socket.IPPROTO_TLS, socket.TLS_TRUSTED_PEER_CERTIFICATES, cafile)
            sock.connect((host, port))
        except OSError as exc:
            reason = describe(exc)
            if not reason.startswith("cannot connect"):
                reason = f"cannot connect to {host} port {port}: {reason}"
            return fail(reason)
        return relay(sock, verbose)


def server(bind: str, port: int, cert: str | None, key: str | None, verbose: bool) -> int:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    try:
        listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TLS)
    except OSError as exc:
        return fail(describe(exc))
    with listener:
        try:
            if cert:  # else the engine serves the administrator's certificates
                listener.setsockopt(socket.IPPROTO_TLS, socket.TLS_CERTIFICATE_CHAIN, cert)
                listener.setsockopt(socket.IPPROTO_TLS, socket.TLS_PRIVATE_KEY, key)
            listener.bind((bind, port))
            listener.listen(1)
        except OSError as exc:
            return fail(f"cannot listen on {bind or '*'} port {port}: {describe(exc)}")
        host, real_port = listener.getsockname()[:2]
        print(f"{PROG}: listening on {host} port {real_port}", file=sys.stderr, flush=True)
        try:
            conn, _ = listener.accept()  # only a client whose handshake succeeded gets here
        except OSError as exc:
            return fail(f"accept failed: {describe(exc)}")
    with conn:
        return relay(conn, verbose)


def main() -> int:
    ssa_engine.install()  # socket.socket(..., IPPROTO_TLS) now means a TLS socket
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("-l", "--listen", type=int, metavar="PORT",
                        help="server mode: accept one connection on PORT (0: any free port)")
    parser.add_argument("--bind", default="", help="server mode: address to listen on")
    parser.add_argument("--cert", help="server mode: certificate chain (PEM); "
                        "default: the administrator's")
    parser.add_argument("--key", help="server mode: private key (PEM) for --cert")
    parser.add_argument("--cafile", help="client mode: extra CA certificate (PEM) to trust")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print the peer's identity, TLS version and cipher")
    parser.add_argument("target", nargs="*", metavar="HOST PORT", help="client mode: where to")
    args = parser.parse_args()
    if bool(args.cert) != bool(args.key):
        parser.error("--cert and --key go together")
    try:
        if args.listen is not None:
            if args.target or args.cafile:
                parser.error("server mode (-l) takes no HOST PORT and no --cafile")
            return server(args.bind, args.listen, args.cert, args.key, args.verbose)
        if len(args.target) != 2 or not args.target[1].isdigit():
            parser.error("client mode needs HOST PORT (or -l PORT for server mode)")
        if args.cert or args.bind:
            parser.error("--cert, --key and --bind are for server mode (-l)")
        return client(args.target[0], int(args.target[1]), args.cafile, args.verbose)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
