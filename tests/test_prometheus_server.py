"""Beyond one host: a real Prometheus server scraping two instances, and the examples' alerting
rules (examples/prometheus/) and Grafana dashboard (examples/grafana/) evaluated on it.

Debian's ``prometheus`` (and ``promtool``) run on loopback with a temporary config and storage,
scraping every second two processes (tests/prometheus_instance.py) that serve fasthystrix's
Prometheus metrics and drive their commands to known outcomes. Every PromQL expression of the
dashboard and of the rules is checked three ways: Prometheus accepts it; its value over the two
instances is what the values of each instance queried alone make it (a sum is their sum, a
maximum their maximum, a ratio of sums lies between theirs); and with each ``rate()`` replaced by
the counter itself, it gives exactly what the counts driven give, over the fleet and per instance.
Without the binaries these tests skip, unless ``FASTHYSTRIX_REQUIRE_PROMETHEUS=1`` (CI) makes that
a failure. Everything waits by polling, never by sleeping a fixed time.
"""

from __future__ import annotations

import json
import math
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from support import EXAMPLES, WAIT

ALERTS = EXAMPLES / "prometheus" / "alerts.yml"
ALERTS_TEST = EXAMPLES / "prometheus" / "alerts_test.yml"
PROMETHEUS_CONFIG = EXAMPLES / "prometheus" / "prometheus.yml"
DASHBOARD = EXAMPLES / "grafana" / "fasthystrix-dashboard.json"
INSTANCE = Path(__file__).resolve().parent / "prometheus_instance.py"

JOB = "shop"
REQUESTS = (
    "success",
    "failure",
    "timeout",
    "rejected",
    "short-circuit",
    "context_canceled",
    "context_deadline_exceeded",
)
ERRORS = ("failure", "timeout", "rejected", "short-circuit")
EVENTS = (*REQUESTS, "fallback-success", "fallback-failure", "bad-request")
COMMANDS = ("prices", "search", "payments")

# What each instance does, as tests/prometheus_instance.py reads it: [outcome, count, ms].
# Over the fleet, prices has 28 requests with 15 errors (54 %) and 4 rejections (14 %), 3 calls
# held in run (1 on a, 2 on b), and b forced its circuit open; search and payments have 10
# requests each, too few for the error alert; search is open (tripped) on a only, payments on
# both. Each aggregate has instances that differ, so a max or an average in place of a sum shows.
PLANS: dict[str, dict[str, Any]] = {
    "a": {
        "prices": {
            "config": {"max_concurrent_requests": 10},
            "steps": [
                ["success", 5, 20],
                ["failure", 3, 10],
                ["fallback-failure", 1, 10],
                ["timeout", 1, 1500],
                ["rejected", 4, 0],
                ["hold", 1, 0],
            ],
        },
        "search": {"config": {"request_volume_threshold": 4}, "steps": [["failure", 4, 10], ["short-circuit", 2, 0]]},
        "payments": {"config": {"request_volume_threshold": 4}, "steps": [["failure", 4, 30], ["short-circuit", 1, 0]]},
    },
    "b": {
        "prices": {
            "config": {"max_concurrent_requests": 10},
            "steps": [
                ["success", 7, 40],
                ["failure", 1, 5],
                ["timeout", 2, 1500],
                ["context_canceled", 1, 0],
                ["hold", 2, 0],
                ["force-open", 1, 0],
                ["short-circuit", 3, 0],
            ],
        },
        "search": {"config": {}, "steps": [["success", 4, 20]]},
        "payments": {"config": {"request_volume_threshold": 4}, "steps": [["failure", 4, 50], ["short-circuit", 1, 0]]},
    },
}
# The alerts the real server must show pending (every rule has a `for:` longer than this test).
PENDING = {
    ("FasthystrixCircuitOpen", "search"),
    ("FasthystrixCircuitOpen", "payments"),
    ("FasthystrixCircuitOpenEverywhere", "payments"),
    ("FasthystrixCircuitForcedOpen", "prices"),
    ("FasthystrixHighErrorPercentage", "prices"),
    ("FasthystrixRejections", "prices"),
}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian: apt-get install prometheus)"
        if os.environ.get("FASTHYSTRIX_REQUIRE_PROMETHEUS", "") == "1":
            pytest.fail(f"FASTHYSTRIX_REQUIRE_PROMETHEUS=1 but {message}")
        pytest.skip(message)
    return path


