"""A requests transport adapter that runs each outgoing request as a fasthystrix command.

::

    session = requests.Session()
    session.mount("https://", fasthystrix.requests.CommandAdapter())
    session.mount("http://", fasthystrix.requests.CommandAdapter())

The same conventions as :mod:`fasthystrix.httpx`: each request is a command named
after its host (``"api.example.com"``, or ``"host:port"`` when the port is not the
scheme's default), or as ``command=`` maps its URL, with at most ``max_hosts`` (100)
circuits of its own before further hosts share ``"<other hosts>"``; the command's
remaining time caps the ``timeout`` passed to the
socket; connection errors, timeouts and responses that ``is_failure`` flags (5xx by
default) count as failures, and a failed response still reaches the caller unless
a fallback answers instead.
"""

from __future__ import annotations

import http
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.exceptions import DecodeError, ProtocolError, ReadTimeoutError, SSLError
from urllib3.util import Timeout

from ._core._context import Context
from ._integrations._http_client import (
    DEFAULT_MAX_HOSTS,
    HOST,
    HOST_PORT,
    OTHER_HOSTS,
    CommandNames,
    FailedResponseError,
    cap_timeout,
    check_options,
    host_command_name,
)
from ._isolation._command import do_c

__all__ = [
    "DEFAULT_MAX_HOSTS",
    "HOST",
    "HOST_PORT",
    "OTHER_HOSTS",
    "CommandAdapter",
    "FailedResponseError",
    "command_name",
    "is_server_error",
    "make_response",
]

_CHUNK_SIZE = 16 * 1024

#: What ``command=`` may be: ``"host"``, ``"host:port"``, one command name, or ``command(url) -> str``.
Command = str | Callable[[str], str]


def _split(request: requests.PreparedRequest) -> tuple[str, str, int | None]:
    url = urlsplit(request.url or "")
    return url.scheme, url.hostname or "", url.port


def _url(request: requests.PreparedRequest) -> str:
    return request.url or ""


def command_name(request: requests.PreparedRequest, command: str = HOST) -> str:
    """The command name of ``request`` by its host: with the port when not the scheme's default
    (``command="host"``, the default), or always (``command="host:port"``)."""
    if command not in (HOST, HOST_PORT):
        raise ValueError(f"command must be {HOST!r} or {HOST_PORT!r}, not {command!r}")
    return host_command_name(*_split(request), command=command)


def is_server_error(response: requests.Response) -> bool:
    """The default ``is_failure``: a 5xx status."""
    return response.status_code >= 500


def make_response(
    request: requests.PreparedRequest,
    status_code: int = 200,
    *,
    content: bytes = b"",
    headers: Mapping[str, str] | None = None,
) -> requests.Response:
    """A complete ``requests.Response`` for ``request``, for a fallback to return."""
    response = requests.Response()
    response.status_code = status_code
    response.headers = CaseInsensitiveDict(headers or {})
    response._content = content
    response._content_consumed = True  # type: ignore[attr-defined]  # private to requests, not in its stubs
    response.url = request.url or ""
    response.request = request
    try:
        response.reason = http.HTTPStatus(status_code).phrase
    except ValueError:
        response.reason = ""
    return response


def _capped(timeout: Any, remaining: float | None) -> Any:
    """The ``timeout`` argument of ``HTTPAdapter.send`` capped at ``remaining`` seconds."""
    if isinstance(timeout, tuple):
        connect, read = timeout
        return (cap_timeout(connect, remaining), cap_timeout(read, remaining))
    if isinstance(timeout, Timeout):
        # read_timeout would raise before the connection starts when a total is set.
        total, connect, read = (
            v if isinstance(v, (int, float)) else None for v in (timeout.total, timeout._connect, timeout._read)
        )
        return Timeout(
            total=None if total is None else cap_timeout(total, remaining),
            connect=cap_timeout(connect, remaining),
            read=cap_timeout(read, remaining),
        )
    return (cap_timeout(timeout, remaining), cap_timeout(timeout, remaining))


class CommandAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` that sends each request as a fasthystrix command.

    ``command``: the command of a request, from its URL: ``"host"`` (the default: the
    host, with the port when not the scheme's default, :func:`command_name`),
    ``"host:port"`` (the port always), any other str (one command for every request),
    or ``command(url) -> str`` (``url`` is the prepared request's URL, a str). ``name``:
    the older form, a str or ``name(request) -> str``, given instead of ``command``.
    ``max_hosts``: at most this many distinct names (100 by default) get a circuit of
    their own, in the order requests first use them; a request whose name would be one
    more runs as :data:`OTHER_HOSTS` (``"<other hosts>"``, logged once). ``None``: no bound.
    ``fallback(request, err) -> requests.Response`` answers when the request fails,
    times out, is rejected or short-circuited (:func:`make_response` builds one);
    without one the error is raised (``CircuitOpenError``, ``MaxConcurrencyError``,
    ``TimeoutError``, or requests' own error), except for a failed response, which is
    returned as is. ``is_failure(response) -> bool`` says which responses count as
    failures (default: status >= 500). The body is read inside the command unless the
    caller asked for ``stream=True``, in which case the command ends with the response
    headers (failed responses are always read). The other arguments are ``HTTPAdapter``'s.
    """

    # What pickling keeps (HTTPAdapter.__getstate__); HTTPAdapter declares it, so no ClassVar.
    __attrs__ = [*HTTPAdapter.__attrs__, "command", "name", "max_hosts", "fallback", "is_failure"]  # noqa: RUF012

    def __init__(
        self,
        *,
        command: Command = HOST,
        name: str | Callable[[requests.PreparedRequest], str] | None = None,
        max_hosts: int | None = DEFAULT_MAX_HOSTS,
        fallback: Callable[[requests.PreparedRequest, BaseException], requests.Response] | None = None,
        is_failure: Callable[[requests.Response], bool] | None = None,
        pool_connections: int = 10,
        pool_maxsize: int = 10,
        max_retries: Any = 0,
        pool_block: bool = False,
    ) -> None:
        self._names = CommandNames(command, name, max_hosts, _split, _url)
        check_options(fallback, is_failure)
        self.command = command
        self.name = name
        self.max_hosts = max_hosts
        self.fallback = fallback
        self.is_failure = is_failure if is_failure is not None else is_server_error
        super().__init__(
            pool_connections=pool_connections, pool_maxsize=pool_maxsize, max_retries=max_retries, pool_block=pool_block
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # type: ignore[misc]  # defined by HTTPAdapter, missing from its stubs
        # The hosts seen so far stay with the original: a copy counts its own.
        self._names = CommandNames(self.command, self.name, self.max_hosts, _split, _url)

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> requests.Response:
        """Send ``request`` as the command of its name; ``timeout`` is capped at the command's time left."""
        name = self._names(request)
        fallback = self.fallback

        def run(ctx: Context) -> requests.Response:
            return self._send(ctx, request, stream, timeout, verify, cert, proxies)

        try:
            if fallback is None:
                response: requests.Response = do_c(Context.background(), name, run)
            else:
                response = do_c(Context.background(), name, run, lambda ctx, err: fallback(request, err))
        except FailedResponseError as err:
            response = err.response
        return response

    def _send(
        self,
        ctx: Context,
        request: requests.PreparedRequest,
        stream: bool,
        timeout: Any,
        verify: Any,
        cert: Any,
        proxies: Any,
    ) -> requests.Response:
        response = super().send(
            request, stream=True, timeout=_capped(timeout, ctx.remaining()), verify=verify, cert=cert, proxies=proxies
        )
        if not stream:
            self._read(ctx, request, response)
        failed = self.is_failure(response)
        if failed and stream:
            self._read(ctx, request, response)
        elif stream and ctx.done():
            # In thread isolation the caller has gone by now: nobody else would close it.
            response.close()
            raise requests.exceptions.ReadTimeout(
                "the command's timeout passed before the response came", request=request, response=response
            )
        if failed:
            raise FailedResponseError(response, response.status_code)
        return response

    @staticmethod
    def _read(ctx: Context, request: requests.PreparedRequest, response: requests.Response) -> None:
        # What Session.send does for stream=False, inside the command. Each socket read gives up at
        # the time left when the request started; checking the deadline between reads also stops
        # a server that trickles its answer.
        chunks = []
        try:
            for chunk in _body_chunks(response):
                chunks.append(chunk)
                if ctx.done():
                    raise requests.exceptions.ReadTimeout(
                        "the command's timeout passed while reading the response", request=request, response=response
                    )
        except BaseException:
            response.close()
            raise
        response._content = b"".join(chunks)
        response._content_consumed = True  # type: ignore[attr-defined]  # private to requests, not in its stubs


def _body_chunks(response: requests.Response) -> Iterator[bytes]:
    """The decoded body as it arrives: ``iter_content``, but without waiting for whole chunks.

    ``iter_content(n)`` blocks until ``n`` bytes have come; urllib3's ``read1`` (2.2+)
    returns what one socket read brings. Errors are translated as ``iter_content`` does.
    """
    read1 = getattr(response.raw, "read1", None)
    if read1 is None:
        yield from response.iter_content(_CHUNK_SIZE)
        return
    try:
        while chunk := read1(_CHUNK_SIZE, decode_content=True):
            yield chunk
    except ProtocolError as exc:
        raise requests.exceptions.ChunkedEncodingError(exc) from exc
    except DecodeError as exc:
        raise requests.exceptions.ContentDecodingError(exc) from exc
    except ReadTimeoutError as exc:
        raise requests.exceptions.ConnectionError(exc) from exc
    except SSLError as exc:
        raise requests.exceptions.SSLError(exc) from exc
