"""The Prometheus and Alertmanager files, checked by the real tools.

``promtool`` validates the config and the rules and runs the rule unit tests
(deploy/prometheus/tests); ``amtool`` validates the Alertmanager config and its routing; a
real Alertmanager on a loopback port shows one rollback pages once. Everything runs
offline. Without the binaries (Debian: ``prometheus``, ``prometheus-alertmanager``) the tests
skip, except in CI, where a missing tool is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
RULES = ROOT / "deploy" / "prometheus" / "rules" / "rampmon.rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "tests" / "rampmon.rules.test.yml"
ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "rampmon-ramp.json"

# values for the dashboard's template variables when its queries are checked as PromQL
DASHBOARD_VARIABLES = {
    "$experiment": "workflow_assistant",
    "$metric": "tasks",
    "$guardrail": "error_session",
    "$__rate_interval": "1m",
}


def tool(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path is not None:
            return path
    message = f"{' / '.join(names)} not installed"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


# --- promtool ------------------------------------------------------------------------------


def test_prometheus_config_is_valid() -> None:
    out = ok(run(tool("promtool"), "check", "config", str(PROMETHEUS)))
    # the rule_files glob must find the rules (a wrong relative path finds nothing, silently)
    assert "1 rule files found" in out


def test_rules_are_valid() -> None:
    out = ok(run(tool("promtool"), "check", "rules", str(RULES)))
    alerts = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert f"SUCCESS: {len(alerts)} rules found" in out


def test_rule_unit_tests_pass() -> None:
    out = ok(run(tool("promtool"), "test", "rules", str(RULE_TESTS)))
    assert "SUCCESS" in out


def test_rule_unit_tests_catch_a_wrong_expectation(tmp_path: Path) -> None:
    """The promtool tests compare exact annotations: a one-character change fails them."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    shutil.copy(RULES, tmp_path / "rules" / RULES.name)
    text = RULE_TESTS.read_text()
    assert "interval [0.01512, 0.02748]" in text
    broken = tmp_path / "tests" / RULE_TESTS.name
    broken.write_text(text.replace("interval [0.01512, 0.02748]", "interval [0.01512, 0.0275]"))
    result = run(tool("promtool"), "test", "rules", str(broken))
    assert result.returncode != 0
    assert "RampmonGuardrailBreach" in result.stdout + result.stderr


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Grafana only reports a broken query when someone opens the panel: check them all as
    recording rules (variables replaced by sample values)."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]
    assert exprs
    recording = []
    for i, expr in enumerate(exprs):
        for variable, value in DASHBOARD_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"unknown variable in {expr}"
        recording.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recording}]}))
    out = ok(run(tool("promtool"), "check", "rules", str(path)))
    assert f"SUCCESS: {len(recording)} rules found" in out


def dashboard_annotation(name: str) -> str:
    dashboard = json.loads(DASHBOARD.read_text())
    (expr,) = [a["expr"] for a in dashboard["annotations"]["list"] if a.get("name") == name]
    for variable, value in DASHBOARD_VARIABLES.items():
        expr = expr.replace(variable, value)
    return str(expr)


