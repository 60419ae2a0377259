"""A real Prometheus and Alertmanager (bin/, `make prometheus alertmanager`) configured from the project's sources.

Scrape jobs are what prometheus-operator generates from the chart's rendered ServiceMonitor and
PodMonitor (job and target labels included), pointed at local processes standing in for the pods they
select; rules are the rendered PrometheusRule; Alertmanager's route and receivers are those of
charts/values/kube-prometheus-stack.yaml, the webhook aimed at the local web app, its bearer token
read from a file as from the mounted Secret in the cluster. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import copy
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import requests
import yaml

from tests.monitoring import chart
from tests.services import free_port, stop_process, wait_http

PROMETHEUS = chart.REPO / "bin" / "prometheus"
ALERTMANAGER = chart.REPO / "bin" / "alertmanager"
KPS_VALUES = chart.REPO / "charts" / "values" / "kube-prometheus-stack.yaml"
SECRETS_MOUNT = "/etc/alertmanager/secrets/"  # where the operator mounts alertmanagerSpec.secrets


def _of(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def _selects(selector: dict, labels: dict) -> bool:
    return selector.items() <= labels.items()


def _port_names(containers: list[dict]) -> set[str]:
    return {p.get("name") for c in containers for p in c.get("ports", [])}


def scrape_configs(objects: list[dict], webapp: str, model_servers: dict[str, str]) -> list[dict]:
    """Scrape jobs of the rendered ServiceMonitor and PodMonitor, as prometheus-operator writes them.

    `webapp` is host:port of the web app; `model_servers` maps a KServe component (predictor,
    transformer) to host:port. Each monitor's selector and port must find the chart's own Service,
    Deployment and InferenceService, or this fails: the same link that breaks in the cluster.
    """
    jobs = []
    for monitor in _of(objects, "ServiceMonitor"):
        name, ns = monitor["metadata"]["name"], chart.NAMESPACE
        (service,) = [s for s in _of(objects, "Service") if _selects(monitor["spec"]["selector"]["matchLabels"],
                                                                     s["metadata"].get("labels", {}))]
        (deployment,) = [d for d in _of(objects, "Deployment") if _selects(
            service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])]
        containers = deployment["spec"]["template"]["spec"]["containers"]
        for i, endpoint in enumerate(monitor["spec"]["endpoints"]):
            (port,) = [p for p in service["spec"]["ports"] if p.get("name") == endpoint["port"]]
            assert port["targetPort"] in _port_names(containers), f"no container port {port['targetPort']}"
            labels = {"job": service["metadata"]["name"], "namespace": ns, "service": service["metadata"]["name"],
                      "pod": f"{deployment['metadata']['name']}-local", "container": containers[0]["name"],
                      "endpoint": endpoint["port"]}
            jobs.append(_job(f"serviceMonitor/{ns}/{name}/{i}", endpoint, [(webapp, labels)]))
    for monitor in _of(objects, "PodMonitor"):
        name, ns = monitor["metadata"]["name"], chart.NAMESPACE
        selector = monitor["spec"]["selector"]["matchLabels"]
        (isvc,) = [o for o in _of(objects, "InferenceService")
                   if _selects(selector, {"serving.kserve.io/inferenceservice": o["metadata"]["name"]})]
        # KServe names the pods <isvc>-<component>-...; the predictor's container comes from the ServingRuntime.
        containers = {"predictor": [c for r in _of(objects, "ServingRuntime") for c in r["spec"]["containers"]],
                      "transformer": isvc["spec"]["transformer"]["containers"]}
        for i, endpoint in enumerate(monitor["spec"]["podMetricsEndpoints"]):
            targets = []
            for component, address in model_servers.items():
                assert endpoint["port"] in _port_names(containers[component]), f"{component}: no port {endpoint['port']}"
                targets.append((address, {"job": f"{ns}/{name}", "namespace": ns, "container": "kserve-container",
                                          "pod": f"{isvc['metadata']['name']}-{component}-local",
                                          "endpoint": endpoint["port"]}))
            jobs.append(_job(f"podMonitor/{ns}/{name}/{i}", endpoint, targets))
    return jobs


def _job(job_name: str, endpoint: dict, targets: list[tuple[str, dict]]) -> dict:
    return {
        "job_name": job_name,
        "scrape_interval": endpoint["interval"],
        "scrape_timeout": endpoint["interval"],
        "metrics_path": endpoint["path"],
        "honor_labels": False,
        "static_configs": [{"targets": [address], "labels": labels} for address, labels in targets],
    }


def alertmanager_config(webapp_url: str, secrets_dir: Path, timing: dict[str, str]) -> dict:
    """Alertmanager's config of the kube-prometheus-stack values: the webhook's host becomes the local web
    app (its path stays), the token file moves under `secrets_dir`, and `timing` (group_wait,
    group_interval, repeat_interval) replaces the cluster's minutes and hours on every route."""
    config = copy.deepcopy(yaml.safe_load(KPS_VALUES.read_text())["alertmanager"]["config"])

    def shorten(route):
        route.update({k: v for k, v in timing.items() if k in route or route is config["route"]})
        for child in route.get("routes", []):
            shorten(child)

    shorten(config["route"])
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = webapp_url.rstrip("/") + urlparse(hook["url"]).path
            auth = hook["http_config"]["authorization"]
            auth["credentials_file"] = str(secrets_dir / auth["credentials_file"].removeprefix(SECRETS_MOUNT))
    config["templates"] = [str(secrets_dir / "*.tmpl")]  # none here; the cluster's path does not exist
    return config


