"""A small HTTP/1.1 client for OCSP and CRLs, so that the engine never blocks.

OCSP responders and CRL distribution points are plain ``http://`` URLs
(RFC 5280 section 4.2.1.13, RFC 6960 appendix A.1): the answers are signed,
so TLS adds nothing, and a TLS connection to check a TLS certificate would
need a revocation check of its own. This module speaks just enough HTTP for
them: one request per connection (``Connection: close``), a response with a
``Content-Length``, chunked, or ended by the close, and a few redirects to
other ``http://`` URLs.

The response parser is sans-IO (:class:`ResponseParser` takes bytes and
says when it is done); :func:`fetch` is the thin asyncio adapter over
``asyncio.open_connection``. Every limit is a named security parameter: a
hostile or broken server costs at most ``FETCH_TIMEOUT`` seconds and the
caller's size limit in memory.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

#: Security parameter: seconds one fetch may take (connect, send, read all),
#: redirects included.
FETCH_TIMEOUT = 5.0
#: Security parameter: bytes of status line and headers accepted.
MAX_HEADER_BYTES = 16 * 1024
#: Security parameter: redirects followed (to ``http://`` URLs only).
MAX_REDIRECTS = 3
#: Security parameter: the longest URL taken from a certificate.
MAX_URL_LENGTH = 2048

_USER_AGENT = "ssa-engine"
_SIZE_LINE = -1
_CHUNK_END = -2
_STATUS_LINE = re.compile(rb"^HTTP/1\.[01] (\d{3})(?: .*)?$")
_HOST = re.compile(r"^[a-z0-9_.-]+$")  # urlsplit's hostname is lower case, without brackets


class FetchError(Exception):
    """The resource could not be fetched; the message says why, in a few words."""


@dataclass(frozen=True, slots=True)
class Url:
    host: str  # without brackets
    port: int
    target: str  # path and query
    text: str

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 80 else f"{host}:{self.port}"


def parse_url(text: str) -> Url:
    """Parse an ``http://`` URL from a certificate; FetchError for anything else."""
    if len(text) > MAX_URL_LENGTH or not text.isascii() or any(c in text for c in "\r\n\0 "):
        raise FetchError("not a usable URL")
    try:
        parts = urlsplit(text)
        port = parts.port or 80
    except ValueError:
        raise FetchError("not a usable URL") from None
    if parts.scheme.lower() != "http":
        raise FetchError(f"{parts.scheme or 'a relative'} URL: only http:// is fetched")
    host = parts.hostname or ""
    if "@" in parts.netloc or not (_HOST.match(host) or _ip(host)):
        raise FetchError("not a usable URL")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Url(host, port, target, text)


