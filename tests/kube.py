"""A real Kubernetes control plane on loopback, for tests and `make kube-up`.

etcd, kube-apiserver (RBAC, the default admission plugins incl. PodSecurity), kube-controller-manager,
kube-scheduler and kwok, which makes one fake node (sized and labelled like the kind node of
kind-config.yaml) Ready. Pods on it are "Running" but run nothing; Job pods complete. All binaries
come from ./bin (built from pinned Go modules by `make kube-tools`); everything lives in one directory:

    python -m tests.kube up --dir .kube-local     # prints `export KUBECONFIG=...` lines
    python -m tests.kube down --dir .kube-local
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests

from tests.charts.helm import versions
from tests.services import free_port

REPO = Path(__file__).resolve().parent.parent
STATE_FILE = "kube.json"
CONTEXT = "titanic-local"
NODE = "titanic-control-plane"  # kind's name for the node of cluster "titanic"
SERVICE_CIDR = "10.96.0.0/16"
KWOK_MODULE = "sigs.k8s.io/kwok"
# The release's "fast" stage set: nodes Ready with a lease, pods Ready at once, Job pods complete.
KWOK_STAGES = ["node/fast/node-initialize.yaml", "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
               "pod/fast/pod-ready.yaml", "pod/fast/pod-complete.yaml", "pod/fast/pod-delete.yaml"]


@dataclass
class Cluster:
    """A running control plane: where its kubeconfig is and which processes belong to it."""

    root: str
    apiserver_port: int = 0
    address: str = "127.0.0.1"  # where the API server listens and what it advertises (a real node's IP)
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def kubeconfig(self) -> str:
        return str(Path(self.root) / "admin.kubeconfig")

    @property
    def server(self) -> str:
        return f"https://{self.address}:{self.apiserver_port}"

    def env(self) -> dict[str, str]:
        # Discovery cache in the cluster's own directory: ~/.kube/cache is keyed by host:port, and a later
        # cluster on a reused port would start from this one's API groups (and the directory would outlive it).
        return {"KUBECONFIG": self.kubeconfig, "KUBE_CONTEXT": CONTEXT, "KUBECACHEDIR": str(Path(self.root) / "cache")}

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([str(_bin("kubectl")), "--kubeconfig", self.kubeconfig, *args], input=input,
                              text=True, capture_output=True, check=check, env={**os.environ, **self.env()})


def apply_crds(kubectl, manifest: str, timeout: float = 120) -> list[str]:
    """Apply CRDs server-side and return their names once they are established and served by discovery.

    That is what Helm waits for after a chart's crds/: until then a following helm cannot map their kinds
    ("no matches for kind ServiceMonitor ... ensure CRDs are installed first", which CI stop 23 met).
    `kubectl` is a Cluster's or a Node's kubectl method.
    """
    names = kubectl("apply", "--server-side", "-o", "name", "-f", "-", input=manifest).stdout.split()
    kubectl("wait", "--for=condition=Established", f"--timeout={int(timeout)}s", *names)
    wanted = {name.split("/", 1)[1] for name in names}  # a CRD is named <plural>.<group>, as api-resources prints
    deadline = time.monotonic() + timeout
    while missing := wanted - set(kubectl("api-resources", "-o", "name", check=False).stdout.split()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the API server's discovery still lacks {sorted(missing)} after {timeout:.0f} s")
        time.sleep(0.5)
    return names


def _bin(name: str) -> Path:
    path = Path(os.environ.get("LOCALBIN", REPO / "bin")) / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make kube-tools` (builds the pinned Kubernetes binaries)")
    return path


# --- PKI (openssl: one CA signs the serving cert and every client cert) -------------------------------------

EC_KEY = ("-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256")  # milliseconds to make, unlike RSA


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _cert(pki: Path, name: str, subject: str, *, sans: list[str] | None = None, server: bool = False) -> None:
    key, csr, crt, ext = (pki / f"{name}.{s}" for s in ("key", "csr", "crt", "ext"))
    _openssl("genpkey", *EC_KEY, "-out", str(key))
    _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
    usage = "serverAuth" if server else "clientAuth"
    lines = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
             f"extendedKeyUsage={usage}"]
    if sans:
        lines.append("subjectAltName=" + ",".join(sans))
    ext.write_text("\n".join(lines) + "\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(pki / "ca.crt"), "-CAkey", str(pki / "ca.key"),
             "-CAcreateserial", "-days", "30", "-sha256", "-extfile", str(ext), "-out", str(crt))


def make_ca(pki: Path, name: str) -> None:
    """A CA (ca.key, ca.crt) in a new directory `pki`, for _cert to sign with."""
    pki.mkdir(parents=True)
    _openssl("genpkey", *EC_KEY, "-out", str(pki / "ca.key"))
    _openssl("req", "-x509", "-new", "-key", str(pki / "ca.key"), "-out", str(pki / "ca.crt"), "-days", "30",
             "-subj", f"/CN={name}")


def make_pki(pki: Path, advertise: str) -> None:
    make_ca(pki, "titanic-local-ca")
    service_ip = "10.96.0.1"  # first address of SERVICE_CIDR: the `kubernetes` Service
    sans = ["IP:127.0.0.1", f"IP:{service_ip}", f"IP:{advertise}", "DNS:localhost", "DNS:kubernetes",
            "DNS:kubernetes.default", "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local"]
    _cert(pki, "apiserver", "/CN=kube-apiserver", sans=sorted(set(sans)), server=True)
    _cert(pki, "admin", "/O=system:masters/CN=kubernetes-admin")
    _cert(pki, "controller-manager", "/CN=system:kube-controller-manager")
    _cert(pki, "scheduler", "/CN=system:kube-scheduler")
    _cert(pki, "apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client")
    _openssl("genpkey", *EC_KEY, "-out", str(pki / "sa.key"))
    _openssl("pkey", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))


def write_kubeconfig(path: Path, server: str, pki: Path, user: str) -> None:
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": CONTEXT,
        "clusters": [{"name": CONTEXT, "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")}}],
        "users": [{"name": user, "user": {"client-certificate": str(pki / f"{user}.crt"),
                                          "client-key": str(pki / f"{user}.key")}}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": user}}],
    }
    path.write_text(json.dumps(config, indent=1))  # JSON is YAML
    path.chmod(0o600)


# --- processes ----------------------------------------------------------------------------------------------

def _env() -> dict[str, str]:
    """The environment without proxy settings: the API server calls webhooks and kubelets directly, never
    through a laptop's HTTPS_PROXY (which Go's HTTP client would otherwise honour for those calls)."""
    return {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}


# Each daemon runs under a restart loop, as the kubelet restarts a crashed static pod and systemd the kubelet: a
# crash after start-up is logged ("supervisor: ... exited") and the daemon comes back. One that exits within 10 s of
# starting stays down, so a bad flag still fails `up` at once. SIGTERM to the group: the loop waits for its daemon.
SUPERVISE = ("trap 'kill -TERM $c 2>/dev/null; wait $c; exit 143' TERM; "
             'while :; do s=$(date +%s); "$@" & c=$!; wait $c; rc=$?; '
             'echo "supervisor: $0 exited with $rc at $(date -u +%T)" >&2; '
             '[ $(($(date +%s) - s)) -ge 10 ] || exit $rc; sleep 1; done')


def spawn(root: Path, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start daemon `argv` supervised, in a session of its own (stopped as one group), logging to root/name.log."""
    with open(root / f"{name}.log", "ab") as log:
        return subprocess.Popen(["/bin/sh", "-c", SUPERVISE, name, *argv], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=root, env=env)


