"""The built-in live dashboard: one self-contained HTML page that reads ``hystrix.stream``.

The page lives in ``dashboard/`` as plain ``index.html``, ``dashboard.css`` and
``dashboard.js`` (no build step); :func:`dashboard_page` inlines the stylesheet and
the script so the page is a single document that loads nothing else, and adds a
Content-Security-Policy that allows exactly those two inline blocks.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from importlib import resources

__all__ = ["dashboard_page"]

_STYLESHEET_TAG = '<link rel="stylesheet" href="dashboard.css">'
_SCRIPT_TAG = '<script src="dashboard.js"></script>'
_CHARSET_TAG = '<meta charset="utf-8">'

_PACKAGE = __name__.rpartition(".")[0]

_page: bytes | None = None
_lock = threading.Lock()


def _read(name: str) -> str:
    # One name per joinpath(): several arrived only in Python 3.11.
    return resources.files(_PACKAGE).joinpath("dashboard").joinpath(name).read_text(encoding="utf-8")


def _csp_hash(source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def _replace_once(document: str, tag: str, replacement: str) -> str:
    if document.count(tag) != 1:
        raise RuntimeError(f"dashboard/index.html must contain {tag!r} exactly once")
    return document.replace(tag, replacement)


def _build() -> bytes:
    document = _read("index.html")
    css = _read("dashboard.css")
    js = _read("dashboard.js")
    # Neither file may close its own element early, or the rest would be parsed as HTML.
    if "</style" in css.lower() or "</script" in js.lower():
        raise RuntimeError("dashboard.css/dashboard.js must not contain a closing </style> or </script>")
    style = "\n" + css
    script = "\n" + js
    # The page may only run its own script and style: a command name that slips into markup
    # could not run anything. It may read a stream anywhere (the URL field) and nothing else.
    csp = (
        "default-src 'none'; "
        f"script-src {_csp_hash(script)}; "
        f"style-src {_csp_hash(style)}; "
        "img-src data:; "
        "connect-src *; "
        "base-uri 'none'; "
        "form-action 'none'"
    )
    document = _replace_once(
        document, _CHARSET_TAG, f'{_CHARSET_TAG}\n<meta http-equiv="Content-Security-Policy" content="{csp}">'
    )
    document = _replace_once(document, _STYLESHEET_TAG, f"<style>{style}</style>")
    document = _replace_once(document, _SCRIPT_TAG, f"<script>{script}</script>")
    return document.encode("utf-8")


def dashboard_page() -> bytes:
    """The dashboard as one self-contained UTF-8 HTML document (built once, then cached)."""
    global _page
    page = _page
    if page is None:
        with _lock:
            if _page is None:
                _page = _build()
            page = _page
    return page