# -- what each instance's metrics must say, from its plan alone ----------------------------------

_EVENTS_OF = {
    "success": ("success",),
    "failure": ("failure", "fallback-success"),
    "fallback-failure": ("failure", "fallback-failure"),
    "timeout": ("timeout",),
    "rejected": ("rejected",),
    "short-circuit": ("short-circuit",),
    "context_canceled": ("context_canceled",),
}


@dataclass
class Instance:
    """One instance's expected metrics, worked out from its plan (not from fasthystrix)."""

    events: dict[str, dict[str, int]] = field(default_factory=dict)
    runs: dict[str, list[float]] = field(default_factory=dict)  # run() durations, seconds
    open: dict[str, int] = field(default_factory=dict)
    forced: dict[str, int] = field(default_factory=dict)
    in_use: dict[str, int] = field(default_factory=dict)
    limit: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_plan(cls, plan: dict[str, Any]) -> Instance:
        out = cls()
        for command, spec in plan.items():
            events = dict.fromkeys(EVENTS, 0)
            runs: list[float] = []
            outcomes = [outcome for outcome, _, _ in spec["steps"]]
            for outcome, count, ms in spec["steps"]:
                for event in _EVENTS_OF.get(outcome, ()):
                    events[event] += count
                if outcome in ("success", "failure", "fallback-failure"):
                    runs += [ms / 1000] * count
            out.events[command] = events
            out.runs[command] = runs
            # The clock only moves in runs, never a sleep window: a circuit that short-circuited stays open.
            out.open[command] = int("short-circuit" in outcomes or "force-open" in outcomes)
            out.forced[command] = int("force-open" in outcomes)
            out.in_use[command] = sum(count for outcome, count, _ in spec["steps"] if outcome == "hold")
            out.limit[command] = spec["config"].get("max_concurrent_requests", 10)
        return out


EXPECTED = {name: Instance.from_plan(plan) for name, plan in PLANS.items()}

# -- every expression of the dashboard and the rules: how it combines over instances, and its model --

Labels = frozenset[tuple[str, str]]
# A value, or the closed interval it must lie in (a percentile between the extreme durations).
Values = dict[Labels, float | tuple[float, float]]
Model = Callable[[list[Instance]], Values]


def labels(**items: str) -> Labels:
    return frozenset(items.items())


def count(instances: list[Instance], command: str, events: tuple[str, ...]) -> int:
    return sum(i.events[command][e] for i in instances for e in events)


def per_command(value: Callable[[str], float], job: bool = False) -> Values:
    extra = {"job": JOB} if job else {}
    return {labels(command=c, **extra): value(c) for c in COMMANDS}


def _latency(instances: list[Instance]) -> Values:
    out: Values = {}
    for c in COMMANDS:
        runs = [r for i in instances for r in i.runs[c]]
        for q in ("0.5", "0.9", "0.99", "1"):
            # p100 is the exact maximum; the others lie between the shortest and the longest run.
            out[labels(command=c, quantile=q)] = max(runs) if q == "1" else (min(runs), max(runs))
    return out


def _where(values: Values, keep: Callable[[float], bool]) -> Values:
    return {k: v for k, v in values.items() if isinstance(v, float | int) and keep(v)}


def _error_alert(instances: list[Instance], events: tuple[str, ...], threshold: float) -> Values:
    return {
        labels(job=JOB, command=c): 100 * count(instances, c, events) / count(instances, c, REQUESTS)
        for c in COMMANDS
        if 100 * count(instances, c, events) / count(instances, c, REQUESTS) > threshold
        and count(instances, c, REQUESTS) >= 20
    }


def _open_unforced(instances: list[Instance]) -> Values:
    return per_command(lambda c: sum(i.open[c] - i.forced[c] for i in instances), job=True)


