"""The deployment assets: the Helm chart rendered by a real ``helm`` (from the
``helm-binary`` package) and every manifest validated against the Kubernetes
1.31 schemas; the configuration the chart and the compose stack ship is one
the gateway accepts; the Grafana dashboard only queries metrics the gateway
really exports.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from conftest import _binary

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "switchyard"
DOCKER = ROOT / "deploy" / "docker"
KUBERNETES = "1.31"


def helm() -> str:
    beside = Path(sys.executable).parent / "helm"
    found = str(beside) if beside.exists() else shutil.which("helm")
    assert found, "helm is installed with the Python test requirements (helm-binary)"
    return found


def render(*args: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [helm(), "template", "gw", str(CHART), *args], capture_output=True, text=True, check=False, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def validate(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def check_config(text: str, tmp_path: Path) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    out = subprocess.run(
        [_binary("GATEWAY_BIN"), "check-config", str(path)], capture_output=True, text=True, check=False, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_chart_lints() -> None:
    out = subprocess.run(
        [helm(), "lint", "--strict", str(CHART)], capture_output=True, text=True, check=False, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_default_manifests_are_valid_and_safe(tmp_path: Path) -> None:
    docs = render()
    validate(docs)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount", "PodDisruptionBudget"} <= kinds, kinds

    deployment = by_kind(docs, "Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/readiness"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/liveness"
    security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    assert security.get("runAsNonRoot") is True
    assert container["securityContext"].get("readOnlyRootFilesystem") is True

    config = yaml.safe_load(by_kind(docs, "ConfigMap")[0]["data"]["config.yaml"])
    server = config["server"]
    grace = pod["terminationGracePeriodSeconds"]
    assert grace * 1000 > server["drain_delay_ms"] + server["shutdown_timeout_ms"], (grace, server)
    assert "valid" in check_config(by_kind(docs, "ConfigMap")[0]["data"]["config.yaml"], tmp_path)

    budget = by_kind(docs, "PodDisruptionBudget")[0]
    assert budget["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_autoscaling_redis_and_secrets_render_valid_manifests() -> None:
    docs = render(
        "--set", "autoscaling.enabled=true",
        "--set", "redis.enabled=true",
        "--set", "redis.url=redis://redis:6379/0",
        "--set", "masterKey.value=sk-chart-test",
    )
    validate(docs)
    hpa = by_kind(docs, "HorizontalPodAutoscaler")
    assert hpa, [d["kind"] for d in docs]
    deployment = by_kind(docs, "Deployment")[0]
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0].get("env", [])}
    assert "SWITCHYARD_POLICY__REDIS__URL" in env and "SWITCHYARD_MASTER_KEY" in env, sorted(env)
    # Responses continued on any pod: kept in the same Redis (unless turned off).
    assert env["SWITCHYARD_SERVER__RESPONSES_STORE"]["value"] == "redis", sorted(env)
    off = render(
        "--set", "redis.enabled=true",
        "--set", "redis.url=redis://redis:6379/0",
        "--set", "redis.responses=false",
    )
    env_off = {e["name"] for e in by_kind(off, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0].get("env", [])}
    assert "SWITCHYARD_SERVER__RESPONSES_STORE" not in env_off, sorted(env_off)
    # With Redis the data directory keeps only spend queued during an outage,
    # on the pod's own volume.
    assert env["SWITCHYARD_POLICY__DATA_DIR"]["value"] == "/var/lib/switchyard/data", sorted(env)
    assert "secretKeyRef" in env["SWITCHYARD_MASTER_KEY"]["valueFrom"], "the key comes from a Secret"
    secrets = by_kind(docs, "Secret")
    assert secrets and all("sk-chart-test" not in json.dumps(d.get("metadata", {})) for d in secrets)


def test_server_settings_pass_and_pods_get_no_service_links(tmp_path: Path) -> None:
    docs = render("--set", "config.server.idle_timeout_ms=620000", "--set", "config.server.max_connections=5000")
    config_text = by_kind(docs, "ConfigMap")[0]["data"]["config.yaml"]
    assert yaml.safe_load(config_text)["server"]["idle_timeout_ms"] == 620000
    assert "valid" in check_config(config_text, tmp_path)
    pod = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    assert pod["enableServiceLinks"] is False, "SWITCHYARD_PORT=tcp://… would reach the gateway"
    assert pod["automountServiceAccountToken"] is False


def test_a_master_key_on_several_pods_needs_redis() -> None:
    out = subprocess.run(
        [helm(), "template", "gw", str(CHART), "--set", "masterKey.value=sk-chart-test", "--set", "replicaCount=2"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert out.returncode != 0
    assert "needs Redis" in out.stderr, out.stderr
    assert render("--set", "masterKey.value=sk-chart-test", "--set", "replicaCount=1")
    # A master key set in the gateway's own configuration counts too.
    out = subprocess.run(
        [helm(), "template", "gw", str(CHART), "--set", "config.policy.master_key=os.environ/KEY"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert out.returncode != 0 and "needs Redis" in out.stderr, out.stderr


def render_notes(tmp_path: Path, *args: str) -> str:
    """The chart's NOTES.txt as ``helm install`` prints it: ``helm template``
    leaves NOTES out, so a copy of the chart renders it through ``tpl``."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes-source.txt")
    (chart / "templates" / "notes-rendered.yaml").write_text(
        'notes: {{ tpl (.Files.Get "notes-source.txt") . | toJson }}\n', encoding="utf-8"
    )
    out = subprocess.run(
        [helm(), "template", "gw", str(chart), "--show-only", "templates/notes-rendered.yaml", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    notes = yaml.safe_load(out.stdout)["notes"]
    assert "Switchyard" in notes, notes
    return str(notes)


def test_the_notes_warn_of_a_missing_master_key_only_when_none_is_set(tmp_path: Path) -> None:
    bearer = "authorization: Bearer"
    open_notes = render_notes(tmp_path / "open")
    assert "WARNING: no master key is set" in open_notes
    assert bearer not in open_notes
    for name, args, shown in [
        ("chart", ("--set", "masterKey.value=sk-chart-test", "--set", "replicaCount=1"), "$SWITCHYARD_MASTER_KEY"),
        (
            "config",
            ("--set", "config.policy.master_key=os.environ/KEY", "--set", "replicaCount=1"),
            "<your master key>",
        ),
    ]:
        notes = render_notes(tmp_path / name, *args)
        assert "no master key" not in notes, (name, notes)
        assert f"{bearer} {shown}" in notes, (name, notes)
    # The chart cannot see into a ConfigMap of the user's: it says so.
    theirs = render_notes(tmp_path / "theirs", "--set", "existingConfigMap=my-config")
    assert "unless the ConfigMap my-config sets policy.master_key" in theirs, theirs


def test_values_are_checked_against_the_schema() -> None:
    out = subprocess.run(
        [helm(), "template", "gw", str(CHART), "--set", "replicaCount=many"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert out.returncode != 0
    assert "replicaCount" in out.stderr, out.stderr


def test_the_compose_configuration_is_accepted(tmp_path: Path) -> None:
    compose = yaml.safe_load((DOCKER / "docker-compose.yaml").read_text(encoding="utf-8"))
    assert {"switchyard", "redis", "jaeger", "prometheus", "grafana"} <= set(compose["services"])
    # Its default master key and Grafana's admin/admin face this machine only.
    published = [port for service in compose["services"].values() for port in service.get("ports", [])]
    assert published and all(str(port).startswith("127.0.0.1:") for port in published), published
    # The compose file names Redis by its service name: check the rest of it.
    text = (DOCKER / "switchyard.compose.yaml").read_text(encoding="utf-8")
    config = yaml.safe_load(text)
    config.get("policy", {}).pop("redis", None)
    config.get("cache", {}).pop("redis", None)
    if config.get("cache", {}).get("backend") == "redis":
        config["cache"]["backend"] = "memory"
    config.get("telemetry", {}).pop("request_log", None)
    config.get("policy", {}).pop("data_dir", None)
    assert "valid" in check_config(yaml.safe_dump(config), tmp_path)


def test_the_dashboard_queries_only_exported_metrics(gateway: Any, client: Any) -> None:
    client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "for the dashboard"}])
    for _ in client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "stream"}], stream=True
    ):
        pass
    import httpx

    exported = httpx.get(f"{gateway.url}/metrics", trust_env=False).text
    names = set(re.findall(r"^(switchyard_[a-z_]+)", exported, re.M))
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "switchyard.json").read_text(encoding="utf-8"))
    queries = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    assert len(queries) >= 8, queries
    used = {m for q in queries for m in re.findall(r"switchyard_[a-z_]+", q)}
    # A series appears once it has a value; these need retries, refusals or drops to exist.
    rare = {
        "switchyard_retries_total",
        "switchyard_fallbacks_total",
        "switchyard_cooldowns_total",
        "switchyard_rate_limited_total",
        "switchyard_request_log_dropped_total",
        "switchyard_cache_lookups_total",
        "switchyard_cache_stores_total",
        "switchyard_cache_errors_total",
        "switchyard_cache_entries",
    }
    missing = {m for m in used - rare if m not in names}
    assert not missing, f"the dashboard queries metrics the gateway does not export: {missing}"
    source = (ROOT / "crates" / "switchyard-telemetry" / "src" / "metrics_registry.rs").read_text(encoding="utf-8")
    declared = {f"{n}_total" for n in re.findall(r'describe_counter!\(\s*"([a-z_]+)"', source)}
    declared |= set(re.findall(r'describe_gauge!\(\s*"([a-z_]+)"', source))
    for name in re.findall(r'describe_histogram!\(\s*"([a-z_]+)"', source):
        declared |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    unknown = (used & rare) - declared
    assert not unknown, f"not metrics of the gateway: {unknown}"