def restarts(log: Path) -> list[str]:
    """The supervisor's lines in a daemon's log: one per exit."""
    try:
        return [line for line in log.read_text(errors="replace").splitlines() if line.startswith("supervisor: ")]
    except OSError:
        return []


def _start(cluster: Cluster, name: str, argv: list[str]) -> subprocess.Popen:
    proc = spawn(Path(cluster.root), name, argv, _env())
    cluster.pids[name] = proc.pid
    (Path(cluster.root) / STATE_FILE).write_text(json.dumps(asdict(cluster)))  # so `down` can clean up a failed start
    return proc


def _wait(what: str, proc: subprocess.Popen | None, ready, log: Path, timeout: float = 60.0) -> None:
    """Poll `ready()` until true; fail early, with the log's tail, if `proc` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if ready():
                return
        except (requests.RequestException, subprocess.SubprocessError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready within {timeout:.0f}s:\n{log.read_text()[-3000:]}")


def _kwok_stages(root: Path) -> Path:
    """kwok's own stage files, from the module cache of the pinned kwok (the binary ships none)."""
    version = versions()["KWOK_VERSION"]
    out = subprocess.run(["go", "mod", "download", "-json", f"{KWOK_MODULE}@{version}"], capture_output=True,
                         text=True, check=True, cwd=root).stdout
    stage_dir = Path(json.loads(out)["Dir"]) / "kustomize" / "stage"
    path = root / "kwok-stages.yaml"
    path.write_text("\n---\n".join((stage_dir / s).read_text() for s in KWOK_STAGES))
    return path