def _ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def build_request(url: Url, method: str, body: bytes | None = None,
                  content_type: str | None = None, accept: str | None = None) -> bytes:
    lines = [f"{method} {url.target} HTTP/1.1", f"Host: {url.authority}",
             f"User-Agent: {_USER_AGENT}", "Connection: close"]
    if accept:
        lines.append(f"Accept: {accept}")
    if body is not None:
        lines += [f"Content-Type: {content_type or 'application/octet-stream'}",
                  f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + (body or b"")


@dataclass(slots=True)
class ResponseParser:
    """Parse one HTTP/1.x response from bytes (sans-IO).

    Feed it with :meth:`receive_data` and :meth:`receive_eof`; once
    :attr:`done`, :attr:`status`, :attr:`headers` and :attr:`body` hold the
    response. Raises FetchError for a malformed response or one over a limit.
    """

    limit: int
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    done: bool = False
    _buf: bytearray = field(default_factory=bytearray)
    _length: int | None = None  # Content-Length; None: chunked or until the close
    _chunked: bool = False
    #: chunked: bytes left in this chunk; _SIZE_LINE or _CHUNK_END between chunks
    _chunk_left: int = -1
    _in_body: bool = False

    def receive_data(self, data: bytes) -> None:
        if self.done:
            return
        self._buf += data
        if not self._in_body:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEADER_BYTES:
                    raise FetchError("response headers too long")
                return
            if end > MAX_HEADER_BYTES:
                raise FetchError("response headers too long")
            self._head(bytes(self._buf[:end]))
            del self._buf[: end + 4]
            self._in_body = True
        if self._chunked:
            self._chunks()
        else:
            self.body += self._buf
            self._buf.clear()
            if self._length is not None and len(self.body) >= self._length:
                del self.body[self._length:]
                self.done = True
        if len(self.body) > self.limit:
            raise FetchError(f"response larger than {self.limit} bytes")

    def receive_eof(self) -> None:
        if self.done:
            return
        if self._in_body and self._length is None and not self._chunked:
            self.done = True  # the close ends the body (RFC 9112 section 6.3)
            return
        raise FetchError("connection closed before the whole response")

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        m = _STATUS_LINE.match(lines[0])
        if m is None:
            raise FetchError("not an HTTP response")
        self.status = int(m.group(1))
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise FetchError("malformed response header")
            self.headers[name.decode("latin-1").lower()] = value.strip().decode("latin-1")
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            self._chunked = True
        elif "content-length" in self.headers:
            value = self.headers["content-length"]
            if not value.isdigit():
                raise FetchError("malformed Content-Length")
            self._length = int(value)
            if self._length > self.limit:
                raise FetchError(f"response larger than {self.limit} bytes")
            if self._length == 0:
                self.done = True

    def _chunks(self) -> None:
        while not self.done:
            if self._chunk_left == _CHUNK_END:
                if len(self._buf) < 2:
                    return
                if self._buf[:2] != b"\r\n":
                    raise FetchError("malformed chunk")
                del self._buf[:2]
                self._chunk_left = _SIZE_LINE
            elif self._chunk_left == _SIZE_LINE:
                end = self._buf.find(b"\r\n")
                if end < 0:
                    if len(self._buf) > 1024:
                        raise FetchError("malformed chunk size")
                    return
                size = bytes(self._buf[:end]).split(b";", 1)[0].strip()
                try:
                    self._chunk_left = int(size, 16)
                except ValueError:
                    raise FetchError("malformed chunk size") from None
                del self._buf[: end + 2]
                if self._chunk_left == 0:
                    self.done = True  # trailers, if any, are not needed
                elif self._chunk_left < 0 or len(self.body) + self._chunk_left > self.limit:
                    raise FetchError(f"response larger than {self.limit} bytes")
            else:
                take = min(self._chunk_left, len(self._buf))
                self.body += self._buf[:take]
                del self._buf[:take]
                self._chunk_left -= take
                if self._chunk_left:
                    return
                self._chunk_left = _CHUNK_END


async def fetch(url: str, *, limit: int, body: bytes | None = None,
                content_type: str | None = None, accept: str | None = None,
                timeout: float = FETCH_TIMEOUT) -> bytes:
    """GET ``url`` (or POST ``body``) and return the body of a 200 response.

    Raises FetchError for anything else: a refused or slow connection, a
    status other than 200, a response over ``limit`` bytes.
    """
    try:
        async with asyncio.timeout(timeout):
            target = parse_url(url)
            for _ in range(MAX_REDIRECTS + 1):
                response = await _exchange(target, body, content_type, accept, limit)
                location = response.headers.get("location")
                if response.status in (301, 302, 303, 307, 308) and location and body is None:
                    target = parse_url(location)
                    continue
                if response.status != 200:
                    raise FetchError(f"HTTP status {response.status}")
                return bytes(response.body)
            raise FetchError("too many redirects")
    except TimeoutError:
        raise FetchError(f"no answer within {timeout:g} s") from None


async def _exchange(url: Url, body: bytes | None, content_type: str | None, accept: str | None,
                    limit: int) -> ResponseParser:
    try:
        reader, writer = await asyncio.open_connection(url.host, url.port)
    except OSError as exc:
        raise FetchError(f"cannot connect to {url.authority}: "
                         f"{exc.strerror or type(exc).__name__}") from None
    try:
        writer.write(build_request(url, "POST" if body is not None else "GET", body,
                                   content_type, accept))
        await writer.drain()
        parser = ResponseParser(limit)
        while not parser.done:
            data = await reader.read(65536)
            if not data:
                parser.receive_eof()
                break
            parser.receive_data(data)
        return parser
    except OSError as exc:
        raise FetchError(f"connection to {url.authority} failed: "
                         f"{exc.strerror or type(exc).__name__}") from None
    finally:
        writer.close()
