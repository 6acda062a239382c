"""The deployment files agree with the code and with each other (pure: no servers, no tools).

docker-compose.yml, the Dockerfile and deploy/ are configuration nobody executes in the unit
suite, so drift (a renamed metric, a setting that does not exist, a port that moved, an alert
without a runbook section) would only show in production. Each test names what it protects.
``tests/integration/test_promtool.py`` runs promtool and amtool on the same files.
"""

from __future__ import annotations

import fnmatch
import json
import re
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from monitor.config import parse_config
from streams.app import build_app
from streams.cli import DEFAULT_CONFIG, load_config
from streams.metrics import Metrics
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
RULES = DEPLOY / "prometheus" / "rules" / "rampmon.rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "tests" / "rampmon.rules.test.yml"
ALERTMANAGER = DEPLOY / "alertmanager" / "alertmanager.yml"
RUNBOOK = DEPLOY / "RUNBOOK.md"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "rampmon-ramp.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "rampmon.yml"
ARGO_TEMPLATE = DEPLOY / "argo-rollouts" / "analysis-template.yaml"
ARGO_ROLLOUT = DEPLOY / "argo-rollouts" / "rollout.yaml"
FLAGGER = DEPLOY / "flagger" / "canary.yaml"
KUBERNETES = DEPLOY / "kubernetes" / "rampmon.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = ROOT / "pyproject.toml"

RUNBOOK_BASE = "https://github.com/rampmon/rampmon/blob/main/deploy/RUNBOOK.md"
GATE_URL = re.compile(r"^http://rampmon\.rampmon\.svc:6066/experiments/[^/]+/gate$")
METRIC_NAME = re.compile(r"\brampmon_[a-z0-9_]+")

# Settings fields another engineer is adding to streams/settings.py (issue #4); remove this
# allow-list once they are in Settings.
# Alerts the workers push to Alertmanager themselves (alerts/alertmanager.py, source=rampmon);
# Alertmanager routing may name them although no Prometheus rule defines them.
WORKER_PUSHED_ALERTS = frozenset({"RampmonGuardrailBreach", "RampmonSampleRatioMismatch"})

# Names other engineers depend on, with their severities.
REQUIRED_ALERTS = {
    "RampmonGuardrailBreach": "critical",
    "RampmonRollbackDecision": "critical",
    "RampmonPaused": "warning",
    "RampmonWorkerDown": "warning",
    "RampmonConsumerLagHigh": "warning",
    "RampmonProcessingStalled": "warning",
    "RampmonDeadLetters": "warning",
    "RampmonEvaluationStalled": None,
    "RampmonRedisDown": None,
    "RampmonWebhookDeadLetters": None,
}
EXPERIMENT_ALERTS = (
    "RampmonGuardrailBreach",
    "RampmonRollbackDecision",
    "RampmonPaused",
    "RampmonDecisionFenced",
)


# --- helpers -----------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_all_yaml(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def exported_metric_names() -> set[str]:
    """Series names a worker can expose: gauges by name, counters as ``name_total``.

    prometheus_client strips ``_total`` from a counter's family name in ``collect()``, so a
    query for the bare family name would match nothing and is rejected here."""
    registry = CollectorRegistry()
    Metrics(registry)
    return {
        f"{family.name}_total" if family.type == "counter" else family.name
        for family in registry.collect()
    }


def unknown_metrics(texts: list[str]) -> set[str]:
    known = exported_metric_names()
    return {name for text in texts for name in METRIC_NAME.findall(text)} - known


def rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


def alert_rules() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in rules() if "alert" in rule}


def rule_texts() -> list[str]:
    """Every PromQL a rule evaluates: expressions and the template queries of annotations."""
    out = []
    for rule in rules():
        out.append(rule["expr"])
        out.extend(rule.get("annotations", {}).values())
    return out


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries() -> list[str]:
    d = dashboard()
    out = [t["expr"] for p in panels() for t in p.get("targets", [])]
    out += [a["expr"] for a in d["annotations"]["list"] if "expr" in a]
    out += [v["definition"] for v in d["templating"]["list"] if v.get("type") == "query"]
    return out


def compose() -> dict[str, Any]:
    return dict(load_yaml(COMPOSE))


def services() -> dict[str, dict[str, Any]]:
    return dict(compose()["services"])


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of the service's bind mounts (named volumes excluded)."""
    out = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                out.append((volume["source"], volume["target"]))
            continue
        host, container = volume.split(":")[:2]
        if host.startswith((".", "/")):
            out.append((host, container))
    return out


