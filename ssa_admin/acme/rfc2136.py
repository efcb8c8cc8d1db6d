"""dns-01 through RFC 2136 dynamic updates, signed with TSIG (RFC 8945).

:class:`Dns01Rfc2136` adds ``_acme-challenge.NAME. 60 IN TXT "value"`` on the
zone's primary server (``--dns-server``) and removes exactly the values it
added afterwards, never the whole RRset (a wildcard and its base name share
the record; another client's values stay). Before the order is placed,
:meth:`Dns01Rfc2136.start` sends a signed update that changes nothing (it
deletes a TXT value that is not there) for each record name, so a wrong key,
secret or update policy is reported before the CA is asked for anything.

After each addition it polls the authoritative servers directly (the server
it updated, and the zone's NS hosts) until every one answers the new value,
for at most ``propagation_timeout`` seconds: no blind sleep, and no
challenge answered that the CA could not yet see.

The zone of a record is ``--dns-zone`` when given; else it is found by an
SOA walk up from the record's name against the server. A CNAME at
``_acme-challenge.NAME`` (delegating validation to another name) is
followed, as the CA does.

TSIG key files are read by :func:`load_tsig_key`: BIND's format (what
``tsig-keygen`` writes), Knot's (what ``keymgr -t`` writes) or one line
``name:algorithm:secret``. The secret never appears in a message, in
:meth:`Dns01Rfc2136.describe` or in the certificate's metadata: renewal
reads the file again.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.tsig
import dns.update
import josepy as jose

from .errors import ChallengeError
from .responders import Responder, dns01_record

#: TTL of the TXT records (seconds): short, as they live for one validation
TTL = 60
#: seconds to wait for one DNS answer
QUERY_TIMEOUT = 5.0
#: the value the permission check deletes (it is never there, so nothing changes)
PROBE_VALUE = "ssa-admin permission check (a no-op delete)"
#: CNAMEs followed from _acme-challenge.NAME at most
MAX_CNAME_HOPS = 8

#: accepted spellings -> dnspython's algorithm name
ALGORITHMS = {
    "hmac-md5": dns.tsig.HMAC_MD5,
    "hmac-md5.sig-alg.reg.int": dns.tsig.HMAC_MD5,
    "hmac-sha1": dns.tsig.HMAC_SHA1,
    "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
}

#: TSIG error codes (RFC 8945 section 3; 16 is also EDNS's BADVERS, so dnspython's
#: dns.rcode.to_text cannot name it)
TSIG_ERRORS = {16: "BADSIG", 17: "BADKEY", 18: "BADTIME", 22: "BADTRUNC"}

Warn = Callable[[str], None]


# -- TSIG keys -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TsigKey:
    """A TSIG key: ``name`` (absolute, with the final dot), ``algorithm`` (``hmac-sha256``)."""

    name: str
    algorithm: str
    secret: str = field(repr=False)
    #: where it was read from (what renewal reads again), None for a key given in code
    path: Path | None = None

    def dns_key(self) -> dns.tsig.Key:
        return dns.tsig.Key(self.name, self.secret, ALGORITHMS[self.algorithm])

    @property
    def source(self) -> str:
        return str(self.path) if self.path else "the key"


_BIND_KEY = re.compile(
    r"""\bkey\s+("(?P<q>[^"]+)"|(?P<u>[^\s{"]+))\s*\{(?P<body>[^}]*)\}\s*;?""", re.I | re.S)
_BIND_ITEM = re.compile(r"""\b(algorithm|secret)\s+("([^"]*)"|([^\s;]+))\s*;""", re.I)
_KNOT_ITEM = re.compile(r"""^\s*(?:-\s*)?(id|algorithm|secret)\s*:\s*(\S+?)\s*$""", re.I | re.M)


