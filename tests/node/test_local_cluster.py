"""`make local-cluster-up` makes a real node on this machine, and `make local-cluster-down` leaves the machine
exactly as it found it. Between the two: pods of images built here run under Pod Security `restricted`
(seccomp, no capabilities, non-root), `kubectl logs`/`exec` reach them through the kubelet, a ClusterIP Service
answers from a pod and from the host (kube-proxy), and CoreDNS resolves the Service's name.

Root only, ~1 minute; run by `make test-node`, not by `make test` (CI's time budget).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from tests import node as local_node
from tests.charts.helm import versions

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "node-test"
NUMBERS: dict[str, object] = {}

pytestmark = [
    pytest.mark.skipif(os.environ.get("TITANIC_NODE_TEST") != "1",
                       reason="a real node changes the host (root, iptables, mounts): `make test-node` runs it"),
    pytest.mark.skipif(os.geteuid() != 0, reason="a real node needs root"),
]

# Zombies are nobody's by command line: these names only a node's processes have (Docker, which may build
# images beside, has containerd, shims and runc too).
NODE_ONLY_COMMANDS = ("kubelet", "kube-proxy", "coredns", "pause")
HOST_PATHS = ["/var/lib/kubelet", "/var/log/pods", "/var/log/containers", "/var/lib/cni", "/run/containerd",
              "/run/netns", "/var/run/nri", "/opt/containerd", "/etc/cni/net.d", "/opt/cni", "/etc/containerd"]


def _processes(root: Path) -> list[str]:
    """Processes that belong to the node: those mentioning `root` (every daemon, shim and runc call has its
    directory in its arguments) and those in a kubepods cgroup (containers, pause). Other suites' control
    planes and a Docker beside have their own directories and cgroups."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            comm, state = re.match(r".*\((.*)\) (\S)", (proc / "stat").read_text()).groups()
            if state == "Z":  # a zombie: PID 1 of this machine reaps none, so one left now stays for good
                if comm in NODE_ONLY_COMMANDS:
                    found.append(f"{proc.name} zombie {comm}")
                continue
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            cgroup = (proc / "cgroup").read_text()
            exe = os.path.basename(os.readlink(proc / "exe"))
        except (OSError, AttributeError):
            continue
        if str(root) in " ".join(argv) or "kubepods" in cgroup:
            found.append(f"{proc.name} {exe} {' '.join(argv)[:120]}")
    return sorted(found)


# Docker may run beside this test on a developer's machine (images are built with it) and change the machine
# meanwhile: its links, mounts, chains and cgroups are not the node's and are left out of the comparison.
DOCKER_MOUNT = re.compile(r"/docker/|/buildkit/|^/var/lib/docker|^/run/docker")


def _docker_links(lines: list[str]) -> set[str]:
    names = {line.split(":")[1].strip().split("@")[0]: line for line in lines}
    return {n for n, line in names.items()
            if n == "docker0" or n.startswith("br-") or re.search(r"master (docker0|br-)", line)}


def _sysctls(foreign: set[str]) -> dict[str, str]:
    """Kernel settings a node changes (tests/node.py's list) and every IPv4/IPv6 interface setting."""
    values = dict(local_node.read_sysctls())
    for family in ("ipv4", "ipv6"):
        for path in sorted(Path(f"/proc/sys/net/{family}/conf").glob("*/*")):
            try:
                values[str(path)] = path.read_text().strip()
            except OSError:
                pass
    return {k: v for k, v in values.items() if not any(f"/conf/{i}/" in k for i in foreign)}


def machine_state(root: Path) -> dict:
    """What a node could leave behind: processes, links, iptables chains and tables, mounts, host directories,
    cgroups, kernel settings."""
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    foreign = _docker_links(links)
    nft = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    mounts = [line for line in Path("/proc/mounts").read_text().splitlines()
              if not DOCKER_MOUNT.search(line.split()[1])]
    return {
        "processes": _processes(root),
        "links": sorted({line.split(":")[1].strip().split("@")[0] for line in links} - foreign),
        "iptables": {k: sorted(c for c in v if not c.startswith("DOCKER"))
                     for k, v in local_node.iptables_chains().items()},
        "nft tables": sorted(nft.splitlines()),
        "mounts": mounts,
        "host paths": {p: os.path.lexists(p) for p in HOST_PATHS},
        "cgroups": {h.name: sorted(c.name for c in h.iterdir() if c.is_dir() and c.name != "docker")
                    for h in sorted(Path("/sys/fs/cgroup").iterdir()) if h.is_dir() and not h.is_symlink()},
        "sysctls": _sysctls(foreign),
    }