def host_path(host: str) -> Path:
    return (ROOT / host).resolve()


def worker_services() -> dict[str, dict[str, Any]]:
    return {
        name: svc for name, svc in services().items() if (svc.get("command") or [""])[0] == "worker"
    }


def github_anchor(heading: str) -> str:
    """GitHub's heading slug: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def runbook_anchors() -> set[str]:
    return {
        github_anchor(m.group(1))
        for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", RUNBOOK.read_text(), re.MULTILINE)
    }


def by_kind(docs: list[Any], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def shipped_ramp_stages() -> list[float]:
    """The stages below 100 of the shipped experiment: the canary weights must be these."""
    cfg = parse_config((DEPLOY / "experiments.yaml").read_text()).experiments[0]
    return [float(s) for s in cfg.stages if s < 100]


# --- every file parses ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        COMPOSE,
        PROMETHEUS,
        RULES,
        RULE_TESTS,
        ALERTMANAGER,
        DATASOURCES,
        DASHBOARD_PROVIDERS,
        ARGO_TEMPLATE,
        ARGO_ROLLOUT,
        FLAGGER,
        KUBERNETES,
    ],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_yaml_files_parse(path: Path) -> None:
    docs = load_all_yaml(path)
    assert docs and all(isinstance(d, dict) for d in docs)


def test_dashboard_json_parses_with_a_stable_uid() -> None:
    d = dashboard()
    assert d["uid"] == "rampmon-ramp"
    assert 36 <= d["schemaVersion"] <= 41
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


# --- metric names --------------------------------------------------------------------------


def test_the_metric_name_check_catches_an_unknown_name() -> None:
    assert unknown_metrics(["rampmon_nonexistent > 0"]) == {"rampmon_nonexistent"}
    # a counter must be queried with its _total suffix
    assert unknown_metrics(["rate(rampmon_dead_letters[5m])"]) == {"rampmon_dead_letters"}
    assert unknown_metrics(["rate(rampmon_dead_letters_total[5m]) + rampmon_redis_up"]) == set()


def test_rules_use_only_exported_metrics() -> None:
    texts = rule_texts()
    assert any(METRIC_NAME.search(t) for t in texts)
    assert unknown_metrics(texts) == set()


def test_dashboard_uses_only_exported_metrics() -> None:
    assert unknown_metrics(dashboard_queries()) == set()


def test_regression_the_readme_and_runbook_name_only_exported_metrics() -> None:
    # the README's "Time" section named rampmon_attribution_total, a series that never existed
    texts = [(ROOT / "README.md").read_text(), RUNBOOK.read_text()]
    assert all(METRIC_NAME.search(t) for t in texts)
    assert unknown_metrics(texts) == set()


def test_dashboard_shows_the_ramp_view() -> None:
    """Seed 000's ramp view: every one of these series is on the dashboard."""
    used = {name for q in dashboard_queries() for name in METRIC_NAME.findall(q)}
    required = {
        "rampmon_experiment_stage_percent",
        "rampmon_exposures",
        "rampmon_metric_effect",
        "rampmon_metric_effect_lower",
        "rampmon_metric_effect_upper",
        "rampmon_guardrail_effect",
        "rampmon_guardrail_interval_lower",
        "rampmon_guardrail_interval_upper",
        "rampmon_guardrail_margin",
        "rampmon_guardrail_verdict",
        "rampmon_experiment_decision",
        "rampmon_srm_p_value",
        "rampmon_events_processed_total",
        "rampmon_consumer_lag_messages",
        "rampmon_consumer_lag_unknown_partitions",
        "rampmon_processing_lag_seconds",
        "rampmon_dead_letters_total",
        "rampmon_deliveries_total",
        "rampmon_deliveries_dead",
    }
    assert required - used == set()
    queries = dashboard_queries()
    assert any("rate(rampmon_events_processed_total[1m])" in q for q in queries)


@pytest.mark.parametrize(
    "view",
    [
        "current stage",
        "traffic share",
        "primary lift",
        "effect vs margin",
        "verdicts",
        "decision",
        "sample-ratio mismatch",
        "throughput",
        "consumer lag",
        "unknown lag",
        "processing lag",
        "dead letters",
        "deliveries",
    ],
)
def test_dashboard_has_a_panel_for(view: str) -> None:
    titles = [p["title"].lower() for p in panels()]
    assert any(view in t for t in titles), f"no panel titled like {view!r}: {titles}"