def fake_node(name: str = NODE) -> dict:
    """One untainted node sized like one kind node (4 CPU / 8 GiB allocatable), labelled as kind-config.yaml."""
    resources = {"cpu": "4", "memory": "8Gi", "pods": "110", "ephemeral-storage": "50Gi"}
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                     "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                "kubernetes.io/arch": "amd64", "node-role.kubernetes.io/control-plane": "",
                                "ingress-ready": "true", "type": "kwok"}},
        "status": {"capacity": resources, "allocatable": resources,
                   "nodeInfo": {"kubeletVersion": "v" + versions()["KUBE_VERSION"], "architecture": "amd64",
                                "operatingSystem": "linux"}},
    }


def kind_storage(volumes: int = 4, size: str = "20Gi") -> list[dict]:
    """kind's default StorageClass `standard`, and volumes for it: no provisioner runs beside a kwok node, so
    claims (SeaweedFS's) bind to these pre-made ones (hostPath, never written: kwok pods run nothing)."""
    storage_class = {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                     "metadata": {"name": "standard",
                                  "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
                     "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "Immediate"}
    pvs = [{"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"kwok-volume-{i}"},
            "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"], "storageClassName": "standard",
                     "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": f"/nonexistent/kwok-volume-{i}"}}}
           for i in range(volumes)]
    return [storage_class, *pvs]