def make(*targets: str, root: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    argv = ["make", "-s", "--no-print-directory", *targets, f"LOCAL_CLUSTER_DIR={root}"]
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(argv)}:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


@pytest.fixture(scope="module")
def cluster():
    # Not under pytest's tmp dir: containerd's shim socket directory must be short (42 characters).
    root = Path(tempfile.mkdtemp(prefix="titanic-node-"))
    root.rmdir()  # `up` makes it; the state before must not hold it
    before = machine_state(root)
    started = time.monotonic()
    up = make("local-cluster-up", root=root)
    NUMBERS["up (make local-cluster-up, s)"] = round(time.monotonic() - started, 1)
    node = local_node.Node(**json.loads((root / local_node.STATE_FILE).read_text()))
    NUMBERS["up phases (s since start)"] = node.timings
    yield {"root": root, "before": before, "stdout": up.stdout, "node": node}
    if (root / local_node.STATE_FILE).exists():  # a test failed before test_down_restores_the_machine
        make("local-cluster-down", root=root)


def kubectl(cluster, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return cluster["node"].kubectl(*args, input=input, check=check)


def test_up_prints_only_exports(cluster):
    lines = cluster["stdout"].splitlines()
    node = cluster["node"]
    assert lines == [f"export KUBECONFIG={node.kubeconfig}", "export KUBE_CONTEXT=titanic-local",
                     f"export KUBECACHEDIR={node.path / 'cache'}"]


def test_the_node_is_real_and_ready(cluster):
    node = json.loads(kubectl(cluster, "get", "node", local_node.NODE, "-o", "json").stdout)
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert ready["Ready"] == "True"
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == "v" + versions()["KUBE_VERSION"]
    assert info["containerRuntimeVersion"].startswith("containerd://" + versions()["CONTAINERD_VERSION"][1:])
    assert {"type": "InternalIP", "address": local_node.GATEWAY} in node["status"]["addresses"]
    assert "node-role.kubernetes.io/control-plane" in node["metadata"]["labels"]
    assert "kwok.x-k8s.io/node" not in node["metadata"].get("annotations", {})
    # containerd runs on its own socket, never the system's
    assert not os.path.exists("/run/containerd/containerd.sock") or cluster["before"]["host paths"]["/run/containerd"]
    images = cluster["node"].ctr("images", "ls", "-q").stdout.split()
    assert set(local_node.image_names().values()) <= set(images)


RESTRICTED_POD = {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000,
                  "seccompProfile": {"type": "RuntimeDefault"}}
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]}}


def _pod(name: str, command: list[str], **extra) -> dict:
    container = {"name": name, "image": local_node.BUSYBOX_IMAGE, "imagePullPolicy": "Never", "command": command,
                 "securityContext": RESTRICTED_CONTAINER,
                 "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "32Mi"}}}
    container.update(extra.pop("container", {}))
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NAMESPACE,
                                                          "labels": {"app": name}},
            "spec": {"securityContext": RESTRICTED_POD, "containers": [container],
                     "terminationGracePeriodSeconds": 1, "automountServiceAccountToken": False, **extra}}