def test_dashboard_panels_fit_the_grid_without_overlapping() -> None:
    """Grafana places overlapping panels by pushing one down, so a panel added at a taken
    place ends up somewhere else than its JSON says."""
    boxes = [(p["title"], p["gridPos"]) for p in dashboard()["panels"]]
    assert all(g["x"] >= 0 and g["x"] + g["w"] <= 24 for _, g in boxes)
    for i, (a, ga) in enumerate(boxes):
        for b, gb in boxes[i + 1 :]:
            apart = (
                ga["x"] + ga["w"] <= gb["x"]
                or gb["x"] + gb["w"] <= ga["x"]
                or ga["y"] + ga["h"] <= gb["y"]
                or gb["y"] + gb["h"] <= ga["y"]
            )
            assert apart, f"{a!r} overlaps {b!r}"


def test_dashboard_queries_prometheus_by_uid_and_defines_its_variables() -> None:
    d = dashboard()
    for p in panels():
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "prometheus"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "prometheus", p["title"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    exp = variables["experiment"]
    assert exp["definition"] == "label_values(rampmon_experiment_stage_percent, experiment)"
    assert exp["datasource"]["uid"] == "prometheus"
    used = {
        name
        for text in [*dashboard_queries(), *(p["title"] for p in panels())]
        for name in re.findall(r"\$(\w+)", text)
    }
    builtin = {"__rate_interval", "__interval", "__range"}
    assert used - builtin <= set(variables), used - builtin - set(variables)
    repeated = {p["repeat"] for p in panels() if "repeat" in p}
    assert repeated <= set(variables)


def test_grafana_provisioning_matches_compose() -> None:
    (ds,) = load_yaml(DATASOURCES)["datasources"]
    assert ds["uid"] == "prometheus" and ds["type"] == "prometheus"
    assert ds["url"] == "http://prometheus:9090" and "prometheus" in services()
    (provider,) = load_yaml(DASHBOARD_PROVIDERS)["providers"]
    mounts = dict(bind_mounts(services()["grafana"]))
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    env = env_of(services()["grafana"])
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


# --- alert rules ---------------------------------------------------------------------------


def test_counters_the_alerts_take_increase_of_are_exported_from_the_start() -> None:
    """``increase()`` needs a sample before the first increment: a counter child born at N
    by its first ``inc()`` is no increase, so the alert never sees it. A burst of bad input
    of a new (topic, reason) -- the way a broken producer shows up -- never paged
    RampmonDeadLetters (promtool: a series ``_ _ 5 5x20`` gives increase 0), although the
    rule tests fed it a 0 the worker never exported."""
    registry = build_app(Settings(webhook_secret="x" * 32), load_config(DEFAULT_CONFIG)).registry
    exported = {
        sample.name for family in registry.collect() for sample in family.samples
    }  # fmt: skip
    used = {
        name
        for rule in alert_rules().values()
        for name in re.findall(r"\bincrease\(\s*(rampmon_[a-z0-9_]+)", rule["expr"])
    }
    assert {"rampmon_dead_letters_total", "rampmon_decisions_stage_moved_total"} <= used
    assert used - exported == set(), "no series until the first increment"
    reasons = {
        sample.labels["reason"]
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "rampmon_dead_letters_total"
        and sample.labels["topic"] in {"exposures", "telemetry"}
    }
    assert {"bad_json", "unknown_experiment", "unknown_variant", "misrouted"} <= reasons


def test_the_deliveries_panel_shows_a_first_delivery() -> None:
    """The RUNBOOK checks a rollback's delivery on the *Deliveries* panel, a rate() of
    rampmon_deliveries_total. A (target, outcome) child born at 1 by a worker's first
    delivery -- usually that very rollback -- is no increase: the panel drew it as 0."""
    assert any("rate(rampmon_deliveries_total" in q for q in dashboard_queries())
    registry = build_app(Settings(webhook_secret="x" * 32), load_config(DEFAULT_CONFIG)).registry
    for target in ("webhook", "kafka"):
        for outcome in ("delivered", "failed_attempt"):
            labels = {"target": target, "outcome": outcome}
            assert registry.get_sample_value("rampmon_deliveries_total", labels) == 0.0, labels


def test_required_alerts_exist_with_their_severity() -> None:
    alerts = alert_rules()
    for name, severity in REQUIRED_ALERTS.items():
        assert name in alerts, name
        if severity is not None:
            assert alerts[name]["labels"]["severity"] == severity, name


def test_required_alert_expressions() -> None:
    alerts = alert_rules()

    def squash(expr: str) -> str:
        return re.sub(r"\s+", "", expr)

    assert squash(alerts["RampmonGuardrailBreach"]["expr"]) == squash(
        "max by (experiment, stage, guardrail, variant)"
        ' (rampmon_guardrail_verdict{verdict="breach"}) == 1'
    )
    assert squash(alerts["RampmonRollbackDecision"]["expr"]) == squash(
        'max by (experiment) (rampmon_experiment_decision{decision="rollback"}) == 1'
    )
    assert 'decision="pause"' in alerts["RampmonPaused"]["expr"]
    assert squash(alerts["RampmonWorkerDown"]["expr"]) == squash('up{job="rampmon"} == 0')
    assert alerts["RampmonWorkerDown"]["for"] == "1m"
    assert alerts["RampmonRedisDown"]["for"] == "1m"
    assert alerts["RampmonConsumerLagHigh"]["for"] == "5m"
    assert (
        "sum by (topic) (rampmon_consumer_lag_messages)" in alerts["RampmonConsumerLagHigh"]["expr"]
    )
    assert "increase(rampmon_dead_letters_total[10m])" in alerts["RampmonDeadLetters"]["expr"]


def test_every_alert_follows_the_conventions() -> None:
    alerts = alert_rules()
    assert alerts
    for name, rule in alerts.items():
        labels, annotations = rule.get("labels", {}), rule.get("annotations", {})
        assert name.startswith("Rampmon"), name
        assert labels.get("severity") in {"critical", "warning"}, name
        assert labels.get("source") == "prometheus", name
        assert annotations.get("summary"), name
        assert annotations.get("runbook_url", "").startswith(f"{RUNBOOK_BASE}#"), name


def test_experiment_alerts_keep_the_experiment_label_and_drop_the_instance() -> None:
    alerts = alert_rules()
    for name in EXPERIMENT_ALERTS:
        by = re.search(r"\bby\s*\(([^)]*)\)", alerts[name]["expr"])
        assert by is not None, name
        grouping = {label.strip() for label in by.group(1).split(",")}
        assert "experiment" in grouping and "instance" not in grouping, name


def test_every_runbook_url_has_its_section() -> None:
    anchors = runbook_anchors()
    for name, rule in alert_rules().items():
        fragment = rule["annotations"]["runbook_url"].split("#", 1)[1]
        assert fragment in anchors, f"{name}: no heading for #{fragment} in RUNBOOK.md"
        assert fragment == github_anchor(name), name
    for name in WORKER_PUSHED_ALERTS:
        assert github_anchor(name) in anchors, name


def test_runbook_anchor_check_rejects_a_missing_section() -> None:
    assert github_anchor("RampmonGuardrailBreach") == "rampmonguardrailbreach"
    assert "rampmonnosuchalert" not in runbook_anchors()


def test_every_alert_has_a_firing_and_a_silent_promtool_case() -> None:
    tests = load_yaml(RULE_TESTS)
    assert [(RULE_TESTS.parent / f).resolve() for f in tests["rule_files"]] == [RULES.resolve()]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
            for expected in check.get("exp_alerts") or []:
                # exact expectations: the labels and annotations on-call actually sees
                assert expected["exp_labels"]["source"] == "prometheus"
                assert set(expected["exp_annotations"]) >= {"summary", "runbook_url"}
    names = set(alert_rules())
    assert names - firing == set(), "alerts without a firing test"
    assert names - silent == set(), "alerts without a non-firing test"
    assert (firing | silent) - names == set(), "tests of alerts that do not exist"


# --- Alertmanager --------------------------------------------------------------------------


def test_alertmanager_groups_by_experiment_and_routes_by_severity() -> None:
    am = load_yaml(ALERTMANAGER)
    route = am["route"]
    assert route["group_by"] == ["experiment"]
    for child in route.get("routes", []):
        # a child's own group_by would split one rollback into several pages
        assert child.get("group_by", route["group_by"]) == ["experiment"]
    by_matcher = {tuple(r["matchers"]): r["receiver"] for r in route["routes"]}
    assert by_matcher[('severity="critical"',)] == "oncall"
    assert by_matcher[('severity="warning"',)] not in {"oncall", None}
    receivers = {r["name"]: r for r in am["receivers"]}
    assert {route["receiver"], *by_matcher.values()} <= set(receivers)
    for receiver in receivers.values():
        urls = [w["url"] for w in receiver["webhook_configs"]]
        assert urls == ["http://oncall-receiver:8080/alertmanager"]
    receiver_service = services()["oncall-receiver"]
    assert env_of(receiver_service).get("HTTP_PORT", "8080") == "8080"


def test_rollback_inhibits_breach_and_pause_of_the_same_experiment() -> None:
    am = load_yaml(ALERTMANAGER)
    known = set(alert_rules()) | WORKER_PUSHED_ALERTS
    found = False
    for rule in am["inhibit_rules"]:
        sources = " ".join(rule["source_matchers"])
        targets = " ".join(rule["target_matchers"])
        for name in re.findall(r"Rampmon\w+", sources + " " + targets):
            assert name in known, f"inhibit rule names unknown alert {name}"
        if "RampmonRollbackDecision" in sources:
            found = True
            assert "RampmonGuardrailBreach" in targets and "RampmonPaused" in targets
            assert rule["equal"] == ["experiment"]
    assert found


# --- Prometheus and compose ----------------------------------------------------------------


def test_prometheus_scrapes_the_compose_workers_on_their_web_port() -> None:
    prom = load_yaml(PROMETHEUS)
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "rampmon"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    default_port = Settings.model_fields["web_port"].default
    expected = {
        f"{name}:{env_of(svc).get('RAMPMON_WEB_PORT', default_port)}"
        for name, svc in worker_services().items()
    }
    assert set(worker_services()) == {"worker-1", "worker-2"}
    assert targets == expected
    for name, svc in worker_services().items():
        port = str(env_of(svc).get("RAMPMON_WEB_PORT", default_port))
        assert any(str(p).endswith(f":{port}") for p in svc.get("ports", [])), name


def test_prometheus_finds_its_rules_and_alertmanager_in_the_container() -> None:
    prom = load_yaml(PROMETHEUS)
    (am,) = prom["alerting"]["alertmanagers"]
    assert am["static_configs"][0]["targets"] == ["alertmanager:9093"]
    assert "alertmanager" in services()
    svc = services()["prometheus"]
    mounts = dict(bind_mounts(svc))
    config = mounts["./deploy/prometheus/prometheus.yml"]
    assert f"--config.file={config}" in svc["command"]
    # rule_files are relative to the config file, here and in the container
    rules_dir = mounts["./deploy/prometheus/rules"]
    assert rules_dir == str(Path(config).parent / "rules")
    for pattern in prom["rule_files"]:
        assert list(PROMETHEUS.parent.glob(pattern)) == [RULES]
    am_svc = services()["alertmanager"]
    am_config = dict(bind_mounts(am_svc))["./deploy/alertmanager/alertmanager.yml"]
    assert f"--config.file={am_config}" in am_svc["command"]


def test_every_compose_mount_exists_in_the_repository() -> None:
    for name, svc in services().items():
        for host, _ in bind_mounts(svc):
            assert host_path(host).exists(), f"{name} mounts missing {host}"
            assert host_path(host).is_relative_to(ROOT), f"{name} mounts {host} outside the repo"
        if "build" in svc:
            context = svc["build"] if isinstance(svc["build"], str) else svc["build"]["context"]
            assert (host_path(context) / "Dockerfile").is_file(), name


def test_every_image_is_pinned() -> None:
    for name, svc in services().items():
        image = svc.get("image")
        assert image, f"{name} has no image tag"
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag, f"{name}: {image} has no tag"
        assert tag not in {"latest", "stable", "main"}, f"{name}: {image} is not pinned"
    for path in (ARGO_TEMPLATE, ARGO_ROLLOUT, KUBERNETES):
        for image in re.findall(r"image:\s*(\S+)", path.read_text()):
            assert re.search(r":[\w.-]+$", image) and not image.endswith(":latest"), image
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("FROM "):
            image = line.split()[1]
            assert ":" in image and not image.endswith(":latest"), image


def test_depends_on_conditions_are_satisfiable() -> None:
    svcs = services()
    for name, svc in svcs.items():
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            assert set(deps) <= set(svcs), name
            continue
        for dep, spec in deps.items():
            assert dep in svcs, f"{name} depends on unknown {dep}"
            if spec.get("condition") == "service_healthy":
                assert "healthcheck" in svcs[dep], f"{name} waits for {dep}, which has none"
            if spec.get("condition") == "service_completed_successfully":
                assert svcs[dep].get("restart", "no") == "no", dep


def test_kafka_source_topics_get_the_configured_partitions() -> None:
    kafka = env_of(services()["kafka"])
    init = " ".join(services()["kafka-init"]["command"])
    partitions = Settings.model_fields["partitions"].default
    if kafka.get("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "true") == "false":
        for topic in ("exposures", "telemetry"):
            assert topic in init
        assert f"--partitions {partitions}" in init


def rampmon_env_names() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for name, svc in services().items():
        found[f"compose {name}"] = {k for k in env_of(svc) if k.startswith("RAMPMON_")}
    for path in (KUBERNETES, ARGO_TEMPLATE, DOCKERFILE):
        found[str(path.relative_to(ROOT))] = set(
            re.findall(r"\bRAMPMON_[A-Z0-9_]+", path.read_text())
        )
    return found


def test_every_rampmon_variable_is_a_setting() -> None:
    fields = {f"RAMPMON_{name.upper()}" for name in Settings.model_fields}
    used = rampmon_env_names()
    assert any(used.values())
    for where, names in used.items():
        assert names - fields == set(), f"{where}: not Settings fields"


def test_the_settings_check_would_catch_a_typo() -> None:
    fields = {f"RAMPMON_{name.upper()}" for name in Settings.model_fields}
    assert "RAMPMON_BROKER_URL" in fields and "RAMPMON_BROKER_URI" not in fields


def test_workers_and_simulator_use_the_mounted_config() -> None:
    svcs = services()
    for name in [*worker_services(), "simulator"]:
        svc = svcs[name]
        mounts = dict(bind_mounts(svc))
        assert mounts.get("./deploy/experiments.yaml") == "/etc/rampmon/experiments.yaml", name
        command = svc["command"]
        assert command[command.index("-c") + 1] == "/etc/rampmon/experiments.yaml", name
        env = env_of(svc)
        assert env["RAMPMON_BROKER_URL"] == "kafka://kafka:9092", name
        assert env["RAMPMON_REDIS_URL"] == "redis://redis:6379/0", name
        assert env["RAMPMON_ALERTMANAGER_URL"] == "http://alertmanager:9093", name
    assert svcs["simulator"]["command"][0] == "simulate"


# --- Dockerfile ----------------------------------------------------------------------------


def test_dockerfile_installs_the_package_with_the_rampmon_entrypoint() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11[\w.]*-slim", text, re.MULTILINE)
    assert "pip install ." in text
    assert 'ENTRYPOINT ["rampmon"]' in text
    ignored = {
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for line in text.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            *sources, _ = line.split()[1:]
            for source in sources:
                assert (ROOT / source).exists(), source
                top = source.split("/")[0]
                assert top not in ignored or f"!{source}" in ignored, f"{source} is dockerignored"


def dockerignored(path: str) -> bool:
    """Whether the build context leaves ``path`` out: the last .dockerignore pattern that
    matches it or one of its parent directories wins, and ``!`` patterns re-include."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for line in DOCKERIGNORE.read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            ignored = not negated
    return ignored


def test_the_dockerignore_check_knows_the_exceptions() -> None:
    assert dockerignored("deploy/grafana/dashboards/rampmon-ramp.json")
    assert not dockerignored("deploy/experiments.yaml")
    assert dockerignored("streams/__pycache__/app.cpython-311.pyc")
    assert not dockerignored("streams/app.py")


def test_the_image_build_has_every_package_pyproject_installs() -> None:
    """``pip install .`` in the build stage fails with "package directory 'bench' does not
    exist" when pyproject lists a package that the Dockerfile does not copy (or the
    build context leaves out): `docker compose up --build` never gets an image."""
    packages = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["packages"]
    build_stage = DOCKERFILE.read_text().split("\nFROM ", 2)[1]
    install = build_stage.index("RUN pip install .")
    copied = {
        source.rstrip("/")
        for line in build_stage[:install].splitlines()
        if line.startswith("COPY ") and "--from=" not in line
        for source in line.split()[1:-1]
    }
    for package in packages:
        top = package.split(".")[0]
        assert top in copied, f"the build stage does not COPY {top}/ before pip install ."
        init = ROOT / top / "__init__.py"
        assert init.is_file(), init
        assert not dockerignored(f"{top}/__init__.py"), f"{top}/ is dockerignored"


# --- rollout gates -------------------------------------------------------------------------


def test_argo_analysis_asks_the_rampmon_gate() -> None:
    templates = {
        d["metadata"]["name"]: d for d in by_kind(load_all_yaml(ARGO_TEMPLATE), "AnalysisTemplate")
    }
    gate = templates["rampmon-gate"]
    assert {a["name"] for a in gate["spec"]["args"]} >= {"experiment"}
    (metric,) = gate["spec"]["metrics"]
    web = metric["provider"]["web"]
    assert web["url"] == "http://rampmon.rampmon.svc:6066/experiments/{{args.experiment}}/gate"
    assert GATE_URL.match(web["url"].replace("{{args.experiment}}", "x"))
    assert web["jsonPath"] == "{$.proceed}"
    assert metric["successCondition"] == "result == true"
    assert "interval" in metric and "failureLimit" in metric


def test_argo_rollout_steps_are_the_experiment_stages_each_gated() -> None:
    templates = {d["metadata"]["name"] for d in load_all_yaml(ARGO_TEMPLATE)}
    (rollout,) = by_kind(load_all_yaml(ARGO_ROLLOUT), "Rollout")
    steps = rollout["spec"]["strategy"]["canary"]["steps"]
    weights = [float(s["setWeight"]) for s in steps if "setWeight" in s]
    assert weights == shipped_ramp_stages() == [1, 5, 25, 50]
    for i, step in enumerate(steps):
        if "setWeight" in step:
            after = steps[i + 1]
            assert "analysis" in after or "pause" in after, f"setWeight {step} is not gated"
            if "analysis" in after:
                names = {t["templateName"] for t in after["analysis"]["templates"]}
                assert "rampmon-gate" in names
        if "analysis" in step:
            for t in step["analysis"]["templates"]:
                assert t["templateName"] in templates
    # rampmon's stage is moved to each weight before the traffic is
    set_stage = [
        s["analysis"]["args"]
        for s in steps
        if "analysis" in s and s["analysis"]["templates"][0]["templateName"] == "rampmon-set-stage"
    ]
    stages = [float(a["value"]) for args in set_stage for a in args if a["name"] == "stage"]
    assert stages == weights


def test_flagger_canary_calls_the_gate_at_the_experiment_stages() -> None:
    (canary,) = by_kind(load_all_yaml(FLAGGER), "Canary")
    analysis = canary["spec"]["analysis"]
    assert [float(w) for w in analysis["stepWeights"]] == shipped_ramp_stages()
    hooks = analysis["webhooks"]
    assert {h["type"] for h in hooks} >= {"confirm-rollout", "rollout"}
    for hook in hooks:
        assert GATE_URL.match(hook["url"]), hook["url"]


def test_the_gate_url_resolves_to_the_rampmon_service() -> None:
    docs = load_all_yaml(KUBERNETES)
    (service,) = by_kind(docs, "Service")
    assert service["metadata"]["name"] == "rampmon"
    assert service["metadata"]["namespace"] == "rampmon"
    assert [p["port"] for p in service["spec"]["ports"]] == [6066]
    (deployment,) = by_kind(docs, "Deployment")
    assert deployment["spec"]["selector"]["matchLabels"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    assert service["spec"]["selector"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "worker"
    assert [p["containerPort"] for p in container["ports"]] == [
        Settings.model_fields["web_port"].default
    ]
    assert GATE_URL.match("http://rampmon.rampmon.svc:6066/experiments/workflow_assistant/gate")
    assert not GATE_URL.match("http://rampmon.rampmon.svc:8080/experiments/x/gate")


def test_regression_a_worker_that_has_not_evaluated_yet_ages_from_its_start() -> None:
    """Faust serves /metrics during table recovery but starts the evaluate timer after it:
    the gauge read 0, and RampmonEvaluationStalled paged "has not evaluated guardrails for"
    some 56 years during a long first recovery (deploy review)."""
    before = time.time()
    registry = build_app(Settings(webhook_secret="x" * 32), load_config(DEFAULT_CONFIG)).registry
    started = registry.get_sample_value("rampmon_last_evaluation_timestamp_seconds")
    assert started is not None and before <= started <= time.time()