def _strip_bind_comments(text: str) -> str:
    """Drop ``#``, ``//`` and ``/* */`` comments, not inside quotes (a secret may hold //)."""
    return re.sub(r'"[^"]*"|/\*.*?\*/|//[^\n]*|#[^\n]*',
                  lambda m: m.group(0) if m.group(0).startswith('"') else " ", text, flags=re.S)


def _strip_hash_comments(text: str) -> str:
    return re.sub(r"(^|\s)#[^\n]*", r"\1", text)


def parse_tsig_key(text: str, source: str = "the key", path: Path | None = None) -> TsigKey:
    """A key from BIND's ``key "name" { algorithm ...; secret "..."; };``, Knot's
    ``key: - id: / algorithm: / secret:`` or ``name:algorithm:secret`` (also
    ``algorithm:name:secret``, as ``nsupdate -y`` and ``knsupdate -y`` take it)."""
    body = _strip_bind_comments(text)
    if re.search(r"\bkey\s+\S+\s*\{", body, re.I):
        keys = list(_BIND_KEY.finditer(body))
        if not keys:
            raise ChallengeError(f"{source}: a BIND key statement that does not parse; it "
                                 'should read key "NAME" { algorithm hmac-sha256; secret "BASE64"; };')
        if len(keys) > 1:
            names = ", ".join(m.group("q") or m.group("u") for m in keys)
            raise ChallengeError(f"{source}: holds {len(keys)} keys ({names}); keep the one "
                                 "for ACME updates in a file of its own")
        m = keys[0]
        items = {k.lower(): (q or u)
                 for k, _, q, u in _BIND_ITEM.findall(m.group("body"))}
        return _make_key(m.group("q") or m.group("u"), items.get("algorithm"), items.get("secret"),
                         source, path)
    body = _strip_hash_comments(text)
    if re.search(r"^\s*key\s*:", body, re.M | re.I):
        items_list = _KNOT_ITEM.findall(body)
        ids = [v for k, v in items_list if k.lower() == "id"]
        if len(ids) > 1:
            raise ChallengeError(f"{source}: holds {len(ids)} keys ({', '.join(ids)}); keep the "
                                 "one for ACME updates in a file of its own")
        knot = {k.lower(): v.strip("\"'") for k, v in items_list}
        return _make_key(knot.get("id"), knot.get("algorithm"), knot.get("secret"), source, path)
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    if len(lines) == 1 and lines[0].count(":") == 2:
        first, second, secret = lines[0].split(":")
        if first.lower().rstrip(".") in ALGORITHMS and second.lower() not in ALGORITHMS:
            first, second = second, first
        return _make_key(first, second, secret, source, path)
    raise ChallengeError(
        f"{source}: not a TSIG key; write it as BIND does "
        '(key "NAME" { algorithm hmac-sha256; secret "BASE64"; }; as tsig-keygen NAME prints it), '
        "as Knot does (keymgr -t NAME), or as one line NAME:ALGORITHM:BASE64SECRET")


def _make_key(name: str | None, algorithm: str | None, secret: str | None, source: str,
              path: Path | None) -> TsigKey:
    if not name:
        raise ChallengeError(f"{source}: the key has no name")
    if not algorithm:
        raise ChallengeError(f"{source}: key {name} names no algorithm (e.g. hmac-sha256)")
    alg = algorithm.lower().rstrip(".")
    if alg not in ALGORITHMS:
        raise ChallengeError(f"{source}: key {name}: unknown algorithm {algorithm!r} "
                             f"(one of {', '.join(a for a in ALGORITHMS if '.' not in a)})")
    if alg == "hmac-md5.sig-alg.reg.int":
        alg = "hmac-md5"
    if not secret:
        raise ChallengeError(f"{source}: key {name} has no secret")
    try:
        raw = base64.b64decode(secret, validate=True)
    except (binascii.Error, ValueError):
        raise ChallengeError(f"{source}: the secret of key {name} is not valid base64") from None
    if not raw:
        raise ChallengeError(f"{source}: key {name} has an empty secret")
    try:
        absolute = dns.name.from_text(name).to_text()
    except dns.exception.DNSException as exc:
        raise ChallengeError(f"{source}: {name!r} is not a valid key name ({exc})") from None
    return TsigKey(absolute, alg, secret, path)


