"""gunicorn settings for a service whose worker processes share their circuits.

    python -m pip install -e '.[examples]' gunicorn
    cd examples && gunicorn -c gunicorn.conf.py flask_app:app

Every worker maps the circuit files in ``FASTHYSTRIX_SHARED_DIR``: one breaker, one concurrency
limit, one set of settings and one rolling window per command for the whole host, whichever
worker serves a request. The directory holds this server's state only: it is emptied when the
master starts, so a new server does not inherit the last one's open circuits and settings.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

bind = "127.0.0.1:8000"
workers = 4
worker_class = "gthread"
threads = 8

# Set in the master, before any worker starts (and before the app is imported with --preload):
# every process of this server inherits it, and fasthystrix reads it at import.
shared_dir = Path(
    os.environ.setdefault(
        "FASTHYSTRIX_SHARED_DIR",
        os.path.join(tempfile.gettempdir(), f"fasthystrix-{os.getuid()}-{bind.replace(':', '-')}"),
    )
)


def _clear_shared_dir() -> None:
    """Remove the circuit files of an earlier run of this server (never while it runs)."""
    if shared_dir.is_dir():
        for path in shared_dir.glob("*.circuit"):
            path.unlink()


# Here rather than in on_starting: with --preload, gunicorn imports the app (which may create
# circuits) before on_starting runs. Once per master: a HUP reloads this file with workers running.
if os.environ.get("_FASTHYSTRIX_SHARED_DIR_CLEARED") != str(shared_dir):
    _clear_shared_dir()
    os.environ["_FASTHYSTRIX_SHARED_DIR_CLEARED"] = str(shared_dir)