def up(root: Path, *, address: str = "127.0.0.1", kwok: bool = True,
       apiserver_args: tuple[str, ...] = ()) -> Cluster:
    """Start the control plane and the kwok node under `root` (which must not hold a running one).

    `address`: where the API server listens and what it advertises, 127.0.0.1 unless a real node (tests/node.py)
    needs it on an address its pods reach. `kwok=False`: no fake node and no kind storage (a real node joins).
    `apiserver_args`: more flags for kube-apiserver."""
    root.mkdir(parents=True, exist_ok=True)
    if (root / STATE_FILE).exists():
        raise RuntimeError(f"a control plane already runs in {root}; run `make kube-down` first")
    cluster = Cluster(root=str(root), address=address)
    pki = root / "pki"
    try:
        make_pki(pki, address)
        etcd_port, peer_port = free_port(), free_port()
        etcd = _start(cluster, "etcd", [
            str(_bin("etcd")), "--name", "titanic", "--data-dir", str(root / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-cluster", f"titanic=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync", "--log-level", "warn"])  # test data: durability costs seconds
        _wait("etcd", etcd, lambda: requests.get(f"http://127.0.0.1:{etcd_port}/health", timeout=1).ok,
              root / "etcd.log")

        cluster.apiserver_port = free_port()
        apiserver = _start(cluster, "kube-apiserver", [
            str(_bin("kube-apiserver")), f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            f"--bind-address={address}", f"--secure-port={cluster.apiserver_port}", f"--advertise-address={address}",
            f"--cert-dir={root / 'apiserver'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}", f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}", "--authorization-mode=Node,RBAC",
            "--allow-privileged=true", "--profiling=false", *apiserver_args])
        for user in ("admin", "controller-manager", "scheduler"):
            write_kubeconfig(root / f"{user}.kubeconfig", cluster.server, pki, user)
        admin = (str(pki / "admin.crt"), str(pki / "admin.key"))
        _wait("kube-apiserver", apiserver,
              lambda: requests.get(f"{cluster.server}/readyz", cert=admin, verify=pki / "ca.crt", timeout=2).ok,
              root / "kube-apiserver.log")

        _start(cluster, "kube-controller-manager", [
            str(_bin("kube-controller-manager")), f"--kubeconfig={root / 'controller-manager.kubeconfig'}",
            f"--authentication-kubeconfig={root / 'controller-manager.kubeconfig'}",
            f"--authorization-kubeconfig={root / 'controller-manager.kubeconfig'}",
            "--bind-address=127.0.0.1", f"--secure-port={free_port()}", f"--cert-dir={root / 'controller-manager'}",
            "--use-service-account-credentials", f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}", f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}", "--controllers=*", "--leader-elect=false"])
        _start(cluster, "kube-scheduler", [
            str(_bin("kube-scheduler")), f"--kubeconfig={root / 'scheduler.kubeconfig'}",
            f"--authentication-kubeconfig={root / 'scheduler.kubeconfig'}",
            f"--authorization-kubeconfig={root / 'scheduler.kubeconfig'}",
            "--bind-address=127.0.0.1", f"--secure-port={free_port()}", "--leader-elect=false"])

        if kwok:
            _start_kwok(cluster)
        # Pods need their namespace's ServiceAccount, which the controller-manager creates.
        _wait("default ServiceAccount", None,
              lambda: cluster.kubectl("-n", "default", "get", "serviceaccount", "default", check=False).returncode == 0,
              root / "kube-controller-manager.log")
    except BaseException:
        down(root)
        raise
    (root / STATE_FILE).write_text(json.dumps(asdict(cluster)))
    return cluster


def _start_kwok(cluster: Cluster) -> None:
    """kwok and its fake node (Ready), with kind's StorageClass and volumes for it."""
    root = Path(cluster.root)
    kwok = _start(cluster, "kwok", [
        str(_bin("kwok")), f"--kubeconfig={cluster.kubeconfig}", f"--config={_kwok_stages(root)}",
        "--manage-all-nodes=false", "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
        # Without a lease the node-lifecycle controller takes the node for dead after ~50 s and marks
        # every pod NotReady (Deployments lose availability, helm --wait times out).
        "--node-lease-duration-seconds=40",
        f"--server-address=127.0.0.1:{free_port()}"])
    cluster.kubectl("apply", "-f", "-", input=json.dumps(fake_node()))
    cluster.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(o) for o in kind_storage()))
    _wait("kwok node", kwok, lambda: cluster.kubectl(
        "get", "node", NODE, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}").stdout == "True",
          root / "kwok.log")


def down(root: Path) -> None:
    """Stop every process `up` started under `root` (newest first) and delete the directory."""
    state = root / STATE_FILE
    if state.exists():
        cluster = Cluster(**json.loads(state.read_text()))
        for name, pid in reversed(list(cluster.pids.items())):
            _stop_pid(pid)
    shutil.rmtree(root, ignore_errors=True)


def _stop_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM the process group of `pid` (each was started in its own session), SIGKILL if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
                # A zombie child of this process still answers kill(0): reap it if it is ours.
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return
            except ChildProcessError:
                pass
            except ProcessLookupError:
                return
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--dir", default=".kube-local", help="directory for certificates, data and logs")
    args = parser.parse_args(argv)
    root = Path(args.dir).resolve()
    if args.action == "down":
        down(root)
        return 0
    cluster = up(root)
    for name, value in cluster.env().items():
        print(f"export {name}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