@pytest.fixture(scope="module")
def pods(cluster):
    """A web server (busybox httpd, page from a ConfigMap volume) behind a ClusterIP Service, and a client pod,
    in a namespace that enforces Pod Security `restricted`."""
    started = time.monotonic()
    kubectl(cluster, "create", "namespace", NAMESPACE)
    kubectl(cluster, "label", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/enforce-version=latest")
    page = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web", "namespace": NAMESPACE},
            "data": {"index.html": "hello from a real node\n"}}
    web = _pod("web", ["sh", "-c", "echo serving /www on 8080; exec httpd -f -vv -p 8080 -h /www"],
               container={"ports": [{"containerPort": 8080}],
                          "volumeMounts": [{"name": "www", "mountPath": "/www", "readOnly": True}],
                          "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}},
               volumes=[{"name": "www", "configMap": {"name": "web"}}])
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": NAMESPACE},
               "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}
    client = _pod("client", ["sleep", "3600"])
    kubectl(cluster, "apply", "-f", "-", input="\n---\n".join(json.dumps(o) for o in (page, web, service, client)))
    kubectl(cluster, "-n", NAMESPACE, "wait", "--for=condition=Ready", "pod/web", "pod/client", "--timeout=120s")
    NUMBERS["two pods Ready after apply (s)"] = round(time.monotonic() - started, 1)
    NUMBERS["first pods Ready since up started (s)"] = round(
        NUMBERS["two pods Ready after apply (s)"] + NUMBERS["up (make local-cluster-up, s)"], 1)
    cluster_ip = kubectl(cluster, "-n", NAMESPACE, "get", "service", "web", "-o", "jsonpath={.spec.clusterIP}").stdout
    # kube-proxy writes the Service's rules after the EndpointSlice names the ready pod (at most one sync a
    # second): until then a connection is refused (tests/node.py), as on any cluster. Wait for that, not longer.
    ready = time.monotonic()
    while not _get(cluster, cluster_ip).stdout.startswith("HTTP/1.1 200"):
        assert time.monotonic() - ready < 30, "the ClusterIP never answered: kube-proxy did not program it"
        time.sleep(0.2)
    NUMBERS["Service answers after pods Ready (s)"] = round(time.monotonic() - ready, 1)
    return {"cluster_ip": cluster_ip}


def test_restricted_namespace_refuses_a_root_pod(cluster, pods):
    bad = _pod("root", ["sleep", "1"])
    bad["spec"]["securityContext"] = {}
    bad["spec"]["containers"][0]["securityContext"] = {}
    result = kubectl(cluster, "apply", "-f", "-", input=json.dumps(bad), check=False)
    assert result.returncode != 0 and "violates PodSecurity" in result.stderr


def test_pods_run_confined_in_real_containers(cluster, pods):
    def exec_(*argv: str) -> str:
        return kubectl(cluster, "-n", NAMESPACE, "exec", "client", "--", *argv).stdout

    assert exec_("id", "-u").strip() == "1000"
    status = exec_("cat", "/proc/self/status")
    assert re.search(r"^Seccomp:\s+2$", status, re.M), status  # RuntimeDefault: a filter, not unconfined
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.M)
    assert re.search(r"^CapEff:\s+0+$", status, re.M)
    write = kubectl(cluster, "-n", NAMESPACE, "exec", "client", "--", "touch", "/x", check=False)
    assert write.returncode != 0  # read-only root filesystem
    # Every pod's sandbox is the pause image built here.
    containers = cluster["node"].ctr("containers", "ls").stdout
    assert local_node.image_names()["pause"] in containers


def test_logs_and_exec_with_stdin(cluster, pods):
    logs = kubectl(cluster, "-n", NAMESPACE, "logs", "web").stdout
    assert "serving /www on 8080" in logs
    echoed = kubectl(cluster, "-n", NAMESPACE, "exec", "-i", "client", "--", "cat", input="through the kubelet\n")
    assert echoed.stdout == "through the kubelet\n"


def _get(cluster, host: str, port: int = 80, check: bool = False) -> subprocess.CompletedProcess:
    request = f'printf "GET / HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n" | nc -w 5 {host} {port}'
    return kubectl(cluster, "-n", NAMESPACE, "exec", "client", "--", "sh", "-c", request, check=check)


def http_get(cluster, host: str, port: int = 80) -> str:
    """The body of GET / on host:port from the client pod. With nc: Debian's busybox-static `wget` segfaults
    (exit 139, on the host too), its `nc` and name resolution work."""
    response = _get(cluster, host, port, check=True).stdout
    head, _, body = response.partition("\n\n")  # text mode: CRLF arrives as LF
    assert head.startswith("HTTP/1.1 200"), response
    return body


