"""The little HTTP/1.1 the stream server speaks: one request head in, one response out, then close.

A request is its head only: a request line and headers, at most :data:`MAX_HEAD` bytes. A
body is refused (the server has nothing to do with one, and reading past the head is how a
body gets parsed as a second request). ``Host`` must name the server: an IP literal of the
address the client reached, ``localhost`` on loopback, the name the server was bound to, or
a configured name, so a page whose name was re-pointed at this address (DNS rebinding)
cannot read the stream.
"""

from __future__ import annotations

import email.utils
import ipaddress
import re
from collections.abc import Iterable
from http import HTTPStatus

from .._core._errors import safe_repr

__all__ = [
    "MAX_HEAD",
    "BadRequest",
    "Request",
    "allowed_hosts",
    "error_response",
    "head_end",
    "host_allowed",
    "local_names",
    "parse_head",
    "refuse_body",
    "response",
]

#: The longest request head, in bytes: the request line and the headers, up to and including
#: the blank line that ends them. A longer one is answered ``431``.
MAX_HEAD = 8192

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
# Field values: visible characters, spaces, tabs and obs-text; no CR, LF or NUL.
_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
# A host name as URLs write it (RFC 3986 reg-name, without percent-encoding or sub-delims).
_NAME = re.compile(r"[a-z0-9\-._~]+")