# Keyed "<panel title> <refId>" for the dashboard's targets and "rule <alert>" for the rules. Kinds:
# "sum" (the fleet's value is the instances' sum; a series missing on one counts 0), "max", "ratio"
# (a ratio of sums: between the instances' ratios), "filtered" (a thresholded ratio: no relation).
MODELS: dict[str, tuple[str, Model]] = {
    "Requests/s by event A": (
        "sum",
        lambda s: {labels(event=e): sum(count(s, c, (e,)) for c in COMMANDS) for e in EVENTS},
    ),
    "Error % A": ("ratio", lambda s: per_command(lambda c: 100 * count(s, c, ERRORS) / count(s, c, REQUESTS))),
    "Error % B": ("ratio", lambda s: per_command(lambda c: 100 * count(s, c, ERRORS) / count(s, c, REQUESTS))),
    "Circuit state A": ("sum", lambda s: per_command(lambda c: sum(i.open[c] for i in s))),
    "Circuit state B": ("sum", lambda s: per_command(lambda c: sum(i.forced[c] for i in s))),
    "Circuit state C": ("sum", lambda s: per_command(lambda c: len(s))),
    "Tickets in use A": ("sum", lambda s: per_command(lambda c: sum(i.in_use[c] for i in s))),
    "Tickets in use B": ("sum", lambda s: per_command(lambda c: sum(i.limit[c] for i in s))),
    "Rejections and short-circuits /s A": (
        "sum",
        lambda s: {
            labels(command=c, event=e): count(s, c, (e,)) for c in COMMANDS for e in ("rejected", "short-circuit")
        },
    ),
    "Run latency A": ("max", _latency),
    "Run latency B": (
        "ratio",
        lambda s: per_command(lambda c: sum(r for i in s for r in i.runs[c]) / sum(len(i.runs[c]) for i in s)),
    ),
    "rule FasthystrixCircuitOpen": ("sum", lambda s: _where(_open_unforced(s), lambda v: v > 0)),
    "rule FasthystrixCircuitOpenEverywhere": (
        "filtered",
        lambda s: {k: v for k, v in _open_unforced(s).items() if v == len(s)},
    ),
    "rule FasthystrixCircuitForcedOpen": (
        "sum",
        lambda s: _where(per_command(lambda c: sum(i.forced[c] for i in s), job=True), lambda v: v > 0),
    ),
    "rule FasthystrixHighErrorPercentage": ("filtered", lambda s: _error_alert(s, ERRORS, 25)),
    "rule FasthystrixRejections": ("filtered", lambda s: _error_alert(s, ("rejected",), 5)),
}

# -- reading the examples -------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    with DASHBOARD.open(encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def dashboard_expressions() -> dict[str, str]:
    return {f"{p['title']} {t['refId']}": t["expr"] for p in dashboard()["panels"] for t in p["targets"]}


# Grafana's variables, as the dashboard sees them over this test's fleet ("All" is ".*").
_GRAFANA = {"$job": JOB, "$command": ".*", "$__rate_interval": "5m"}
_SELECTOR = re.compile(r"\b(fasthystrix_[a-z_]+)(?:\{([^}]*)\})?")
_RATE = re.compile(r"\b(?:rate|increase)\((fasthystrix_[a-z_]+(?:\{[^}]*\})?)\[[^\]]+\]\)")


def with_variables(expr: str) -> str:
    for name, value in _GRAFANA.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, expr
    return expr


def on_instance(expr: str, instance: str) -> str:
    """``expr`` with every selector restricted to one instance."""

    def restrict(m: re.Match[str]) -> str:
        matchers = f"{m[2]}, " if m[2] else ""
        return f'{m[1]}{{{matchers}instance="{instance}"}}'

    return _SELECTOR.sub(restrict, expr)


def counters_instead_of_rates(expr: str) -> str:
    """``rate(c[w])`` and ``increase(c[w])`` replaced by ``c``: what the counts since the start give."""
    return _RATE.sub(r"\1", expr)


# -- the servers --------------------------------------------------------------------------------


