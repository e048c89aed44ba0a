"""Stub of the compiled ``_wsgi_core`` module; it mirrors its pure twin ``_wsgi_core_py``."""

from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["Exchange", "request_key", "run_command", "serve_wsgi"]

Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], object]]
RequestKey = tuple[str, str, str, str, str]

class Exchange:
    """One request's call of the app: its status, headers and body, captured until the command has ended."""

    app: Any
    environ: Environ
    is_failure: Callable[[int], bool] | None
    status_line: str | None
    headers: list[tuple[str, str]]
    head: list[bytes]
    rest: Any
    result: Iterable[bytes] | None
    raised: BaseException | None
    downstream_start: StartResponse | None
    @property
    def abandoned(self) -> bool: ...
    def __init__(self, app: Any, environ: Environ, is_failure: Callable[[int], bool] | None) -> None: ...
    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any: ...
    def run(self) -> None: ...
    def abandon(self) -> None: ...
    def respond(self, start_response: StartResponse) -> Iterable[bytes]: ...

def request_key(environ: Environ) -> RequestKey: ...
def run_command(
    middleware: Any, name: str, exchange: Exchange, environ: Environ, start_response: StartResponse
) -> Iterable[bytes]: ...
def serve_wsgi(self: Any, environ: Environ, start_response: StartResponse) -> Iterable[bytes]: ...