class BadRequest(Exception):
    """A request the server refuses: ``status`` and a short reason for the client."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason


class Request:
    """A parsed request head: method, path (without the query), version and headers (lower-case names)."""

    __slots__ = ("headers", "method", "path", "version")

    def __init__(self, method: str, path: str, version: tuple[int, int], headers: dict[str, list[str]]) -> None:
        self.method = method
        self.path = path
        self.version = version
        self.headers = headers

    def header(self, name: str) -> str | None:
        """The one value of header ``name``; ``None`` when absent; :class:`BadRequest` when repeated."""
        values = self.headers.get(name)
        if not values:
            return None
        if len(values) > 1:
            raise BadRequest(400, f"more than one {name} header")
        return values[0]


def head_end(buffer: bytes | bytearray, start: int = 0) -> int:
    """The index just past the blank line that ends the head in ``buffer``, or ``-1``.

    Lines may end in CRLF or a bare LF (RFC 9112 lets a server accept either). ``start``:
    where to begin looking (what was searched before, less the three bytes a split end may span).
    """
    crlf = buffer.find(b"\n\r\n", start)
    lf = buffer.find(b"\n\n", start)
    if crlf < 0:
        return -1 if lf < 0 else lf + 2
    if lf < 0 or crlf < lf:
        return crlf + 3
    return lf + 2


def parse_head(head: bytes) -> Request:
    """Parse a request head (what :func:`head_end` delimits); :class:`BadRequest` if it is not HTTP/1.x."""
    lines = head.split(b"\n")
    lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    while lines and lines[-1] == b"":
        lines.pop()
    while lines and lines[0] == b"":  # empty lines before the request line are allowed
        lines.pop(0)
    if not lines:
        raise BadRequest(400, "no request line")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]):
        raise BadRequest(400, "malformed request line")
    method, target, version_text = parts
    version = _VERSION.fullmatch(version_text)
    if version is None:
        raise BadRequest(400, "malformed HTTP version")
    if version.group(1) != b"1":
        raise BadRequest(505, "only HTTP/1.0 and HTTP/1.1 are served")
    if not target.startswith(b"/") or not _VALUE.fullmatch(target) or b" " in target or b"\t" in target:
        raise BadRequest(400, "the request target must be a path")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            raise BadRequest(400, "folded header lines are not accepted")
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise BadRequest(400, "malformed header line")
        value = value.strip(b" \t")
        if not _VALUE.fullmatch(value):
            raise BadRequest(400, "control characters in a header value")
        headers.setdefault(name.decode("ascii").lower(), []).append(value.decode("latin-1"))
    path = target.split(b"?", 1)[0].decode("latin-1")
    return Request(method.decode("ascii"), path, (1, int(version.group(2))), headers)


def refuse_body(request: Request) -> None:
    """:class:`BadRequest` if the request announces a body (``Content-Length`` > 0 or any ``Transfer-Encoding``)."""
    if "transfer-encoding" in request.headers:
        raise BadRequest(400, "a request body is not accepted")
    length = request.header("content-length")
    if length is not None and (not length.isdigit() or not length.isascii() or int(length) != 0):
        raise BadRequest(400, "a request body is not accepted")


def _split_host(value: str) -> tuple[str, bool]:
    """``(host, is_ip)`` of a ``Host`` value (its port checked and dropped); :class:`BadRequest` if malformed."""
    if value.startswith("["):
        literal, bracket, port = value[1:].partition("]")
        try:
            address = ipaddress.IPv6Address(literal)
        except ValueError:
            raise BadRequest(400, "malformed Host header") from None
        if not bracket or (port and not port.startswith(":")):
            raise BadRequest(400, "malformed Host header")
        _check_port(port[1:])
        return _canonical(address), True
    host, colon, port = value.partition(":")
    if colon:
        _check_port(port)
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]
    if not _NAME.fullmatch(host):
        raise BadRequest(400, "malformed Host header")
    try:
        return _canonical(ipaddress.IPv4Address(host)), True
    except ValueError:
        return host, False


def _check_port(port: str) -> None:
    # RFC 3986 allows an empty port ("host:"); anything else must be a port number.
    if port and not (port.isascii() and port.isdigit() and len(port) <= 5 and int(port) <= 65535):
        raise BadRequest(400, "malformed Host header")


def _canonical(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def local_names(address: str) -> frozenset[str]:
    """The names a client reaching ``address`` (an IP, as the socket gives it) may put in ``Host``."""
    try:
        ip = ipaddress.ip_address(_canonical(ipaddress.ip_address(address.split("%", 1)[0])))
    except ValueError:
        return frozenset()
    return frozenset((str(ip), "localhost") if ip.is_loopback else (str(ip),))


def host_allowed(request: Request, allowed: frozenset[str], local: frozenset[str]) -> None:
    """:class:`BadRequest` unless the request's ``Host`` names ``allowed`` or ``local`` (``"*"`` allows any).

    An HTTP/1.0 request may come without ``Host`` (a browser always sends one); an HTTP/1.1
    request may not (RFC 9112).
    """
    value = request.header("host")
    if value is None:
        if request.version >= (1, 1):
            raise BadRequest(400, "no Host header")
        return
    host, _ = _split_host(value)
    if host not in allowed and host not in local and "*" not in allowed:
        raise BadRequest(400, "unknown Host: add it to allowed_hosts to serve it")


def allowed_hosts(field: str, names: Iterable[str], bound_to: str) -> frozenset[str]:
    """Validate a configured list of host names; the normalised set, with the name the server is bound to.

    Each name is a host name or an IP literal (IPv6 with or without brackets), without a port;
    ``"*"`` allows any ``Host``.
    """
    if isinstance(names, (str, bytes)) or not isinstance(names, Iterable):
        raise TypeError(f"{field} must be a list of host names, not {safe_repr(names)}")
    out: set[str] = set()
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"{field} must hold host names as str, not {safe_repr(name)}")
        host = "*" if name == "*" else _configured(name)
        if host is None:
            raise ValueError(f"{field} must hold host names or IP addresses without a port, got {safe_repr(name)}")
        out.add(host)
    bound = _configured(bound_to)
    if bound is not None:
        out.add(bound)
    return frozenset(out)


def _configured(name: str) -> str | None:
    """The form ``Host`` is compared in of a configured name or IP literal (no port), or ``None``."""
    text = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        host = text.lower().removesuffix(".")
        return host if _NAME.fullmatch(host) else None
    return None if ip.is_unspecified else _canonical(ip)


def response(
    status: int, headers: Iterable[tuple[str, str]] = (), body: bytes = b"", *, send_body: bool = True
) -> bytes:
    """A whole response head (and body): ``Date``, no ``Server`` banner, ``Connection: close``.

    ``Content-Length`` is the body's unless ``headers`` say otherwise (the stream has none: it ends
    when the connection does). ``send_body=False`` (a ``HEAD``) sends the head alone.
    """
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", f"Date: {email.utils.formatdate(usegmt=True)}"]
    lines += [f"{key}: {value}" for key, value in headers]
    lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + body if send_body else head


def error_response(error: BadRequest) -> bytes:
    """The plain-text answer to a refused request."""
    body = f"{error.reason}\n".encode("latin-1", "replace")
    return response(
        error.status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))], body
    )
