"""httpx transports that run each outgoing request as a fasthystrix command.

::

    client = httpx.Client(transport=fasthystrix.httpx.CommandTransport())
    client = httpx.AsyncClient(transport=fasthystrix.httpx.AsyncCommandTransport())

Each request is a command named after its host (``"api.example.com"``, or
``"host:port"`` when the port is not the scheme's default), so each dependency
gets its own circuit, tickets, timeout and metrics: configure them with
``fasthystrix.configure_command("api.example.com", ...)``. ``command=`` maps a URL
to its command otherwise; at most ``max_hosts`` (100) names get a circuit of their
own, and requests to further hosts share the command ``"<other hosts>"``, so URLs
chosen by someone else cannot create circuits without bound. The time the command
has left caps the request's connect, read, write and pool timeouts, so the
socket gives up when the command does. Connection errors, timeouts and
responses that ``is_failure`` flags (5xx by default) count as failures; the
failed response still reaches the caller unless a fallback answers instead.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import httpx

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
from ._isolation._asyncio import do_async
from ._isolation._command import do_c
from ._registry import get_settings

__all__ = [
    "DEFAULT_MAX_HOSTS",
    "HOST",
    "HOST_PORT",
    "OTHER_HOSTS",
    "AsyncCommandTransport",
    "CommandTransport",
    "FailedResponseError",
    "command_name",
    "is_server_error",
]

_TIMEOUT_KEYS = ("connect", "read", "write", "pool")

#: What ``command=`` may be: ``"host"``, ``"host:port"``, one command name, or ``command(url) -> str``.
Command = str | Callable[[httpx.URL], str]


def _split(request: httpx.Request) -> tuple[str, str, int | None]:
    url = request.url
    return url.scheme, url.raw_host.decode("ascii"), url.port


def _url(request: httpx.Request) -> httpx.URL:
    return request.url


def command_name(request: httpx.Request, command: str = HOST) -> str:
    """The command name of ``request`` by its host: with the port when not the scheme's default
    (``command="host"``, the default), or always (``command="host:port"``)."""
    if command not in (HOST, HOST_PORT):
        raise ValueError(f"command must be {HOST!r} or {HOST_PORT!r}, not {command!r}")
    return host_command_name(*_split(request), command=command)


def _names(command: object, name: object, max_hosts: object) -> CommandNames:
    return CommandNames(command, name, max_hosts, _split, _url)


def is_server_error(response: httpx.Response) -> bool:
    """The default ``is_failure``: a 5xx status."""
    return response.status_code >= 500


def _with_timeout(request: httpx.Request, remaining: float | None) -> httpx.Request:
    """A copy of ``request`` whose timeouts are capped at ``remaining`` seconds.

    A copy, so that the caller's request keeps its own timeouts (if it is sent again).
    """
    timeouts = request.extensions.get("timeout") or {}
    capped = {key: cap_timeout(timeouts.get(key), remaining) for key in _TIMEOUT_KEYS}
    return httpx.Request(
        request.method,
        request.url,
        headers=request.headers,
        stream=request.stream,
        extensions={**request.extensions, "timeout": capped},
    )


def _buffered(response: httpx.Response, body: bytes) -> httpx.Response:
    """A fresh, unread response carrying ``body``, for the client to wrap as it wraps any other."""
    # Not response.read(): that would leave the client's own stream wrapper unread, so its
    # response would never get .elapsed. The body stays as sent (still content-encoded).
    return httpx.Response(
        response.status_code,
        headers=response.headers,
        stream=httpx.ByteStream(body),
        extensions=response.extensions,
    )


def _deadline_passed(request: httpx.Request) -> httpx.ReadTimeout:
    return httpx.ReadTimeout("the command's timeout passed while reading the response", request=request)


class CommandTransport(httpx.BaseTransport):
    """An ``httpx`` transport that runs each request through ``transport`` as a fasthystrix command.

    ``command``: the command of a request, from its URL: ``"host"`` (the default: the
    host, with the port when not the scheme's default, :func:`command_name`),
    ``"host:port"`` (the port always), any other str (one command for every request),
    or ``command(url) -> str`` (``url`` is the ``httpx.URL``). ``name``: the older form,
    a str or ``name(request) -> str``, given instead of ``command``.
    ``max_hosts``: at most this many distinct names (100 by default) get a circuit of
    their own, in the order requests first use them; a request whose name would be one
    more runs as :data:`OTHER_HOSTS` (``"<other hosts>"``, logged once). ``None``: no bound.
    ``fallback(request, err) -> httpx.Response`` answers when the request fails,
    times out, is rejected or short-circuited; without one the error is raised
    (``CircuitOpenError``, ``MaxConcurrencyError``, ``TimeoutError``, or httpx's own
    error), except for a failed response, which is returned as is.
    ``is_failure(response) -> bool`` says which responses count as failures (default:
    status >= 500). With ``read_body`` (the default) the body is read inside the
    command, so a slow or broken body counts as a timeout or failure; with
    ``read_body=False`` the command ends with the response headers and the body
    streams afterwards, outside the command (failed responses are always read).
    Closing the transport closes ``transport``.
    """

    def __init__(
        self,
        transport: httpx.BaseTransport | None = None,
        *,
        command: Command = HOST,
        name: str | Callable[[httpx.Request], str] | None = None,
        max_hosts: int | None = DEFAULT_MAX_HOSTS,
        fallback: Callable[[httpx.Request, BaseException], httpx.Response] | None = None,
        is_failure: Callable[[httpx.Response], bool] | None = None,
        read_body: bool = True,
    ) -> None:
        self._names = _names(command, name, max_hosts)
        check_options(fallback, is_failure)
        self.transport = transport if transport is not None else httpx.HTTPTransport()
        self.command = command
        self.name = name
        self.max_hosts = max_hosts
        self.fallback = fallback
        self.is_failure = is_failure if is_failure is not None else is_server_error
        self.read_body = read_body

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` as the command of its name."""
        name = self._names(request)
        fallback = self.fallback

        def run(ctx: Context) -> httpx.Response:
            return self._send(ctx, request)

        try:
            if fallback is None:
                response: httpx.Response = do_c(Context.background(), name, run)
            else:
                response = do_c(Context.background(), name, run, lambda ctx, err: fallback(request, err))
        except FailedResponseError as err:
            response = err.response
        return response

    def _send(self, ctx: Context, request: httpx.Request) -> httpx.Response:
        response = self.transport.handle_request(_with_timeout(request, ctx.remaining()))
        read = self.read_body
        if read:
            response = self._read(ctx, request, response)
        failed = self.is_failure(response)
        if failed and not read:
            response = self._read(ctx, request, response)
        elif not read and ctx.done():
            # In thread isolation the caller has gone by now: nobody else would close it.
            response.close()
            raise _deadline_passed(request)
        if failed:
            raise FailedResponseError(response, response.status_code)
        return response

    @staticmethod
    def _read(ctx: Context, request: httpx.Request, response: httpx.Response) -> httpx.Response:
        # Each socket read gives up at the time left when the request started; checking the
        # deadline between chunks also stops a server that trickles its answer.
        if response.is_stream_consumed:
            return response  # read already by its transport (httpx.MockTransport): nothing to wait for
        chunks = []
        try:
            for chunk in response.iter_raw():
                chunks.append(chunk)
                if ctx.done():
                    raise _deadline_passed(request)
        finally:
            response.close()
        return _buffered(response, b"".join(chunks))

    def close(self) -> None:
        """Close the wrapped transport."""
        self.transport.close()


class AsyncCommandTransport(httpx.AsyncBaseTransport):
    """The asyncio twin of :class:`CommandTransport`, running each request with ``fasthystrix.do_async``.

    At the command's timeout the request is cancelled (its connection closed), as
    ``do_async`` cancels any ``run``; the request's timeouts are also capped at the
    command's timeout. ``fallback(request, err)`` may be sync or async. Cancelling
    the awaiting task cancels the request (event ``context_canceled``) and the
    ``CancelledError`` propagates. The other options are :class:`CommandTransport`'s.
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        command: Command = HOST,
        name: str | Callable[[httpx.Request], str] | None = None,
        max_hosts: int | None = DEFAULT_MAX_HOSTS,
        fallback: Callable[[httpx.Request, BaseException], httpx.Response | Awaitable[httpx.Response]] | None = None,
        is_failure: Callable[[httpx.Response], bool] | None = None,
        read_body: bool = True,
    ) -> None:
        self._names = _names(command, name, max_hosts)
        check_options(fallback, is_failure)
        self.transport = transport if transport is not None else httpx.AsyncHTTPTransport()
        self.command = command
        self.name = name
        self.max_hosts = max_hosts
        self.fallback = fallback
        self.is_failure = is_failure if is_failure is not None else is_server_error
        self.read_body = read_body

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` as the command of its name."""
        name = self._names(request)
        fallback = self.fallback
        timeout = get_settings(name).timeout_ns / 1e9
        deadline = time.monotonic() + timeout

        async def run() -> httpx.Response:
            return await self._send(timeout, deadline, request)

        try:
            if fallback is None:
                response: httpx.Response = await do_async(name, run)
            else:
                response = await do_async(name, run, lambda err: fallback(request, err))
        except FailedResponseError as err:
            response = err.response
        return response

    async def _send(self, timeout: float, deadline: float, request: httpx.Request) -> httpx.Response:
        # The whole command timeout from now, not the time left: do_async cancels the request at
        # the deadline, and the socket's own timeout must not beat it (that would be a failure).
        response = await self.transport.handle_async_request(_with_timeout(request, timeout))
        read = self.read_body
        if read:
            response = await self._read(response)
        failed = self.is_failure(response)
        if failed and not read:
            response = await self._read(response)
        elif not read and time.monotonic() >= deadline:
            # do_async discards a value that comes back after the timeout: nobody would close it.
            await response.aclose()
            raise _deadline_passed(request)
        if failed:
            raise FailedResponseError(response, response.status_code)
        return response

    @staticmethod
    async def _read(response: httpx.Response) -> httpx.Response:
        # No deadline check between chunks: do_async cancels the whole run at the timeout.
        if response.is_stream_consumed:
            return response  # read already by its transport (httpx.MockTransport)
        chunks = []
        try:
            async for chunk in response.aiter_raw():
                chunks.append(chunk)
        finally:
            await response.aclose()
        return _buffered(response, b"".join(chunks))

    async def aclose(self) -> None:
        """Close the wrapped transport."""
        await self.transport.aclose()