def token_file(secrets_dir: Path) -> Path:
    """Where alertmanager_config() reads the relay's bearer token (the mounted Secret's key in the cluster)."""
    (hook,) = [h for r in yaml.safe_load(KPS_VALUES.read_text())["alertmanager"]["config"]["receivers"]
               for h in r.get("webhook_configs", [])]
    return secrets_dir / hook["http_config"]["authorization"]["credentials_file"].removeprefix(SECRETS_MOUNT)


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: Path

    def stop(self) -> None:
        stop_process(self.proc, timeout=10)

    def get(self, path: str, **params) -> dict | list:
        r = requests.get(f"{self.url}{path}", params=params, timeout=10)
        r.raise_for_status()
        return r.json()

    def query(self, expr: str) -> list[dict]:
        """Instant PromQL query: the result vector."""
        body = self.get("/api/v1/query", query=expr)
        assert body["status"] == "success", body
        return body["data"]["result"]


def _start(binary: Path, args: list[str], directory: Path, name: str, ready: str) -> Server:
    assert binary.exists(), f"{binary.name} missing: run `make {binary.name}`"
    port = free_port()
    log = directory / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(binary), *args, f"--web.listen-address=127.0.0.1:{port}"], cwd=directory,
                                stdout=out, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", proc, log)
    try:
        wait_http(server.url + ready, proc, name, timeout=30, log=lambda: log.read_text(errors="replace"))
    except BaseException:
        server.stop()
        raise
    return server


def start_alertmanager(directory: Path, config: dict) -> Server:
    (directory / "alertmanager.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (directory / "am-data").mkdir()
    # --cluster.listen-address= turns off the gossip port (0.0.0.0:9094 by default): loopback only.
    return _start(ALERTMANAGER, ["--config.file=alertmanager.yaml", "--storage.path=am-data",
                                 "--cluster.listen-address="], directory, "alertmanager", "/-/ready")


def start_prometheus(directory: Path, rules: Path, jobs: list[dict], alertmanager: Server, interval: str) -> Server:
    """Prometheus scraping `jobs`, evaluating `rules` every `interval`, sending alerts to `alertmanager`."""
    config = {
        "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
        "rule_files": [str(rules)],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [urlparse(alertmanager.url).netloc]}]}]},
        "scrape_configs": jobs,
    }
    (directory / "prometheus.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return _start(PROMETHEUS, ["--config.file=prometheus.yaml", "--storage.tsdb.path=prom-data",
                               # firing alerts re-sent to Alertmanager every evaluation, not every minute
                               f"--rules.alert.resend-delay={interval}"], directory, "prometheus", "/-/ready")


def wait_for(check, what: str, timeout: float, every: float = 0.5):
    """Poll `check()` until it returns something truthy; returns it, or fails naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f}s"
        time.sleep(every)