def test_the_rollback_annotation_marks_a_first_rollback_and_no_restart(tmp_path: Path) -> None:
    """The "Rollback fired" annotation, as an alert rule over scraped counter series (every
    15 s). The worker creates each (experiment, decision) child at 0 (streams.metrics), so
    the first rollback is an increase; a worker restart (counter back to 0) or a worker
    joining (a new series at 0) is none. Regression: ``changes(sum(...)[1m:])`` never marked
    a worker's first rollback (the child was born at 1), and marked every restart."""
    (tmp_path / "annotation.rules.yml").write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "dashboard",
                        "rules": [
                            {
                                "alert": "RollbackFired",
                                "expr": dashboard_annotation("Rollback fired"),
                            }
                        ],
                    }
                ]
            }
        )
    )
    series = (
        'rampmon_decisions_fired_total{{job="rampmon",instance="{instance}",'
        'experiment="{experiment}",decision="rollback"}}'
    )

    def case(values: dict[str, str], marked: list[str], unmarked: list[str]) -> dict[str, Any]:
        input_series = []
        for key, v in values.items():
            instance, experiment = key.split("/")
            input_series.append(
                {"series": series.format(instance=instance, experiment=experiment), "values": v}
            )
        checks = [{"eval_time": t, "alertname": "RollbackFired", "exp_alerts": [{"exp_labels": {}}]}
                  for t in marked]  # fmt: skip
        checks += [{"eval_time": t, "alertname": "RollbackFired", "exp_alerts": []}
                   for t in unmarked]  # fmt: skip
        return {"interval": "15s", "input_series": input_series, "alert_rule_test": checks}

    w1, w2 = "worker-1:6066/workflow_assistant", "worker-2:6066/workflow_assistant"
    tests = [
        # the first rollback of worker-1: 0 from its start, 1 from t=60s; worker-2 joins at 0
        case(
            {w1: "0 0 0 0 1x8", w2: "_ _ 0x10"},
            marked=["60s", "75s", "105s"],
            unmarked=["45s", "135s", "165s"],
        ),
        # worker-1 restarts at t=60s after two rollbacks: back to 0, no mark; then it fires
        # a rollback at t=120s, which is marked; another experiment's rollback is not
        case(
            {w1: "2 2 2 2 0 0 0 0 1x4", "worker-1:6066/checkout": "0 0 1x9"},
            marked=["120s", "150s"],
            unmarked=["45s", "60s", "75s", "105s"],
        ),
    ]
    (tmp_path / "annotation.test.yml").write_text(
        yaml.safe_dump(
            {"rule_files": ["annotation.rules.yml"], "evaluation_interval": "15s", "tests": tests}
        )
    )
    out = ok(run(tool("promtool"), "test", "rules", str(tmp_path / "annotation.test.yml")))
    assert "SUCCESS" in out


# --- amtool --------------------------------------------------------------------------------


def routes_test(*labels: str) -> str:
    out = ok(
        run(
            tool("amtool"),
            "config",
            "routes",
            "test",
            f"--config.file={ALERTMANAGER}",
            *labels,
        )
    )
    return out.strip()


def test_alertmanager_config_is_valid() -> None:
    out = ok(run(tool("amtool"), "check-config", str(ALERTMANAGER)))
    assert "SUCCESS" in out


def test_a_guardrail_breach_pages_oncall() -> None:
    receiver = routes_test("experiment=x", "severity=critical", "alertname=RampmonGuardrailBreach")
    assert receiver == "oncall"


def test_worker_warnings_go_to_the_low_urgency_receiver() -> None:
    receiver = routes_test("severity=warning", "alertname=RampmonWorkerDown", "instance=w:6066")
    assert receiver == "oncall-low"
    assert receiver != routes_test("severity=critical", "alertname=RampmonRedisDown")


def effective_group_by(labels: dict[str, str]) -> tuple[str, list[str]]:
    """(receiver, group_by) of the first matching route, inheriting like Alertmanager."""
    route: dict[str, Any] = yaml.safe_load(ALERTMANAGER.read_text())["route"]
    receiver, group_by = route["receiver"], route["group_by"]
    for child in route.get("routes", []):
        matchers = [m.split("=", 1) for m in child.get("matchers", [])]
        if all(labels.get(k) == v.strip('"') for k, v in matchers):
            return child.get("receiver", receiver), child.get("group_by", group_by)
    return receiver, group_by


