"""The platform on the local cluster of `make local-cluster-up`: the project's own parts as real pods.

The twin of `make cluster-up` for this machine, where kind cannot run: the same make steps (namespaces,
credentials, kserve, deploy, dataset) against the real node, with two differences that each say why:

- The data services (Postgres, Redis, S3) are host processes from tests/services.py listening on the node's
  address, and Airflow runs on the host from .venv-airflow (tests/airflow_local.py): their upstream images
  cannot be pulled here. Selector-less Services with EndpointSlices that point at the node's address keep the
  in-cluster names the chart's configuration uses (pg-rw.data, valkey.data, seaweedfs-all-in-one.data,
  airflow-api-server.airflow).
- One S3 identity: the S3 server of tests/services.py has a root identity only, so the read-only pair of
  `make credentials` is the same pair (as with OBJECT_STORE=minio).

    python -m tests.local_platform up --dir .local-cluster     # after local-cluster-up; prints `export` lines
    python -m tests.local_platform down --dir .local-cluster   # before local-cluster-down
"""

from __future__ import annotations

import argparse
import base64
import bz2
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests import airflow_server, inputs
from tests.e2e.conftest import ISVC_READY
from tests import node as local_node
from tests import services as local_services

REPO = Path(__file__).resolve().parents[1]
STATE_FILE = "platform.json"
SERVICES_DIR = "services"
AIRFLOW_DIR = "airflow"
AIRFLOW_SA = ("airflow", "airflow-scheduler")  # charts/values/airflow.yaml; the chart's RBAC lets it launch step pods
# (namespace, Service, port name, port): the in-cluster addresses of the chart's configuration and
# `make credentials`, served by host processes.
BRIDGED = {
    "postgres": ("data", "pg-rw", "postgres", 5432),
    "redis": ("data", "valkey", "tcp", 6379),
    "s3": ("data", "seaweedfs-all-in-one", "swfs-s3", 8333),
    "airflow": ("airflow", "airflow-api-server", "api-server", 8080),
}


class CertManagerStandIn:
    """What cert-manager does for KServe, which cannot run here (its commands are separate modules that the Go
    module proxy does not serve): issue each Certificate's Secret (tls.crt, tls.key, ca.crt) from a CA of its
    own, and inject that CA where `cert-manager.io/inject-ca-from` asks, as cert-manager's cainjector does. The
    Certificate and Issuer objects are the chart's own, accepted through cert-manager's CRDs."""

    INJECTABLE = ("validatingwebhookconfigurations", "mutatingwebhookconfigurations")

    def __init__(self, platform: "Platform"):
        self.platform = platform
        self.pki = platform.root / "cert-manager"
        if not (self.pki / "ca.crt").exists():
            local_node.kube.make_ca(self.pki, "titanic-local-cert-manager-stand-in")
        self.ca = base64.b64encode((self.pki / "ca.crt").read_bytes()).decode()

    def crds(self, charts_dir: str) -> None:
        rendered = subprocess.run([str(REPO / "bin" / "helm"), "template", "cert-manager", f"{charts_dir}/cert-manager",
                                   "--set", "crds.enabled=true", "--kube-version", local_node.kube.versions()["KUBE_VERSION"]], check=True, capture_output=True, text=True).stdout
        crds = [d for d in yaml.safe_load_all(rendered) if d and d.get("kind") == "CustomResourceDefinition"]
        # Established and in discovery before `make kserve`'s helm maps the chart's Certificate and Issuer.
        local_node.kube.apply_crds(self.platform.node.kubectl, "\n---\n".join(json.dumps(c) for c in crds))

    def _list(self, resource: str) -> list[dict]:
        return json.loads(self.platform.kubectl("get", resource, "-A", "-o", "json"))["items"]

    def sync(self) -> None:
        """One pass: Secrets of new Certificates, CA bundles of annotated webhook configurations."""
        issued = set()
        for cert in self._list("certificates.cert-manager.io"):
            namespace, name, spec = cert["metadata"]["namespace"], cert["metadata"]["name"], cert["spec"]
            issued.add(f"{namespace}/{name}")
            if self.platform.kubectl("-n", namespace, "get", "secret", spec["secretName"], "--ignore-not-found"):
                continue
            leaf = f"{namespace}.{name}"
            local_node.kube._cert(self.pki, leaf, f"/CN={spec.get('commonName') or spec['dnsNames'][0]}",
                                  sans=[f"DNS:{d}" for d in spec["dnsNames"]], server=True)
            self.platform.apply([{"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                                  "metadata": {"namespace": namespace, "name": spec["secretName"]},
                                  "data": {"tls.crt": self._b64(f"{leaf}.crt"), "tls.key": self._b64(f"{leaf}.key"),
                                           "ca.crt": self.ca}}])
        for resource in self.INJECTABLE:
            for config in self._list(resource):
                source = config["metadata"].get("annotations", {}).get("cert-manager.io/inject-ca-from")
                webhooks = config.get("webhooks") or []
                if source not in issued or all(w["clientConfig"].get("caBundle") == self.ca for w in webhooks):
                    continue
                patch = [{"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": self.ca}
                         for i in range(len(webhooks))]
                self.platform.kubectl("patch", resource, config["metadata"]["name"], "--type=json",
                                      "-p", json.dumps(patch))

    def _b64(self, name: str) -> str:
        return base64.b64encode((self.pki / name).read_bytes()).decode()

    def while_running(self, proc: subprocess.Popen) -> int:
        """Sync until `proc` (e.g. `make kserve`, waiting for pods that mount the Secrets) ends, then once more."""
        while proc.poll() is None:
            try:
                self.sync()
            except subprocess.CalledProcessError as e:  # e.g. the API server restarting: `proc` sees it too
                print(f"local-platform: cert-manager stand-in: {e}; trying again", file=sys.stderr)
            time.sleep(1)
        if not proc.returncode:
            self.sync()
        return proc.returncode