class InstanceProcess:
    """tests/prometheus_instance.py in a process of its own, read line by line."""

    def __init__(self, name: str, log: Path) -> None:
        self.name = name
        self.log_path = log
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(INSTANCE), json.dumps(PLANS[name])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self.port = int(self.expect("listening").split()[1])
        except BaseException:
            self.stop()
            raise

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put("")  # the end

    def expect(self, word: str) -> str:
        try:
            line = self.lines.get(timeout=WAIT)
        except queue.Empty:
            line = ""
        if not line.startswith(word):
            pytest.fail(f"instance {self.name}: expected {word!r}, got {line!r}; its stderr:\n{self.stderr()}")
        return line

    def stderr(self) -> str:
        self._log.flush()
        return self.log_path.read_text()[-4000:]

    def stop(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()  # the instance's cue to end
            self.proc.wait(WAIT)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(WAIT)
            self._reader.join(WAIT)  # reads to the end of stdout, which the exit closed
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self._log.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PrometheusServer:
    """Debian's prometheus on loopback, scraping ``targets`` every second and evaluating alerts.yml."""

    def __init__(self, binary: str, workdir: Path, targets: list[str]) -> None:
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": targets}]}],
        }
        config_path = workdir / "prometheus.yml"
        config_path.write_text(json.dumps(config))  # JSON is YAML
        self.log_path = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None
        # A free port may be taken again before prometheus binds it: then start over on another.
        for attempt in range(3):
            port = _free_port()
            self.url = f"http://127.0.0.1:{port}"
            with self.log_path.open("wb") as log:
                self.proc = subprocess.Popen(
                    [
                        binary,
                        f"--config.file={config_path}",
                        f"--storage.tsdb.path={workdir / f'data-{attempt}'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                        "--log.level=warn",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            if self._wait_ready():
                return
            self.stop()
        pytest.fail(f"prometheus did not start; its log:\n{self.log()}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=5) as response:
                    if response.status == 200:
                        return True
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.05)
        return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def get(self, path: str, **params: str) -> Any:
        """The ``data`` of a successful API answer; anything else fails the test with Prometheus's error."""
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=WAIT) as response:
                status = response.status
                body = json.loads(response.read())
        except urllib.error.HTTPError as err:
            status, body = err.code, json.loads(err.read() or b"{}")
            err.close()
        if status != 200 or body.get("status") != "success":
            pytest.fail(f"{path} {params}: HTTP {status}, {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> dict[Labels, float]:
        params = {"query": expr} if at is None else {"query": expr, "time": repr(at)}
        data = self.get("/api/v1/query", **params)
        assert data["resultType"] == "vector", (expr, data["resultType"])
        return {frozenset(r["metric"].items()): float(r["value"][1]) for r in data["result"]}

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(WAIT)


def poll(condition: Callable[[], object], what: str, server: PrometheusServer) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {WAIT:g} s; prometheus log:\n{server.log()}")
        time.sleep(0.1)


@dataclass
class Fleet:
    prometheus: PrometheusServer
    instances: dict[str, str]  # name -> Prometheus's instance label
    at: float  # when every query is evaluated: both instances' last scrapes by then hold all they did

    def query(self, expr: str) -> dict[Labels, float]:
        return self.prometheus.query(expr, self.at)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    binary = _tool("prometheus")
    workdir = tmp_path_factory.mktemp("prometheus")
    instances: list[InstanceProcess] = []
    server: PrometheusServer | None = None
    try:
        for name in PLANS:
            instances.append(InstanceProcess(name, workdir / f"instance-{name}.log"))
        addresses = {i.name: f"127.0.0.1:{i.port}" for i in instances}
        server = PrometheusServer(binary, workdir, list(addresses.values()))
        prometheus = server
        series = len(PLANS) * len(COMMANDS) * len(EVENTS)

        checked_at = 0.0

        def scraped(expected: Callable[[str, str, str], int]) -> bool:
            nonlocal checked_at
            checked_at = time.time()
            got = prometheus.query("fasthystrix_events_total", checked_at)
            values = {(dict(k)["instance"], dict(k)["command"], dict(k)["event"]): v for k, v in got.items()}
            return len(values) == series and all(
                v == expected(instance, command, event) for (instance, command, event), v in values.items()
            )

        # Scraped once with every counter at 0, so that rate() sees the counts arrive.
        poll(lambda: scraped(lambda *_: 0), "both instances scraped before they drive their commands", server)
        for instance in instances:
            assert instance.proc.stdin is not None
            instance.proc.stdin.write("drive\n")
            instance.proc.stdin.flush()
        for instance in instances:
            instance.expect("driven")
        names = {address: name for name, address in addresses.items()}

        def driven(instance: str, command: str, event: str) -> int:
            return EXPECTED[names[instance]].events[command][event]

        poll(lambda: scraped(driven), "both instances scraped after driving their commands", server)
        # Every query is evaluated at the moment the last scrapes were seen to hold everything.
        yield Fleet(server, addresses, checked_at)
    finally:
        if server is not None:
            server.stop()
        for instance in instances:
            instance.stop()


# -- promtool ---------------------------------------------------------------------------------------


def _promtool(*args: str) -> str:
    result = subprocess.run(
        [_tool("promtool"), *args], capture_output=True, text=True, timeout=WAIT, cwd=EXAMPLES / "prometheus"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


@pytest.mark.prometheus
def test_promtool_checks_the_rules() -> None:
    out = _promtool("check", "rules", str(ALERTS))
    assert f"SUCCESS: {sum(1 for k in MODELS if k.startswith('rule '))} rules found" in out


@pytest.mark.prometheus
def test_promtool_runs_the_rules_unit_tests_and_checks_the_example_config() -> None:
    # alerts_test.yml: each alert fires after its `for:`, with its labels and annotations, and not before.
    assert "SUCCESS" in _promtool("test", "rules", str(ALERTS_TEST))
    assert "is valid prometheus config file syntax" in _promtool("check", "config", str(PROMETHEUS_CONFIG))


# -- the dashboard's JSON ----------------------------------------------------------------------------


def test_dashboard_is_a_grafana_dashboard_with_every_target_modelled() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 38
    assert board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["command"]["type"] == "query"
    assert variables["command"]["definition"].startswith("label_values(")
    source = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["datasource"] == source, panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == source
            assert 'command=~"$command"' in target["expr"] and 'job=~"$job"' in target["expr"]
            if "rate(" in target["expr"]:
                assert "[$__rate_interval]" in target["expr"]
    for variable in ("job", "command"):
        assert variables[variable]["datasource"] == source
    titles = " ".join(p["title"].lower() for p in board["panels"])
    for subject in ("requests/s", "error %", "circuit state", "tickets in use", "latency", "rejections"):
        assert subject in titles
    # Every target has a model below, and every model a target: a new panel needs its checks.
    assert set(dashboard_expressions()) == {k for k in MODELS if not k.startswith("rule ")}


# -- on the real server --------------------------------------------------------------------------------


@pytest.mark.prometheus
def test_raw_counters_equal_the_counts_driven(fleet: Fleet) -> None:
    total: dict[tuple[str, str], int] = {}
    for name, address in fleet.instances.items():
        got = fleet.query(f'fasthystrix_events_total{{instance="{address}"}}')
        by_event = {(dict(k)["command"], dict(k)["event"]): v for k, v in got.items()}
        want = {(c, e): n for c, events in EXPECTED[name].events.items() for e, n in events.items()}
        assert by_event == want, name
        for key, n in want.items():
            total[key] = total.get(key, 0) + n
        runs = fleet.query(f'fasthystrix_run_duration_seconds_count{{instance="{address}"}}')
        assert {dict(k)["command"]: v for k, v in runs.items()} == {c: len(r) for c, r in EXPECTED[name].runs.items()}
    fleet_wide = fleet.query("sum by (command, event) (fasthystrix_events_total)")
    assert {(dict(k)["command"], dict(k)["event"]): v for k, v in fleet_wide.items()} == total
    up = fleet.query(f'up{{job="{JOB}"}}')
    assert sorted(dict(k)["instance"] for k, v in up.items() if v == 1) == sorted(fleet.instances.values())


@pytest.mark.prometheus
def test_every_metric_the_examples_use_is_exported(fleet: Fleet) -> None:
    exported = set(fleet.prometheus.get("/api/v1/label/__name__/values"))
    used = set(_SELECTOR.findall("\n".join([*dashboard_expressions().values(), *_rule_queries(fleet).values()])))
    assert {name for name, _ in used} <= exported


@pytest.mark.prometheus
def test_dashboard_variables_list_the_fleet(fleet: Fleet) -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    found = {}
    for name in ("job", "command"):
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", variables[name]["definition"])
        assert m is not None, variables[name]["definition"]
        assert variables[name]["query"]["query"] == variables[name]["definition"]
        match = m[1].replace("$job", ".*")
        found[name] = set(fleet.prometheus.get(f"/api/v1/label/{m[2]}/values", **{"match[]": match}))
    assert found == {"job": {JOB}, "command": set(COMMANDS)}


def _rule_queries(fleet: Fleet) -> dict[str, str]:
    """The rules as the server loaded them from alerts.yml (its own parse, printed back)."""
    groups = fleet.prometheus.get("/api/v1/rules")["groups"]
    assert [g["file"] for g in groups] == [str(ALERTS)]
    return {f"rule {r['name']}": r["query"] for g in groups for r in g["rules"]}


def _close(got: dict[Labels, float], want: Values, what: str) -> None:
    assert set(got) == set(want), f"{what}: series {sorted(map(sorted, got))} != {sorted(map(sorted, want))}"
    for key, expected in want.items():
        value = got[key]
        if isinstance(expected, tuple):
            assert expected[0] - 1e-9 <= value <= expected[1] + 1e-9, (what, sorted(key), value, expected)
        else:
            assert value == pytest.approx(expected, rel=1e-9, abs=1e-12), (what, sorted(key), value, expected)


def _combined(kind: str, whole: dict[Labels, float], parts: list[dict[Labels, float]], what: str) -> None:
    """The fleet's value against the instances' values, as ``kind`` says they relate."""
    keys = set().union(*parts)
    if kind == "filtered":
        return
    assert set(whole) == keys, what
    for key, value in whole.items():
        values = [p[key] for p in parts if key in p]
        assert not math.isnan(value) and not any(map(math.isnan, values)), (what, sorted(key))
        if kind == "sum":
            assert value == pytest.approx(sum(values), rel=1e-9, abs=1e-12), (what, sorted(key), value, values)
        elif kind == "max":
            assert value == max(values), (what, sorted(key), value, values)
        else:
            # A ratio of sums is a weighted mean of the instances' ratios, so it lies between them.
            assert min(values) - 1e-9 <= value <= max(values) + 1e-9, (what, sorted(key), value, values)


@pytest.mark.prometheus
def test_the_rules_loaded_are_the_modelled_ones(fleet: Fleet) -> None:
    assert set(_rule_queries(fleet)) == {k for k in MODELS if k.startswith("rule ")}


@pytest.mark.prometheus
@pytest.mark.parametrize("name", sorted(MODELS))
def test_expression_over_the_fleet_and_each_instance(fleet: Fleet, name: str) -> None:
    kind, model = MODELS[name]
    source = _rule_queries(fleet) if name.startswith("rule ") else dashboard_expressions()
    expr = with_variables(source[name])
    addresses = list(fleet.instances.values())
    # As written (rates over the last minute): accepted, and the fleet's value follows from each instance's.
    whole = fleet.query(expr)
    parts = [fleet.query(on_instance(expr, address)) for address in addresses]
    _combined(kind, whole, parts, name)
    # The counters instead of their rates: exactly what the counts driven give.
    instant = counters_instead_of_rates(expr)
    assert ("rate(" in expr or "increase(" in expr) == (instant != expr)
    _close(fleet.query(instant), model(list(EXPECTED.values())), f"{name}, both instances")
    for instance, address in fleet.instances.items():
        _close(fleet.query(on_instance(instant, address)), model([EXPECTED[instance]]), f"{name}, {instance}")


@pytest.mark.prometheus
def test_alerts_are_pending_on_the_real_server(fleet: Fleet) -> None:
    def pending() -> set[tuple[str, str]]:
        alerts = fleet.prometheus.get("/api/v1/alerts")["alerts"]
        return {(a["labels"]["alertname"], a["labels"]["command"]) for a in alerts}

    poll(lambda: pending() == PENDING, f"the alerts {sorted(PENDING)} pending", fleet.prometheus)
    for alert in fleet.prometheus.get("/api/v1/alerts")["alerts"]:
        assert alert["state"] == "pending"  # every `for:` is longer than this test
        command = alert["labels"]["command"]
        assert alert["labels"]["job"] == JOB
        assert alert["labels"]["severity"] in ("info", "warning", "critical")
        assert command in alert["annotations"]["summary"]
        assert f"command {command}" in alert["annotations"]["description"]