def test_one_rollback_is_one_group() -> None:
    """A rollback and its breached guardrails share a receiver and a group key; another
    experiment gets its own group; worker-health alerts group together."""
    breach = {
        "alertname": "RampmonGuardrailBreach",
        "experiment": "x",
        "guardrail": "error_session",
        "severity": "critical",
    }
    breach2 = {**breach, "guardrail": "latency_ms_p95"}
    rollback = {"alertname": "RampmonRollbackDecision", "experiment": "x", "severity": "critical"}
    other = {**rollback, "experiment": "y"}

    def group_key(labels: dict[str, str]) -> tuple[str, tuple[str, ...]]:
        receiver, group_by = effective_group_by(labels)
        # amtool resolves the receiver the same way
        assert routes_test(*(f"{k}={v}" for k, v in labels.items())) == receiver
        return receiver, tuple(labels.get(label, "") for label in group_by)

    assert group_key(breach) == group_key(breach2) == group_key(rollback)
    assert group_key(other) != group_key(rollback)
    down1 = {"alertname": "RampmonWorkerDown", "instance": "worker-1:6066", "severity": "warning"}
    down2 = {**down1, "instance": "worker-2:6066"}
    lag = {"alertname": "RampmonConsumerLagHigh", "topic": "telemetry", "severity": "warning"}
    assert group_key(down1) == group_key(down2) == group_key(lag)


# --- a real Alertmanager -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    binary = tool("prometheus-alertmanager", "alertmanager")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "alertmanager.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={ALERTMANAGER}",
            f"--storage.path={tmp_path}",
            f"--web.listen-address=127.0.0.1:{port}",
            # no gossip: a single instance, no port 9094 taken on a shared machine
            "--cluster.listen-address=",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail((tmp_path / "alertmanager.log").read_text())
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def api(url: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{url}{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as r:
        raw = r.read()
    return json.loads(raw) if raw else None


def test_alertmanager_pages_once_per_rollback(alertmanager: str) -> None:
    def alert(name: str, severity: str, **labels: str) -> dict[str, Any]:
        return {
            "labels": {
                "alertname": name,
                "severity": severity,
                "source": "prometheus",
                **labels,
            },
            "annotations": {"summary": name},
        }

    alerts = [
        alert("RampmonGuardrailBreach", "critical", experiment="x", guardrail="error_session"),
        alert("RampmonGuardrailBreach", "critical", experiment="x", guardrail="latency_ms"),
        alert("RampmonRollbackDecision", "critical", experiment="x"),
        alert("RampmonGuardrailBreach", "critical", experiment="y", guardrail="error_session"),
        alert("RampmonWorkerDown", "warning", job="rampmon", instance="worker-1:6066"),
        alert("RampmonRedisDown", "critical", job="rampmon", instance="worker-2:6066"),
    ]
    # the worker's own alert of the same breach (alerts/alertmanager.py)
    pushed = alert("RampmonGuardrailBreach", "critical", experiment="x", guardrail="error_session")
    pushed["labels"]["source"] = "rampmon"
    api(alertmanager, "/api/v2/alerts", [*alerts, pushed])

    deadline = time.monotonic() + 10
    while True:
        groups = api(alertmanager, "/api/v2/alerts/groups")
        if sum(len(g["alerts"]) for g in groups) == len(alerts) + 1:
            break
        assert time.monotonic() < deadline, groups
        time.sleep(0.1)

    by_key = {(g["receiver"]["name"], g["labels"].get("experiment", "")): g for g in groups}
    x = by_key[("oncall", "x")]
    assert sorted(a["labels"]["alertname"] for a in x["alerts"]) == [
        "RampmonGuardrailBreach",
        "RampmonGuardrailBreach",
        "RampmonGuardrailBreach",
        "RampmonRollbackDecision",
    ]
    # the rollback is the page: its breaches, from both sources, are inhibited
    for a in x["alerts"]:
        inhibited = a["labels"]["alertname"] == "RampmonGuardrailBreach"
        assert (a["status"]["state"] == "suppressed") == inhibited, a
    # another experiment's breach is not inhibited by x's rollback
    (y,) = by_key[("oncall", "y")]["alerts"]
    assert y["status"]["state"] == "active"
    # worker health has no experiment label: one group per receiver
    assert [a["labels"]["alertname"] for a in by_key[("oncall-low", "")]["alerts"]] == [
        "RampmonWorkerDown"
    ]
    assert [a["labels"]["alertname"] for a in by_key[("oncall", "")]["alerts"]] == [
        "RampmonRedisDown"
    ]