def load_tsig_key(path: Path, warn: Warn | None = None) -> TsigKey:
    """Read a key file (see :func:`parse_tsig_key`); warn when others may read it."""
    label = f"--dns-tsig-key {path}"
    if not path.exists() and _looks_inline(str(path)):
        raise ChallengeError(
            "--dns-tsig-key takes a FILE: a secret on the command line is visible to every "
            "user in the process list and would be recorded for renewal; put "
            "NAME:ALGORITHM:SECRET (or the key as tsig-keygen prints it) in a file readable "
            "only by root")
    try:
        st = path.stat()
        data = path.read_bytes()
    except FileNotFoundError:
        raise ChallengeError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise ChallengeError(f"{label}: is a directory, not a key file") from None
    except OSError as exc:
        raise ChallengeError(f"{label}: cannot read it: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ChallengeError(f"{label}: not a text file") from None
    key = parse_tsig_key(text, label, path.resolve())
    if warn is not None and st.st_mode & 0o077:
        warn(f"{path} (a TSIG secret) can be read by other users (mode "
             f"{st.st_mode & 0o777:o}); chmod 600 it")
    return key


def _looks_inline(text: str) -> bool:
    parts = text.split(":")
    return len(parts) == 3 and any(p.lower() in ALGORITHMS for p in parts[:2])


# -- the server ------------------------------------------------------------------------------------
def parse_server(text: str) -> tuple[str, int]:
    """``HOST[:PORT]``, ``[IPv6]:PORT`` or a bare IPv6 address -> (host, port); port 53."""
    text = text.strip()
    m = re.fullmatch(r"\[([^\]]+)\](?::(.*))?", text)
    if m:
        host, port = m.group(1), m.group(2)
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, None
    if not host:
        raise ChallengeError(f"--dns-server {text!r}: no host")
    try:
        number = int(port) if port is not None else 53
    except ValueError:
        number = 0
    if not 0 < number < 65536:
        raise ChallengeError(f"--dns-server {text!r}: the port must be a number from 1 to 65535")
    return host, number


@dataclass(frozen=True)
class _Server:
    label: str  # as the administrator wrote it
    address: str
    port: int


@dataclass
class _Answer:
    message: dns.message.Message
    rcode: int
    #: the TSIG error the server reported (0: none, or no TSIG at all)
    tsig_error: int
    #: the answer carried a TSIG that verified with our key
    verified: bool


def _rcode_text(rcode: int) -> str:
    try:
        return dns.rcode.to_text(dns.rcode.Rcode(rcode))
    except ValueError:
        return f"rcode {rcode}"


def _resolve(host: str, port: int, what: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ChallengeError(f"{what}: cannot resolve {host}: {exc.strerror}") from None
    out: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in out:
            out.append(address)
    return out


def _txt_values(message: dns.message.Message, name: dns.name.Name) -> set[str]:
    values = set()
    for rrset in message.answer:
        if rrset.name == name and rrset.rdtype == dns.rdatatype.TXT:
            for rdata in rrset:
                values.add(b"".join(rdata.strings).decode("utf-8", "replace"))
    return values


def _cname_target(message: dns.message.Message, name: dns.name.Name) -> dns.name.Name | None:
    for rrset in message.answer:
        if rrset.name == name and rrset.rdtype == dns.rdatatype.CNAME:
            return rrset[0].target  # type: ignore[no-any-return]
    return None


# -- the responder ---------------------------------------------------------------------------------
@dataclass
class _Record:
    """Where the TXT value for one ``_acme-challenge`` name goes."""

    owner: dns.name.Name  # after CNAMEs
    zone: dns.name.Name


class Dns01Rfc2136(Responder):
    """Answers dns-01 by adding TXT records with RFC 2136 updates (see the module's docstring).

    ``server`` is ``HOST[:PORT]``; ``key`` a :class:`TsigKey` (None: unsigned updates, for a
    server whose update policy goes by address); ``zone`` the zone to update (None: found by
    SOA lookups); ``names`` the identifiers about to be ordered, so that :meth:`start` can
    check the key and the update policy for each before the order exists.
    """

    challenge_type = "dns-01"
    #: the port of the zone's NS hosts, polled for the new records (tests point it elsewhere)
    ns_port = 53

    def __init__(self, server: str, key: TsigKey | None, *, zone: str | None = None,
                 propagation_timeout: float = 60.0, names: list[str] | tuple[str, ...] = (),
                 warn: Warn | None = None) -> None:
        self.server_text = server
        self.host, self.port = parse_server(server)
        self.key = key
        try:
            self.zone = dns.name.from_text(zone) if zone else None
        except dns.exception.DNSException as exc:
            raise ChallengeError(f"--dns-zone {zone!r}: not a domain name ({exc})") from None
        self.propagation_timeout = max(0.0, float(propagation_timeout))
        self.names = list(names)
        self.warn = warn or (lambda message: None)
        self.added: list[tuple[_Record, str]] = []
        self._server: _Server | None = None
        self._records: dict[dns.name.Name, _Record] = {}
        self._ns_servers: dict[dns.name.Name, list[_Server]] = {}

    # -- what the administrator sees

    def _who(self) -> str:
        return f"the DNS server {self.server_text}"

    def _key_text(self) -> str:
        if self.key is None:
            return "an unsigned update"
        return f"key {self.key.name} ({self.key.algorithm}, {self.key.source})"

    def describe(self) -> dict[str, object]:
        return {"dns_server": self.server_text,
                "dns_zone": self.zone.to_text() if self.zone else None,
                "dns_tsig_key": str(self.key.path) if self.key and self.key.path else None,
                "dns_propagation_timeout": self.propagation_timeout}

    # -- Responder

    def start(self) -> None:
        self._primary()
        seen = set()
        for identifier in self.names:
            if _is_ip(identifier):
                continue  # the CA offers no dns-01 for an address; it says so itself
            rrname = dns.name.from_text(dns01_record(identifier))
            if rrname in seen:
                continue
            seen.add(rrname)
            record = self._record(rrname)
            self._update(record, delete=[PROBE_VALUE],
                         doing=f"checking that {self._key_text()} may update "
                               f"{record.owner} TXT in zone {record.zone}")

    def add(self, identifier: str, challb: Any, account_key: jose.JWK) -> None:
        value = challb.chall.validation(account_key)
        rrname = dns.name.from_text(dns01_record(identifier))
        record = self._record(rrname)
        self._update(record, add=[value], doing=f"adding {record.owner} TXT for {identifier}")
        self.added.append((record, value))
        self._wait_visible(record, value)

    def stop(self) -> None:
        by_owner: dict[dns.name.Name, tuple[_Record, list[str]]] = {}
        for record, value in self.added:
            by_owner.setdefault(record.owner, (record, []))[1].append(value)
        for record, values in by_owner.values():
            try:
                self._update(record, delete=values, doing=f"removing {record.owner} TXT")
            except ChallengeError as exc:
                self.warn(f"{exc}\n  the TXT value(s) {', '.join(values)} stay at "
                          f"{record.owner}; remove them by hand")
        self.added.clear()

    # -- the server

    def _primary(self) -> _Server:
        if self._server is None:
            addresses = _resolve(self.host, self.port, f"--dns-server {self.server_text}")
            self._server = _Server(self.server_text, addresses[0], self.port)
        return self._server

    def _exchange(self, server: _Server, message: dns.message.Message, *, tcp: bool,
                  doing: str) -> _Answer:
        """Send one message, get the answer without letting a TSIG problem hide its rcode."""
        wire = message.to_wire()  # signs it, when it has a key; message.mac is then set
        request_mac = message.mac if message.had_tsig else b""
        try:
            if tcp:
                raw = self._tcp(server, wire)
            else:
                raw = self._udp(server, wire)
        except TimeoutError:
            raise ChallengeError(
                f"{doing}: no answer from {server.label} ({server.address} port {server.port}) "
                f"within {QUERY_TIMEOUT:g} s: check the address and port, and that a "
                f"firewall lets DNS over {'TCP' if tcp else 'UDP'} through") from None
        except OSError as exc:
            hint = "; check --dns-server" if server == self._server else ""
            raise ChallengeError(
                f"{doing}: cannot reach {server.label} ({server.address} port {server.port}): "
                f"{exc.strerror or exc}{hint}") from None
        try:
            answer = dns.message.from_wire(raw, keyring=False)
        except dns.exception.DNSException as exc:
            raise ChallengeError(f"{doing}: {server.label} sent an answer that does not "
                                 f"parse ({exc})") from None
        if answer.id != message.id:
            raise ChallengeError(f"{doing}: {server.label} answered another query")
        tsig_error = int(answer.tsig[0].error) if answer.had_tsig and answer.tsig else 0
        verified = False
        if request_mac and answer.had_tsig and tsig_error == 0 and self.key is not None:
            try:
                dns.message.from_wire(raw, keyring=self.key.dns_key(), request_mac=request_mac)
            except dns.exception.DNSException as exc:
                raise ChallengeError(
                    f"{doing}: the answer of {server.label} carries a TSIG signature that does "
                    f"not verify with {self._key_text()} ({exc}); something between here and "
                    "the server changes the messages, or it is not the server you meant") from None
            verified = True
        return _Answer(answer, answer.rcode(), tsig_error, verified)

    @staticmethod
    def _tcp(server: _Server, wire: bytes) -> bytes:
        with socket.create_connection((server.address, server.port), timeout=QUERY_TIMEOUT) as s:
            s.settimeout(QUERY_TIMEOUT)
            s.sendall(struct.pack("!H", len(wire)) + wire)

            def read(n: int) -> bytes:
                data = b""
                while len(data) < n:
                    chunk = s.recv(n - len(data))
                    if not chunk:
                        raise ConnectionResetError(0, "the server closed the connection")
                    data += chunk
                return data

            (length,) = struct.unpack("!H", read(2))
            return read(length)

    @staticmethod
    def _udp(server: _Server, wire: bytes) -> bytes:
        family = socket.AF_INET6 if ":" in server.address else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.settimeout(QUERY_TIMEOUT)
            s.connect((server.address, server.port))
            s.send(wire)
            deadline = time.monotonic() + QUERY_TIMEOUT
            while True:
                s.settimeout(max(0.01, deadline - time.monotonic()))
                data = s.recv(65535)
                if len(data) >= 2 and data[:2] == wire[:2]:
                    return data

    def _query(self, server: _Server, name: dns.name.Name, rdtype: dns.rdatatype.RdataType,
               doing: str, *, signed: bool = False) -> _Answer:
        """A non-recursive query; over TCP when the UDP answer is truncated."""
        query = dns.message.make_query(name, rdtype)
        query.flags &= ~dns.flags.RD
        if signed and self.key is not None:
            query.use_tsig(self.key.dns_key())
        answer = self._exchange(server, query, tcp=False, doing=doing)
        if answer.message.flags & dns.flags.TC:
            query = dns.message.make_query(name, rdtype)
            query.flags &= ~dns.flags.RD
            if signed and self.key is not None:
                query.use_tsig(self.key.dns_key())
            answer = self._exchange(server, query, tcp=True, doing=doing)
        return answer

    # -- where the record goes

    def _record(self, rrname: dns.name.Name) -> _Record:
        record = self._records.get(rrname)
        if record is None:
            owner = self._follow_cnames(rrname)
            record = _Record(owner, self._zone_of(owner, rrname))
            self._records[rrname] = record
        return record

    def _follow_cnames(self, rrname: dns.name.Name) -> dns.name.Name:
        server, name, via = self._primary(), rrname, []
        for _ in range(MAX_CNAME_HOPS):
            answer = self._query(server, name, dns.rdatatype.TXT, f"looking up {name} TXT")
            target = _cname_target(answer.message, name)
            if target is None:
                return name
            via.append(name.to_text())
            name = target
        raise ChallengeError(f"{rrname}: more than {MAX_CNAME_HOPS} CNAMEs ({' -> '.join(via)})")

    def _zone_of(self, owner: dns.name.Name, rrname: dns.name.Name) -> dns.name.Name:
        shown = f"{rrname}" + (f" (a CNAME to {owner})" if owner != rrname else "")
        if self.zone is not None:
            if not owner.is_subdomain(self.zone):
                raise ChallengeError(f"{shown} is not in the zone {self.zone} given with "
                                     "--dns-zone; leave --dns-zone out to find each name's "
                                     "zone, or issue the names of other zones separately")
            return self.zone
        server, candidate = self._primary(), owner
        answers: list[str] = []
        while True:
            answer = self._query(server, candidate, dns.rdatatype.SOA,
                                 f"looking for the zone of {shown}")
            msg = answer.message
            authoritative = bool(msg.flags & dns.flags.AA)
            if answer.rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                for rrset in msg.answer:
                    if rrset.rdtype == dns.rdatatype.SOA and rrset.name == candidate:
                        return candidate
                for rrset in msg.authority:
                    if (authoritative and rrset.rdtype == dns.rdatatype.SOA
                            and owner.is_subdomain(rrset.name)):
                        return rrset.name
                    if not authoritative and rrset.rdtype == dns.rdatatype.NS:
                        hosts = ", ".join(sorted(r.target.to_text() for r in rrset))
                        raise ChallengeError(
                            f"{self._who()} delegates {rrset.name} (where {shown} is) to "
                            f"{hosts}: send the updates to that zone's primary server with "
                            "--dns-server")
            answers.append(f"{candidate}: {_rcode_text(answer.rcode)}")
            if candidate == dns.name.root:
                break
            candidate = candidate.parent()
        raise ChallengeError(
            f"{self._who()} is not authoritative for a zone that holds {shown} (SOA lookups: "
            f"{'; '.join(answers[:3])}{' ...' if len(answers) > 3 else ''}): point --dns-server "
            "at the zone's primary server, or name the zone with --dns-zone")

    # -- updates

    def _update(self, record: _Record, *, doing: str, add: list[str] | None = None,
                delete: list[str] | None = None) -> None:
        update = dns.update.UpdateMessage(record.zone)
        if self.key is not None:
            update.use_tsig(self.key.dns_key())
        for value in add or ():
            update.add(record.owner, TTL, dns.rdatatype.TXT, _txt(value))
        for value in delete or ():
            update.delete(record.owner, dns.rdatatype.TXT, _txt(value))
        answer = self._exchange(self._primary(), update, tcp=True, doing=doing)
        problem = self._update_problem(answer, record)
        if problem:
            raise ChallengeError(f"{doing}: {problem}")

    def _update_problem(self, answer: _Answer, record: _Record) -> str | None:
        """None when the update was applied; else what the server answered (first line),
        what that means and what to check (indented lines)."""
        rcode, who, zone, owner = answer.rcode, self._who(), record.zone, record.owner
        key = self.key
        kname = key.name if key else "KEY"
        policy = (f"the update policy of zone {zone} for {owner} TXT (BIND: update-policy "
                  f"{{ grant {kname} name {owner} TXT; }}; Knot: an acl with key {kname}, "
                  f"action update, update-type TXT and {owner} in update-owner-name, listed "
                  "in the zone's acl)")

        def lines(answered: str, meaning: str, check: str) -> str:
            return f"{who} answered {answered}\n  {meaning}\n  what to check: {check}"

        if answer.tsig_error:
            assert key is not None
            answered = (f"{_rcode_text(rcode)} with TSIG error "
                        f"{TSIG_ERRORS.get(answer.tsig_error, str(answer.tsig_error))}")
            if answer.tsig_error == dns.rcode.BADSIG:
                return lines(answered, f"it knows key {key.name} but our signature does not "
                             "verify: the secret (or the algorithm) differs from the server's",
                             f"the secret and algorithm {key.algorithm} in {key.source} against "
                             "the server's key statement")
            if answer.tsig_error == dns.rcode.BADTIME:
                return lines(answered, "the clocks of this machine and of the server differ "
                             "by more than the signature allows (usually 5 minutes)",
                             "NTP on both machines")
            if answer.tsig_error == dns.rcode.BADKEY:
                if self._key_accepted_for_queries(zone):
                    return lines(answered, f"the server refused the update although it accepts "
                                 f"key {key.name} (a query signed with it succeeded): its "
                                 f"update policy does not let this key change {owner} TXT",
                                 policy)
                return lines(answered, f"the server does not accept key {key.name} with "
                             f"algorithm {key.algorithm} for zone {zone}: either it does not "
                             "know the key, or the zone's update policy does not name it "
                             "(Knot answers BADKEY to both, BIND REFUSED to the second)",
                             f"the key name and algorithm in {key.source} against the "
                             f"server's key statement; {policy}")
            return lines(answered, f"the server rejected the signature of key {key.name}",
                         f"{key.source} against the server's key statement")
        answered = _rcode_text(rcode)
        if rcode == dns.rcode.NOERROR:
            if key is not None and not answer.verified:
                return lines(f"{answered} without signing its answer with key {key.name}",
                             "an unsigned answer to a signed update cannot be trusted",
                             f"that --dns-server {self.server_text} is the server that holds "
                             "the key, and that nothing between here and there alters DNS")
            return None
        if rcode == dns.rcode.REFUSED:
            if key is None:
                return lines(answered, "the server refused an unsigned update",
                             f"pass the zone's update key with --dns-tsig-key, or {policy}")
            return lines(answered, f"the server refused to let key {key.name} change {owner} "
                         f"TXT in zone {zone}",
                         f"{policy}; and that --dns-server is the zone's primary (secondaries "
                         "refuse updates, or must be set to forward them)")
        if rcode == dns.rcode.NOTAUTH:
            if key is None:
                return lines(answered, f"the server takes no unsigned update for zone {zone}, "
                             "or is not authoritative for it",
                             "pass the zone's update key with --dns-tsig-key")
            return lines(answered, f"the server is not authoritative for zone {zone}",
                         "--dns-server and --dns-zone")
        if rcode == dns.rcode.NOTZONE:
            return lines(answered, f"{owner} is not in zone {zone}", "--dns-zone")
        if rcode == dns.rcode.SERVFAIL:
            return lines(answered, "the server failed to apply the update", "the server's log")
        if rcode == dns.rcode.NOTIMP:
            return lines(answered, "the server does not support dynamic updates (RFC 2136)",
                         "its configuration, or use --dns-hook with the DNS provider's API")
        return lines(answered, "the server did not apply the update", policy)

    def _key_accepted_for_queries(self, zone: dns.name.Name) -> bool:
        """Does the server verify our signature on a plain query (key name, algorithm and
        secret all right)? Tells a policy refusal from an unknown key: Knot answers BADKEY
        to both."""
        if self.key is None:
            return False
        try:
            answer = self._query(self._primary(), zone, dns.rdatatype.SOA, "checking the key",
                                 signed=True)
        except ChallengeError:
            return False
        return answer.verified and answer.tsig_error == 0

    # -- propagation

    def _nameservers(self, zone: dns.name.Name) -> list[_Server]:
        """The zone's NS hosts other than the server updated (port `ns_port`), to poll too."""
        cached = self._ns_servers.get(zone)
        if cached is not None:
            return cached
        primary = self._primary()
        own = set(_resolve(self.host, self.port, f"--dns-server {self.server_text}"))
        servers: list[_Server] = []
        try:
            ns = self._query(primary, zone, dns.rdatatype.NS, f"looking up the NS of {zone}")
        except ChallengeError as exc:
            self.warn(f"{exc}; checking only {self.server_text} for the TXT records")
            ns = None
        targets = sorted({r.target for rrset in (ns.message.answer if ns else [])
                          if rrset.rdtype == dns.rdatatype.NS for r in rrset})
        for target in targets:
            addresses: list[str] = []
            for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                try:
                    answer = self._query(primary, target, rdtype, f"looking up {target}")
                except ChallengeError:
                    continue
                for rrset in answer.message.answer:
                    if rrset.rdtype == rdtype:
                        addresses += [r.address for r in rrset]
            if not addresses:
                try:
                    addresses = _resolve(target.to_text(omit_final_dot=True), self.ns_port,
                                         str(target))
                except ChallengeError:
                    self.warn(f"not checking name server {target} of {zone} for the TXT "
                              "records: its address does not resolve here")
                    continue
            if own.intersection(addresses):
                continue  # the server updated, on its public port
            for address in addresses:
                servers.append(_Server(f"{target.to_text(omit_final_dot=True)} ({address})",
                                       address, self.ns_port))
        self._ns_servers[zone] = servers
        return servers

    def _wait_visible(self, record: _Record, value: str) -> None:
        """Poll the authoritative servers until each answers ``value`` at the record."""
        if self.propagation_timeout <= 0:
            return
        deadline = time.monotonic() + self.propagation_timeout
        primary = self._primary()
        pending = [primary, *self._nameservers(record.zone)]
        last: dict[_Server, str] = {}
        delay = 0.02
        first = True
        while True:
            for server in list(pending):
                try:
                    answer = self._query(server, record.owner, dns.rdatatype.TXT,
                                         f"checking {record.owner} TXT on {server.label}")
                except ChallengeError as exc:
                    if server is not primary and first:
                        self.warn(f"not checking {server.label} for the TXT records: {exc}")
                        pending.remove(server)
                    else:
                        last[server] = str(exc)
                    continue
                values = _txt_values(answer.message, record.owner)
                if value in values:
                    pending.remove(server)
                elif answer.rcode == dns.rcode.NXDOMAIN:
                    last[server] = "NXDOMAIN, the name is not there yet"
                elif answer.rcode == dns.rcode.NOERROR:
                    last[server] = (f"{len(values)} other TXT value(s), not the new one yet"
                                    if values else "no TXT record there yet")
                else:
                    last[server] = f"answers {_rcode_text(answer.rcode)}"
            first = False
            if not pending:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(delay, remaining))  # and one last look at the deadline
            delay = min(delay * 2, 2.0)
        lagging = "; ".join(f"{s.label}: {last.get(s, 'no answer')}" for s in pending)
        raise ChallengeError(
            f"{record.owner} TXT was added, but after {self.propagation_timeout:g} s not every "
            f"authoritative server shows it ({lagging}); if secondaries are slow to transfer "
            "the zone, raise --dns-propagation-timeout; otherwise check that they get "
            "NOTIFY and transfers from the primary")


def _is_ip(identifier: str) -> bool:
    try:
        ipaddress.ip_address(identifier)
    except ValueError:
        return False
    return True


def _txt(value: str) -> str:
    """TXT rdata text for one value (ACME values are base64url: no quoting needed, but be safe)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
