"""The README's gunicorn section, as written: ``cd examples && gunicorn -c gunicorn.conf.py
flask_app:app`` serves the Flask example from four workers sharing their circuits."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fasthystrix import _impl
from support import wait_until

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="shared circuits are POSIX only"),
    pytest.mark.skipif(
        not hasattr(_impl.current().CircuitBreaker, "_attach"),
        reason=f"the {_impl.current().name} core cannot share circuits yet",
    ),
]


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_readme_gunicorn_section(tmp_path: Path) -> None:
    readme = (EXAMPLES.parent / "README.md").read_text()
    assert "cd examples && gunicorn -c gunicorn.conf.py flask_app:app" in readme
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    shared = tmp_path / "circuits"
    shared.mkdir(mode=0o700)
    (shared / ("0" * 40 + ".circuit")).write_bytes(b"left over by an earlier run")
    env = dict(os.environ, FASTHYSTRIX_SHARED_DIR=str(shared))
    env.pop("_FASTHYSTRIX_SHARED_DIR_CLEARED", None)
    env["FASTHYSTRIX_NO_EXTENSIONS"] = "0" if _impl.current().name == "compiled" else "1"
    # As the README says, plus a free port instead of 8000 (the command line wins over the file).
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "flask_app:app", "-b", f"127.0.0.1:{port}"],
        cwd=EXAMPLES,
        env=env,
        start_new_session=True,
    )
    try:

        def up() -> bool:
            assert server.poll() is None, f"gunicorn exited with {server.returncode}"
            try:
                return _get(port, "/metrics")[0] == 200
            except OSError:
                return False

        wait_until(up, "the example answering")
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: _get(port, "/api/price")[0], range(60)))
        assert statuses.count(200) == 60
        # The master emptied the directory: the earlier run's file is gone, this run's are there.
        assert not (shared / ("0" * 40 + ".circuit")).exists()
        assert list(shared.glob("*.circuit"))
        # Any worker's scrape counts every worker's requests.
        for _ in range(6):
            scrape = _get(port, "/metrics")[1].decode()
            counts = re.findall(
                r'^fasthystrix_events_total\{command="GET /api/price",event="[^"]+"\} (\S+)$', scrape, re.M
            )
            assert sum(float(c) for c in counts) == 60, scrape[:3000]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