def test_cluster_ip_from_a_pod_and_from_the_host(cluster, pods):
    assert http_get(cluster, pods["cluster_ip"]) == "hello from a real node\n"
    url = f"http://{pods['cluster_ip']}/"
    session = requests.Session()
    session.trust_env = False  # never through the machine's HTTP proxy
    assert session.get(url, timeout=5).text == "hello from a real node\n"
    # both requests reached the pod (httpd -vv logs them): from the client pod and from the host (the bridge)
    client_ip = kubectl(cluster, "-n", NAMESPACE, "get", "pod", "client", "-o", "jsonpath={.status.podIP}").stdout
    logs = kubectl(cluster, "-n", NAMESPACE, "logs", "web").stdout
    for source in (client_ip, local_node.GATEWAY):
        assert f"[::ffff:{source}]:" in logs and "url:/" in logs, logs


def test_a_service_address_nothing_serves_refuses_instead_of_leaving_the_node(cluster, pods):
    """Untranslated connections to the service range are refused (tests/node.py): before, they left by the
    default route and this machine's egress proxy answered 404, and a kept-alive connection stayed there."""
    unserved = "10.96.255.254"  # in the service range, never allocated (the allocator starts low)
    out = kubectl(cluster, "-n", NAMESPACE, "exec", "client", "--", "sh", "-c",
                  f'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 5 {unserved} 80; echo "exit $?"', check=False)
    assert "HTTP/" not in out.stdout and "exit 0" not in out.stdout, out.stdout + out.stderr
    session = requests.Session()
    session.trust_env = False
    with pytest.raises(requests.ConnectionError):
        session.get(f"http://{unserved}/", timeout=5)
    assert http_get(cluster, pods["cluster_ip"]) == "hello from a real node\n"  # a served one still answers


def test_coredns_resolves_service_names(cluster, pods):
    fqdn = f"web.{NAMESPACE}.svc.cluster.local"
    answer = kubectl(cluster, "-n", NAMESPACE, "exec", "client", "--", "nslookup", fqdn).stdout
    assert pods["cluster_ip"] in answer, answer
    # the short name through the pod's search path (resolv.conf written by the kubelet)
    assert http_get(cluster, "web") == "hello from a real node\n"


def test_load_imports_an_image_archive(cluster, pods):
    """`python -m tests.node load` (what `make local-cluster-load` calls with `docker save` archives)."""
    archive = cluster["root"] / "echo.tar"
    subprocess.run([sys.executable, "-m", "hack.local_image", "--out", str(archive), "--tag",
                    "localhost/titanic/echo:1", "--file", "/bin/busybox:/bin/busybox", "--user", "1000:1000",
                    "--entrypoint", "/bin/busybox", "echo", "--cmd", "loaded into containerd"], cwd=REPO, check=True)
    subprocess.run([sys.executable, "-m", "tests.node", "load", "--dir", str(cluster["root"]), str(archive)],
                   cwd=REPO, check=True, capture_output=True)
    pod = _pod("echo", [], restartPolicy="Never")
    del pod["spec"]["containers"][0]["command"]  # the image's entrypoint and cmd
    pod["spec"]["containers"][0]["image"] = "localhost/titanic/echo:1"
    kubectl(cluster, "apply", "-f", "-", input=json.dumps(pod))
    kubectl(cluster, "-n", NAMESPACE, "wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/echo", "--timeout=60s")
    assert kubectl(cluster, "-n", NAMESPACE, "logs", "echo").stdout == "loaded into containerd\n"


def test_memory(cluster, pods):
    rss = local_node.memory_rss(cluster["node"])
    NUMBERS["memory RSS (MiB)"] = {k: round(v / 2**20) for k, v in rss.items()}
    NUMBERS["memory RSS total (MiB)"] = round(sum(rss.values()) / 2**20)
    assert sum(rss.values()) < 3 * 2**30


def test_down_restores_the_machine(cluster, pods, capsys):
    started = time.monotonic()
    make("local-cluster-down", root=cluster["root"])
    NUMBERS["down (make local-cluster-down, s)"] = round(time.monotonic() - started, 1)
    after = machine_state(cluster["root"])
    assert not cluster["root"].exists()
    for key, value in cluster["before"].items():
        assert after[key] == value, f"{key} differs after down"
    with capsys.disabled():
        print("\nlocal cluster numbers:", json.dumps(NUMBERS, indent=1))