def bridge_manifests(host: str, ports: dict[str, int]) -> list[dict]:
    """A selector-less Service per bridged address and the EndpointSlice that sends it to `host`:`ports[name]`."""
    objects = []
    for name, (namespace, service, port_name, port) in BRIDGED.items():
        if name not in ports:
            continue
        meta = {"namespace": namespace, "labels": {"app.kubernetes.io/part-of": "titanic-mlops",
                                                   "app.kubernetes.io/managed-by": "titanic-local-platform"}}
        objects.append({"apiVersion": "v1", "kind": "Service", "metadata": {**meta, "name": service},
                        "spec": {"ports": [{"name": port_name, "port": port, "targetPort": ports[name]}]}})
        objects.append({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {**meta, "name": f"{service}-host", "labels": {
                **meta["labels"], "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "titanic-local-platform"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [host], "conditions": {"ready": True}}],
            "ports": [{"name": port_name, "port": ports[name], "protocol": "TCP"}],
        })
    return objects


class Platform:
    """One local platform: the node of `root`, the host services, and the make steps run against them."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        node_state = self.root / local_node.STATE_FILE  # absent when the node never came up: down still cleans
        self.node = local_node.Node(**json.loads(node_state.read_text())) if node_state.exists() else \
            local_node.Node(root=str(self.root))
        self.state_path = self.root / STATE_FILE
        self.state: dict = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}

    def save(self) -> None:
        self.state_path.write_text(json.dumps(self.state, indent=1))

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
        env.update(self.node.env())
        return env

    def make(self, *targets: str, wait: bool = True, **variables: str) -> subprocess.Popen:
        variables = {"KUBE_CONTEXT": local_node.kube.CONTEXT, "CLUSTER_BUILD": str(self.root / "build"), **variables}
        args = [f"{k}={v}" for k, v in variables.items()]
        # stdout to stderr: `make -s local-platform-up` prints only the `export` lines (they are eval'ed).
        proc = subprocess.Popen(["make", "--no-print-directory", "-C", str(REPO), *targets, *args], env=self.env(),
                                stdout=sys.stderr)
        if wait and proc.wait():
            raise subprocess.CalledProcessError(proc.returncode, proc.args)
        return proc

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return self.node.kubectl(*args, input=input).stdout

    def apply(self, objects: list[dict]) -> None:
        self.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(o) for o in objects))

    def secret(self, namespace: str, name: str, type: str = "Opaque", **data: str) -> None:
        self.apply([{"apiVersion": "v1", "kind": "Secret", "metadata": {"namespace": namespace, "name": name},
                     "type": type, "stringData": data}])

    def start_services(self) -> local_services.Services:
        """The data services on the node's address, reachable from pods through the bridged Services."""
        services = local_services.up(self.root / SERVICES_DIR, str(REPO / "bin" / "versitygw"),
                                     host=local_node.GATEWAY)
        self.apply(bridge_manifests(local_node.GATEWAY, {
            "postgres": services.pg_port, "redis": services.redis_port, "s3": services.s3_port}))
        return services

    def seed_credentials(self, services: local_services.Services) -> None:
        """The Secrets `make credentials` reads back, holding what the host services accept; it generates the rest."""
        pg = secrets.token_hex(12)
        local_services.psql(Path(services.pg_dir), services.pg_port, f"ALTER ROLE titanic PASSWORD '{pg}'")
        self.secret("data", "pg-titanic", "kubernetes.io/basic-auth", username="titanic", password=pg)
        self.secret("data", "minio-root", MINIO_ROOT_USER=services.s3_access_key,
                    MINIO_ROOT_PASSWORD=services.s3_secret_key)
        self.secret("data", "s3-reader", accessKey=services.s3_access_key, secretKey=services.s3_secret_key)

    def secret_value(self, namespace: str, name: str, key: str) -> str:
        return base64.b64decode(self.kubectl("-n", namespace, "get", "secret", name, "-o", f"jsonpath={{.data.{key}}}"))\
            .decode()

    def airflow_kubeconfig(self) -> Path:
        """A kubeconfig of Airflow's service account (as its pods in a cluster have), not the admin's."""
        namespace, account = AIRFLOW_SA
        self.apply([{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"namespace": namespace, "name": account}}])
        token = self.kubectl("-n", namespace, "create", "token", account, "--duration=48h").strip()
        admin = json.loads(self.kubectl("config", "view", "--raw", "--minify", "-o", "json"))
        cluster = admin["clusters"][0]
        config = {"apiVersion": "v1", "kind": "Config", "clusters": [cluster], "current-context": "airflow",
                  "users": [{"name": account, "user": {"token": token}}],
                  "contexts": [{"name": "airflow", "context": {"cluster": cluster["name"], "user": account}}]}
        path = self.root / AIRFLOW_DIR / "kubeconfig"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config))
        path.chmod(0o600)
        return path

    def start_airflow(self, image_tag: str) -> airflow_server.AirflowServer:
        """Airflow as host processes on the node's address, with the credentials `make credentials` made."""
        home = self.root / AIRFLOW_DIR
        kubeconfig = self.airflow_kubeconfig()
        server, procs = airflow_server.start(
            home, 300, username=self.secret_value("airflow", "airflow-admin", "username"),
            password=self.secret_value("airflow", "airflow-admin", "password"), host=local_node.GATEWAY,
            scheduler=True, jwt_secret=self.secret_value("airflow", "airflow-jwt", "jwt-secret"),
            secret_key=self.secret_value("airflow", "airflow-api-secret", "api-secret-key"),
            extra_env={"TITANIC_PIPELINE_IMAGE": f"titanic-pipeline:{image_tag}",
                       "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                       "AIRFLOW_CONN_KUBERNETES_DEFAULT": json.dumps(
                           {"conn_type": "kubernetes", "extra": {"kube_config_path": str(kubeconfig)}})})
        self.state["airflow"] = {"url": server.url, "pids": [p.pid for p in procs]}
        self.save()
        port = int(server.url.rsplit(":", 1)[1])
        self.apply(bridge_manifests(local_node.GATEWAY, {"airflow": port}))
        return server

    def first_model(self, server: airflow_server.AirflowServer, timeout: float = 1800) -> dict:
        """A run of the training DAG, started through Airflow's REST API (as the alert relay starts one), followed
        to its end; the run must deploy a model (what `make first-model` requires)."""
        run_id = server.trigger(f"local-platform-{int(time.time())}", {}, "first model of make local-platform-up")[
            "dag_run_id"]
        start = time.monotonic()
        deadline, last, tries = start + timeout, None, {}
        while time.monotonic() < deadline:
            run = server.get(f"/api/v2/dags/{airflow_server.DAG_ID}/dagRuns/{run_id}")
            now = {t["task_id"]: (t["state"], t.get("try_number")) for t in server.get(
                f"/api/v2/dags/{airflow_server.DAG_ID}/dagRuns/{run_id}/taskInstances")["task_instances"]}
            # each change with its time: a slow step shows which one it was, even when the run succeeds
            changed = {k: f"{state} (try {n})" for k, (state, n) in now.items()
                       if state is not None and tries.get(k) != (state, n)}
            if run["state"] != last or changed:
                print(f"local-platform: run {run_id} after {time.monotonic() - start:.0f} s: {run['state']} "
                      f"{changed}", file=sys.stderr)
                last, tries = run["state"], now
            if run["state"] in ("success", "failed"):
                break
            time.sleep(5)
        tasks = {k: state for k, (state, _) in tries.items()}
        if last != "success" or tasks.get("deploy") != "success":
            self.diagnose(server, run_id, tasks)
            raise RuntimeError(f"run {run_id} ended {last} with steps {tasks}: see {server.home}/logs and "
                               "`kubectl -n mlops get pods` (failed step pods are kept)")
        return {"run_id": run_id, "tasks": tasks}

    def diagnose(self, server: airflow_server.AirflowServer, run_id: str, tasks: dict) -> None:
        """Before `down` deletes them: how the logs of the run's unsuccessful steps end, and the state of the
        model server's pods (CI keeps nothing of the machine but what is printed)."""
        for task, state in tasks.items():
            if state == "success":
                continue
            for log in sorted(Path(server.home, "logs").glob(f"**/run_id={run_id}/task_id={task}/*.log")):
                print(f"local-platform: {task} ({state}), {log.name} ends:\n{log.read_text(errors='replace')[-6000:]}",
                      file=sys.stderr)
        for args in (("get", "pods,inferenceservices,deployments", "-o", "wide"),
                     ("get", "events", "--sort-by=.lastTimestamp"),
                     ("get", "inferenceservice", "titanic", "-o", "jsonpath={.status}"),
                     ("logs", "-l", "serving.kserve.io/inferenceservice=titanic", "--all-containers", "--prefix",
                      "--tail=60"),
                     ("logs", "-l", "serving.kserve.io/inferenceservice=titanic", "--all-containers", "--prefix",
                      "--tail=30", "--previous")):
            done = self.node.kubectl("-n", "mlops", *args, check=False)
            print(f"local-platform: kubectl {' '.join(args)}:\n{(done.stdout + done.stderr)[-8000:]}", file=sys.stderr)

    def up(self, image_tag: str, charts_dir: str) -> None:
        start = time.monotonic()
        timings = self.state.setdefault("timings", {})
        steps = {"IMG_TAG": image_tag, "CHARTS_DIR": charts_dir}

        def mark(what: str) -> None:
            timings[what] = round(time.monotonic() - start, 1)
            self.save()
            print(f"local-platform: {what} after {timings[what]} s", file=sys.stderr)

        self.make("namespaces")
        services = self.start_services()
        mark("data services")
        self.seed_credentials(services)
        self.make("credentials")
        mark("credentials")
        certs = CertManagerStandIn(self)
        certs.crds(charts_dir)

        def kserve() -> None:
            if certs.while_running(self.make("kserve", wait=False, **steps)):
                raise RuntimeError("make kserve failed")
        self.again_after_restart(kserve)
        mark("kserve")
        # The chart's ServiceMonitor, PodMonitor and PrometheusRule need the Prometheus operator's CRDs; the
        # operator, Prometheus and Grafana themselves cannot run here (their images cannot be pulled or built).
        crds = Path(charts_dir) / "kube-prometheus-stack" / "charts" / "crds" / "files" / "crds.bz2"
        local_node.kube.apply_crds(self.node.kubectl, bz2.decompress(crds.read_bytes()).decode())
        self.again_after_restart(lambda: self.make("deploy", **steps))
        mark("deploy")
        cache = REPO / ".cache" / "titanic-train.csv"
        if not cache.exists():  # the tests' pinned copy (tests/inputs.py): no second download
            cache.parent.mkdir(exist_ok=True)
            cache.write_bytes(inputs.TRAIN_CSV.read_bytes())
        self.make("dataset", **steps)
        mark("dataset")
        server = self.start_airflow(image_tag)
        mark("airflow")
        self.state["first_model"] = self.first_model(server)
        self.kubectl("-n", "mlops", "wait", "inferenceservice/titanic", ISVC_READY, "--timeout=600s")
        mark("first model served")

    def restarts(self) -> dict[str, list[str]]:
        """Exits of the cluster's daemons so far, by log (their restart loop logs each, tests/kube.py)."""
        logs = [*self.node.path.glob("*.log"), *self.node.control_plane.glob("*.log")]
        return {log.name: lines for log in logs if (lines := local_node.kube.restarts(log))}

    def again_after_restart(self, step) -> None:
        """Run `step`; once more if a daemon of the cluster restarted meanwhile (its clients were refused), and
        only then: any other failure is the step's own."""
        before = self.restarts()
        try:
            step()
        except (subprocess.CalledProcessError, RuntimeError):
            if self.restarts() == before:
                raise
            print(f"local-platform: a daemon of the cluster restarted during the step {self.restarts()}; "
                  "running the step again", file=sys.stderr)
            step()

    def report(self) -> None:
        """After a failure, before `down` deletes the logs: the daemons that exited, and how their logs end."""
        for name, lines in self.restarts().items():
            log = next(p for p in (self.node.path / name, self.node.control_plane / name) if p.exists())
            print(f"local-platform: {name}: {'; '.join(lines)}. Its log ends:\n"
                  f"{log.read_text(errors='replace')[-4000:]}", file=sys.stderr)

    def exports(self) -> dict[str, str]:
        """Where a person (and tests/e2e) reaches the platform from this machine: Service addresses, which
        kube-proxy routes on the host, so no port-forward is needed."""
        def cluster_ip(namespace: str, service: str) -> str:
            return self.kubectl("-n", namespace, "get", "service", service, "-o", "jsonpath={.spec.clusterIP}")

        return {**self.node.env(),
                "TITANIC_URL": f"http://{cluster_ip('mlops', 'titanic-webapp')}",
                "AIRFLOW_URL": self.state["airflow"]["url"]}

    def down(self) -> None:
        for pid in self.state.get("airflow", {}).get("pids", []):
            local_services.stop_pid_group(pid)
        shutil.rmtree(self.root / AIRFLOW_DIR, ignore_errors=True)
        local_services.down(self.root / SERVICES_DIR)
        self.state_path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--dir", default=".local-cluster", help="the directory of `make local-cluster-up`")
    parser.add_argument("--image-tag", default=os.environ.get("IMG_TAG", ""), help="tag of the project images")
    parser.add_argument("--charts-dir", default=os.environ.get("CHARTS_DIR") or str(inputs.CHARTS_DIR),
                        help="unpacked upstream charts (default: the tests' pinned copies, tests/inputs.py)")
    args = parser.parse_args(argv)
    platform = Platform(Path(args.dir))
    if args.action == "down":
        platform.report()  # a daemon that crashed during the tests shows here
        platform.down()
        return 0
    try:
        platform.up(args.image_tag, args.charts_dir)
    except BaseException:
        platform.report()
        platform.down()
        raise
    for name, value in platform.exports().items():
        print(f"export {name}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
