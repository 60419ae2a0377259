"""A real single-node Kubernetes on this machine, for tests and `make local-cluster-up`.

The control plane of tests/kube.py (no kwok) plus a real node: containerd (own socket, root, state and CNI
conf dir), runc and the CNI bridge plugin from Debian, the kubelet and kube-proxy (iptables mode), and CoreDNS
as a Deployment. No registry is reachable, so every image is built here (hack/local_image.py) and imported into
containerd: the pause image from Kubernetes' own pause.c, CoreDNS from its Go module, and a busybox for tests.
Needs root. Everything lives in one directory, except what the kubelet and the CNI plugins put on the host
(/var/log/containers, /var/lib/cni, the bridge, iptables chains, cgroups, sysctls); `down` removes all of that,
and only what `up` made (the host's state before `up` is recorded in the state file):

    python -m tests.node up --dir .local-cluster     # prints `export KUBECONFIG=...` lines
    python -m tests.node load --dir .local-cluster image.tar...   # `docker save` archives into containerd
    python -m tests.node down --dir .local-cluster
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests

from tests import kube
from tests.charts.helm import versions
from tests.services import free_port

STATE_FILE = "node.json"
NODE = kube.NODE
BRIDGE = "titanic-cni0"  # the CNI bridge; its gateway address is the node IP and the API server's address
POD_CIDR = "10.244.0.0/24"
GATEWAY = "10.244.0.1"
DNS_IP = "10.96.0.10"  # in tests/kube.py's SERVICE_CIDR
CLUSTER_DOMAIN = "cluster.local"
CNI_NETWORK = "titanic-local"
CNI_BIN_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins
NAMESPACE = "k8s.io"  # containerd namespace of the CRI plugin
PAUSE_IMAGE = "registry.k8s.io/pause:{PAUSE_VERSION}"  # containerd 2.4's default sandbox image
COREDNS_IMAGE = "localhost/titanic/coredns:{COREDNS_VERSION}"
BUSYBOX_IMAGE = "localhost/titanic/busybox:latest-static"
# Host paths the kubelet, containerd or the CNI plugins create outside the directory: removed by `down` when
# `up` found them missing.
HOST_DIRS = ["/var/lib/kubelet", "/var/log/pods", "/var/log/containers", "/var/lib/cni", "/run/containerd",
             "/run/netns", "/var/run/nri", "/opt/containerd"]
# Kernel settings the node changes: the kubelet's kernel tunables (protectKernelDefaults=false: panic,
# panic_on_oops, overcommit_memory seen changed here), the bridge plugin's ip_forward (isGateway), which also
# flips conf/all/accept_redirects and every interface's forwarding, and kube-proxy's conntrack and
# route_localnet (disabled in its config, still recorded). `down` writes back the values found before `up`,
# ip_forward first.
SYSCTLS = ["net/ipv4/ip_forward", "vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
           "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes", "net/ipv4/conf/all/accept_redirects",
           "net/ipv4/conf/default/accept_redirects", "net/ipv4/conf/default/forwarding",
           "net/ipv6/conf/all/forwarding", "net/ipv4/conf/all/route_localnet",
           "net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables",
           "net/netfilter/nf_conntrack_max", "net/netfilter/nf_conntrack_tcp_timeout_established",
           "net/netfilter/nf_conntrack_tcp_timeout_close_wait", "net/netfilter/nf_conntrack_tcp_be_liberal"]
CHAIN_PREFIXES = ("KUBE-", "CNI-")  # kube-proxy's and the kubelet's chains; the CNI plugins'
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PREFIX = "kubepods"  # what the kubelet (cgroupfs driver) creates under each hierarchy


@dataclass
class Node:
    """A running local cluster: its directory, processes and what the host looked like before it."""

    root: str
    pids: dict[str, int] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)  # host paths that did not exist before `up`
    sysctls: dict[str, str] = field(default_factory=dict)  # values before `up`
    chains: dict[str, list[str]] = field(default_factory=dict)  # "iptables/nat" -> chain names before `up`
    cgroups: dict[str, list[str]] = field(default_factory=dict)  # hierarchy -> kubepods* dirs before `up`
    socket_dir: str = ""  # containerd's shim sockets (a short path: unix socket paths are limited)
    timings: dict[str, float] = field(default_factory=dict)  # seconds from the start of `up`

    @property
    def path(self) -> Path:
        return Path(self.root)

    @property
    def control_plane(self) -> Path:
        return self.path / "control-plane"

    @property
    def kubeconfig(self) -> str:
        return str(self.control_plane / "admin.kubeconfig")

    @property
    def containerd_socket(self) -> str:
        return str(self.path / "containerd" / "containerd.sock")

    def env(self) -> dict[str, str]:
        # The discovery cache stays in the node's directory, for the reason of kube.Cluster.env().
        return {"KUBECONFIG": self.kubeconfig, "KUBE_CONTEXT": kube.CONTEXT, "KUBECACHEDIR": str(self.path / "cache")}

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float | None = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(kube._bin("kubectl")), "--kubeconfig", self.kubeconfig, *args], input=input,
                              text=True, capture_output=True, check=check, timeout=timeout,
                              env={**os.environ, **self.env()})

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([str(kube._bin("ctr")), "--address", self.containerd_socket, "-n", NAMESPACE, *args],
                              text=True, capture_output=True, check=check, timeout=120)

    def save(self) -> None:
        (self.path / STATE_FILE).write_text(json.dumps(asdict(self), indent=1))


# --- the host: what it looks like, so that `down` restores exactly that -----------------------------------

def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name


def read_sysctls() -> dict[str, str]:
    """SYSCTLS, and the forwarding flag of every interface there is (ip_forward sets them all)."""
    values = {}
    interfaces = sorted(p.name for p in Path("/proc/sys/net/ipv4/conf").iterdir() if p.name not in ("all", "default"))
    for name in SYSCTLS + [f"net/ipv4/conf/{i}/forwarding" for i in interfaces]:
        try:
            values[name] = _sysctl_path(name).read_text().strip()
        except OSError:
            pass
    return values


def iptables_chains() -> dict[str, list[str]]:
    """Chain names per "<command>/<table>" from iptables-save and ip6tables-save."""
    chains: dict[str, list[str]] = {}
    for command in ("iptables", "ip6tables"):
        if not shutil.which(f"{command}-save"):
            continue
        table = ""
        for line in subprocess.run([f"{command}-save"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("*"):
                table = line[1:]
                chains.setdefault(f"{command}/{table}", [])
            elif line.startswith(":"):
                chains[f"{command}/{table}"].append(line[1:].split()[0])
    return chains


def kubepods_cgroups() -> dict[str, list[str]]:
    """The kubepods* cgroup directories at the top of every hierarchy (cgroup v1, and v2 in hybrid mode)."""
    found: dict[str, list[str]] = {}
    if not CGROUP_ROOT.is_dir():
        return found
    for hierarchy in sorted(p for p in CGROUP_ROOT.iterdir() if p.is_dir() and not p.is_symlink()):
        found[hierarchy.name] = sorted(p.name for p in hierarchy.iterdir()
                                       if p.is_dir() and p.name.startswith(CGROUP_PREFIX))
    if (CGROUP_ROOT / "cgroup.controllers").exists():  # pure cgroup v2: one hierarchy at the root
        found[""] = sorted(p.name for p in CGROUP_ROOT.iterdir() if p.is_dir() and p.name.startswith(CGROUP_PREFIX))
    return found


def mounts() -> list[str]:
    """Mount points in /proc/mounts order (octal escapes decoded)."""
    points = []
    for line in Path("/proc/mounts").read_text().splitlines():
        point = line.split()[1]
        points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), point))
    return points


# --- processes ---------------------------------------------------------------------------------------------

def _env() -> dict[str, str]:
    env = kube._env()  # no proxy settings
    env["PATH"] = f"{kube._bin('containerd').parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return env


def _start(node: Node, name: str, argv: list[str]) -> subprocess.Popen:
    proc = kube.spawn(node.path, name, argv, _env())
    node.pids[name] = proc.pid
    node.save()  # so `down` can clean up a failed start
    return proc


def _run(*argv: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, input=input, env=_env())


def _pids_of_cgroups(top: str) -> set[int]:
    """Every process in the cgroups under `top` (kubepods*) of every hierarchy: the pods' containers."""
    pids: set[int] = set()
    for hierarchy in ([CGROUP_ROOT] if (CGROUP_ROOT / "cgroup.controllers").exists()
                      else [p for p in CGROUP_ROOT.iterdir() if p.is_dir()]):
        base = hierarchy / top
        if not base.is_dir():
            continue
        for procs in base.rglob("cgroup.procs"):
            try:
                pids.update(int(p) for p in procs.read_text().split())
            except OSError:
                pass
    return pids


def _shim_pids(node: Node) -> set[int]:
    """containerd's shims of this node (started detached, in sessions of their own): their -address is ours."""
    pids = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # argv[0] is bin/containerd-shim-runc-v2-<version>: the symlink's target, which the shim re-executes
        if argv and os.path.basename(argv[0]).startswith(b"containerd-shim-runc-v2") and \
                node.containerd_socket.encode() in argv:
            pids.add(int(proc.name))
    return pids


def _kill(pids: set[int], timeout: float = 10.0) -> None:
    """SIGKILL `pids` and wait until they have exited."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        pids = {p for p in pids if not _exited(p)}
        time.sleep(0.05)


def _exited(pid: int) -> bool:
    """Gone, or a zombie: these processes are not our children (`up` ran in another process) and PID 1 reaps
    them, which on this machine takes up to ~2 s."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _stop_groups(pids: list[int], timeout: float = 10.0) -> None:
    """SIGTERM the process groups of `pids` (each started in a session of its own) all at once, SIGKILL what
    lingers, and wait until they have exited."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.killpg(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = [p for p in pids if not _exited(p)]
            if not pids:
                return
            time.sleep(0.05)


def _wait_reaped(pids: set[int], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        pids = {p for p in pids if Path(f"/proc/{p}").exists()}
        time.sleep(0.05)


def memory_rss(node: Node) -> dict[str, int]:
    """Resident memory (bytes) of the cluster: control plane, node daemons, shims and the pods' processes."""
    cluster = json.loads((node.control_plane / kube.STATE_FILE).read_text())
    shims, pods = _shim_pids(node), _pids_of_cgroups(CGROUP_PREFIX)
    parents = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                parents[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass

    def tree(pid: int) -> set[int]:  # a started process and its descendants
        found, todo = {pid}, [pid]
        while todo:
            parent = todo.pop()
            children = {c for c, p in parents.items() if p == parent and c not in found | shims | pods}
            found |= children
            todo.extend(children)
        return found

    groups = {**{n: tree(p) for n, p in cluster["pids"].items()}, **{n: tree(p) for n, p in node.pids.items()},
              "shims": shims, "pods": pods}
    rss = {}
    for name, pids in groups.items():
        total = 0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/statm").read_text().split()
                total += int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
            except OSError:
                pass
        rss[name] = total
    return rss


# --- configuration -----------------------------------------------------------------------------------------


def image_names() -> dict[str, str]:
    v = versions()
    return {"pause": PAUSE_IMAGE.format(**v), "coredns": COREDNS_IMAGE.format(**v), "busybox": BUSYBOX_IMAGE}


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


def containerd_config(node: Node) -> str:
    """containerd 2.4 config (version 4, as `containerd config default` writes it): everything under the node's
    directory, nothing on the host's paths (no imports from /etc/containerd, no /run/containerd, no NRI socket).

    Version 4 ignores a top-level [grpc] address: the sockets are set in the grpc/ttrpc server plugins, or
    containerd takes over the system socket /run/containerd/containerd.sock."""
    root = node.path / "containerd"
    sections = {
        "": {"version": 4, "root": str(root / "root"), "state": str(root / "state"), "temp": str(root / "tmp"),
             "imports": [], "disabled_plugins": ["io.containerd.nri.v1.nri"]},
        "plugins.'io.containerd.server.v1.grpc'": {"address": node.containerd_socket},
        "plugins.'io.containerd.server.v1.ttrpc'": {"address": node.containerd_socket + ".ttrpc"},
        "plugins.'io.containerd.server.v1.debug'": {"address": ""},
        "plugins.'io.containerd.server.v1.metrics'": {"address": ""},
        "plugins.'io.containerd.internal.v1.opt'": {"path": str(root / "opt")},
        "plugins.'io.containerd.shim.v1.manager'": {"socket_dir": node.socket_dir},
        "plugins.'io.containerd.cri.v1.images'": {"snapshotter": "overlayfs"},
        "plugins.'io.containerd.cri.v1.images'.pinned_images": {"sandbox": image_names()["pause"]},
        "plugins.'io.containerd.cri.v1.runtime'": {
            # Root here lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj to the sandbox's -998
            # ("can't get final child's PID from pipe: EOF") unless containerd clamps it to its own.
            "restrict_oom_score_adj": True,
            "netns_mounts_under_state_dir": True,  # not /run/netns
            "cdi_spec_dirs": [],
        },
        "plugins.'io.containerd.cri.v1.runtime'.containerd": {"default_runtime_name": "runc"},
        "plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc": {"runtime_type": "io.containerd.runc.v2"},
        "plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options": {
            "SystemdCgroup": False, "BinaryName": shutil.which("runc") or "runc",
            "Root": str(root / "runc")},  # not /run/containerd/runc
        "plugins.'io.containerd.cri.v1.runtime'.cni": {"bin_dirs": [CNI_BIN_DIR], "conf_dir": str(node.path / "cni")},
        "plugins.'io.containerd.grpc.v1.cri'": {"stream_server_address": "127.0.0.1", "stream_server_port": "0"},
    }
    out = []
    for name, values in sections.items():
        if name:
            out.append(f"\n[{name}]")
        out.extend(f"{key} = {_toml(value)}" for key, value in values.items())
    return "\n".join(out) + "\n"


def cni_config(node: Node) -> dict:
    return {
        "cniVersion": "1.0.0", "name": CNI_NETWORK,
        "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": True, "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR, "gateway": GATEWAY}]],
                      "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(node.path / "cni-ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
            # ACCEPT rules for the pods' traffic in FORWARD: Docker, which may run beside (images are built
            # with it), sets FORWARD's policy to DROP.
            {"type": "firewall", "backend": "iptables"},
        ],
    }


def kubelet_config(node: Node, pki: Path, port: int, healthz_port: int) -> dict:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "address": GATEWAY, "port": port, "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": healthz_port,
        "tlsCertFile": str(pki / "kubelet-serving.crt"), "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(pki / "ca.crt")}},
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{node.containerd_socket}",
        "cgroupDriver": "cgroupfs",  # PID 1 is not systemd
        "failCgroupV1": False,  # this host has cgroup v1: the kubelet refuses it unless told
        "failSwapOn": False,
        "clusterDNS": [DNS_IP], "clusterDomain": CLUSTER_DOMAIN, "resolvConf": "/etc/resolv.conf",
        "podLogsDir": str(node.path / "pod-logs"),
        # A shared machine's disk: no evictions or image GC of the images imported here (none can be pulled).
        # Absolute, not %: on DiskPressure the kubelet deletes every image no container uses, whatever the GC
        # thresholds (found on a clean-clone run: 1% of a 252 GB disk is 2.5 GB, the step image vanished between
        # its import and its first pod, and the chart's hook Job sat in ImagePullBackOff).
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "256Mi", "imagefs.available": "256Mi",
                         "nodefs.inodesFree": "1%"},
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False, "registerNode": True, "rotateCertificates": False,
        "serverTLSBootstrap": False, "maxPods": 110, "nodeStatusReportFrequency": "10s",
    }


def kube_proxy_config(node: Node, healthz_port: int, metrics_port: int) -> dict:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(node.path / "kube-proxy.kubeconfig")},
        "hostnameOverride": NODE, "bindAddress": GATEWAY, "mode": "iptables", "clusterCIDR": POD_CIDR,
        "healthzBindAddress": f"127.0.0.1:{healthz_port}", "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "nodePortAddresses": [POD_CIDR],  # NodePorts on the bridge only, never on the machine's own interfaces
        # Leave the host's kernel settings alone: no conntrack tuning, no route_localnet, no oom_score_adj
        # (root here lacks CAP_SYS_RESOURCE to lower it).
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "iptables": {"localhostNodePorts": False},
        "oomScoreAdj": 0,
    }


def coredns_manifests() -> list[dict]:
    """CoreDNS as kubeadm deploys it (RBAC, Corefile, Deployment, Service kube-dns), on port 1053 as nobody."""
    labels = {"k8s-app": "kube-dns"}
    meta = {"name": "coredns", "namespace": "kube-system"}
    corefile = f""".:1053 {{
    errors
    health :8080
    ready :8181
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }}
    forward . /etc/resolv.conf
    cache 30
    loop
    reload
    loadbalance
}}
"""
    container = {
        "name": "coredns", "image": image_names()["coredns"], "imagePullPolicy": "Never",
        "args": ["-conf", "/etc/coredns/Corefile"],
        "ports": [{"name": "dns", "containerPort": 1053, "protocol": "UDP"},
                  {"name": "dns-tcp", "containerPort": 1053, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "170Mi"}},
        "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns", "readOnly": True}],
        "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}, "periodSeconds": 10, "failureThreshold": 5},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 1},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
    }
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "system:coredns"},
         "rules": [{"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"]},
                   {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "system:coredns"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns"},
         "subjects": [{"kind": "ServiceAccount", **meta}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"Corefile": corefile}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {**meta, "labels": labels},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels},
                               "spec": {"serviceAccountName": "coredns", "priorityClassName": "system-cluster-critical",
                                        "dnsPolicy": "Default", "containers": [container],
                                        "securityContext": {"runAsNonRoot": True, "runAsUser": 65534,
                                                            "runAsGroup": 65534,
                                                            "seccompProfile": {"type": "RuntimeDefault"}},
                                        "volumes": [{"name": "config", "configMap": {"name": "coredns"}}]}}}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "kube-dns", "namespace": "kube-system",
                      "labels": {**labels, "kubernetes.io/name": "CoreDNS"}},
         "spec": {"selector": labels, "clusterIP": DNS_IP,
                  "ports": [{"name": "dns", "port": 53, "targetPort": 1053, "protocol": "UDP"},
                            {"name": "dns-tcp", "port": 53, "targetPort": 1053, "protocol": "TCP"}]}},
    ]


def _is_static(path: Path) -> bool:
    """An ELF executable without a PT_INTERP program header (no dynamic loader): runs in a FROM-scratch image."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return False
    phoff = int.from_bytes(data[0x20:0x28], "little")
    phentsize = int.from_bytes(data[0x36:0x38], "little")
    phnum = int.from_bytes(data[0x38:0x3a], "little")
    return all(int.from_bytes(data[phoff + i * phentsize:phoff + i * phentsize + 4], "little") != 3
               for i in range(phnum))


def build_images(out: Path) -> dict[str, Path]:
    """The node's images as docker-archive tars: pause, CoreDNS, busybox (Debian's busybox-static)."""
    from hack.local_image import _layer, docker_archive

    out.mkdir(parents=True, exist_ok=True)
    names = image_names()
    busybox = Path(shutil.which("busybox") or "/bin/busybox")
    if not busybox.exists() or not _is_static(busybox.resolve()):
        raise RuntimeError(f"{busybox} is not a static busybox: install busybox-static (make node-deps)")
    applets = ["sh", "cat", "echo", "ls", "sleep", "wget", "nslookup", "httpd", "nc", "env", "id", "hostname",
               "ps", "true", "false", "grep", "head", "tail", "touch", "mkdir", "date", "ip"]
    specs = {
        "pause": (_layer({"/pause": (kube._bin("pause").read_bytes(), 0o755)}, {}, []),
                  dict(entrypoint=["/pause"], user="65535:65535")),
        "coredns": (_layer({"/coredns": (kube._bin("coredns").read_bytes(), 0o755)}, {}, []),
                    dict(entrypoint=["/coredns"], user="65534:65534")),
        "busybox": (_layer({"/bin/busybox": (busybox.read_bytes(), 0o755)},
                           {f"/bin/{a}": "busybox" for a in applets}, ["/tmp", "/www"]),
                    dict(entrypoint=[], cmd=["sh"], user="65534:65534")),
    }
    tars = {}
    for key, (layer, config) in specs.items():
        tars[key] = out / f"{key}.tar"
        tars[key].write_bytes(docker_archive(names[key], layer, **config))
    return tars


def _node_certs(pki: Path) -> None:
    kube._cert(pki, "kubelet", f"/O=system:nodes/CN=system:node:{NODE}")
    kube._cert(pki, "kubelet-serving", f"/CN={NODE}", sans=[f"IP:{GATEWAY}", f"DNS:{NODE}", "IP:127.0.0.1"],
               server=True)
    kube._cert(pki, "kube-proxy", "/CN=system:kube-proxy")  # bound to system:node-proxier by default


# --- up / down ---------------------------------------------------------------------------------------------

def _check_host(node: Node) -> None:
    if os.geteuid() != 0:
        raise RuntimeError("a real node needs root (kubelet, containerd, iptables, mounts)")
    missing = [b for b in ("runc", "iptables", "iptables-save", "iptables-restore", "conntrack", "ip")
               if not shutil.which(b)]
    missing += [p for p in (f"{CNI_BIN_DIR}/bridge", f"{CNI_BIN_DIR}/host-local", f"{CNI_BIN_DIR}/loopback",
                            f"{CNI_BIN_DIR}/portmap") if not Path(p).exists()]
    if missing:
        raise RuntimeError(f"missing {', '.join(missing)}: run `make node-deps`")
    for name in ("kubelet", "kube-proxy", "containerd", "containerd-shim-runc-v2", "ctr", "coredns", "pause"):
        kube._bin(name)
    if _run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
        raise RuntimeError(f"interface {BRIDGE} exists: another local cluster runs (make local-cluster-down)")
    if routes := _run("ip", "-o", "route", "show", "match", GATEWAY).stdout.strip().splitlines():
        if any(not r.startswith("default ") for r in routes):
            raise RuntimeError(f"{POD_CIDR} is routed already ({routes}): the node's bridge needs it")
    if len(node.containerd_socket) > 100:
        raise RuntimeError(f"{node.containerd_socket} is too long for a unix socket: use a shorter --dir")
    leftovers = [c for chains in iptables_chains().values() for c in chains if c.startswith(CHAIN_PREFIXES)]
    if leftovers:
        # `down` removes the chains `up` made, by name: with chains of another cluster around it could not tell.
        raise RuntimeError(f"iptables chains of another cluster exist ({', '.join(sorted(set(leftovers))[:5])}...)")


def _socket_dir(root: Path) -> str:
    """A directory for the shims' sockets, at most 42 characters long (containerd's limit)."""
    candidate = root / "s"
    if len(str(candidate)) <= 42:
        return str(candidate)
    return f"/run/titanic-node-{hashlib.sha256(str(root).encode()).hexdigest()[:12]}"


def up(root: Path, *, dns: bool = True) -> Node:
    """Start the control plane and the real node under `root`; with `dns`, wait for CoreDNS too."""
    start = time.monotonic()
    root = root.resolve()
    if (root / STATE_FILE).exists():
        raise RuntimeError(f"a local cluster already runs in {root}; run `make local-cluster-down` first")
    node = Node(root=str(root), socket_dir=_socket_dir(root))
    _check_host(node)
    root.mkdir(parents=True, exist_ok=True)
    node.created = [p for p in [*HOST_DIRS, node.socket_dir] if not os.path.lexists(p)]
    node.sysctls, node.chains, node.cgroups = read_sysctls(), iptables_chains(), kubepods_cgroups()
    node.save()

    def mark(what: str) -> None:
        node.timings[what] = round(time.monotonic() - start, 2)
        node.save()

    try:
        # The bridge exists before the kubelet starts: its gateway address is the node IP (the kubelet rejects
        # loopback node IPs), where the API server listens, the kubelet serves and pods reach the API.
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "add", f"{GATEWAY}/{POD_CIDR.split('/')[1]}", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")

        # The kubelet reports its node name as a Hostname address, which no DNS here resolves: logs, exec and
        # port-forward must dial the InternalIP.
        cluster = kube.up(node.control_plane, address=GATEWAY, kwok=False,
                          apiserver_args=("--kubelet-preferred-address-types=InternalIP,Hostname",))
        mark("control plane")
        pki = node.control_plane / "pki"
        _node_certs(pki)
        for user in ("kubelet", "kube-proxy"):
            kube.write_kubeconfig(root / f"{user}.kubeconfig", cluster.server, pki, user)

        (root / "cni").mkdir()
        (root / "cni" / "10-titanic.conflist").write_text(json.dumps(cni_config(node), indent=1))
        (root / "containerd").mkdir()
        (root / "containerd" / "config.toml").write_text(containerd_config(node))
        containerd = _start(node, "containerd", [str(kube._bin("containerd")), "--config",
                                                 str(root / "containerd" / "config.toml")])
        kube._wait("containerd", containerd, lambda: node.ctr("version", check=False).returncode == 0,
                   root / "containerd.log", timeout=30)
        for tar in build_images(root / "images").values():
            node.ctr("images", "import", "--platform", "linux/amd64", str(tar))
        mark("containerd")

        kubelet_yaml = root / "kubelet.yaml"
        kubelet_yaml.write_text(json.dumps(kubelet_config(node, pki, free_port(), free_port()), indent=1))
        kubelet = _start(node, "kubelet", [
            str(kube._bin("kubelet")), f"--config={kubelet_yaml}", f"--kubeconfig={root / 'kubelet.kubeconfig'}",
            f"--root-dir={root / 'kubelet'}", f"--hostname-override={NODE}", f"--node-ip={GATEWAY}",
            "--node-labels=ingress-ready=true,kubernetes.io/os=linux"])
        kube._wait("node Ready", kubelet, lambda: node.kubectl(
            "get", "node", NODE, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
            check=False).stdout == "True", root / "kubelet.log", timeout=90)
        mark("node Ready")
        # kind's control-plane role label (a kubelet may not set node-role labels on itself)
        node.kubectl("label", "node", NODE, "node-role.kubernetes.io/control-plane=", "--overwrite")

        proxy_yaml = root / "kube-proxy.yaml"
        healthz = free_port()
        proxy_yaml.write_text(json.dumps(kube_proxy_config(node, healthz, free_port()), indent=1))
        proxy = _start(node, "kube-proxy", [str(kube._bin("kube-proxy")), f"--config={proxy_yaml}"])
        kube._wait("kube-proxy", proxy, lambda: requests.get(f"http://127.0.0.1:{healthz}/healthz", timeout=1).ok,
                   root / "kube-proxy.log", timeout=60)
        mark("kube-proxy")

        _refuse_unserved_service_ips()
        node.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(o) for o in coredns_manifests()))
        if dns:
            node.kubectl("-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout=120s",
                         timeout=130)
            mark("CoreDNS Ready")
    except BaseException:
        down(root)
        raise
    node.save()
    return node


# The CNI firewall plugin's chain for an administrator's rules: FORWARD consults it before the plugin accepts a
# pod's traffic. The plugin creates it with the first pod, or keeps it with its rules when it exists.
ADMIN_CHAIN = "CNI-ADMIN"


def _refuse_unserved_service_ips() -> None:
    """Refuse connections to the service range that kube-proxy did not translate to a pod, as a cluster does.

    A ClusterIP with no ready endpoint (a model server still starting) is not translated. kube-proxy's REJECT for
    it sits in FORWARD behind the CNI firewall plugin's accept of the pod's traffic, so the connection left by the
    default route, and this machine's egress proxy answers any port 80 there (404, `server: keryx`). An HTTP
    client keeps such a connection alive: the transformer's check of its predictor got that 404 for 90 s after the
    predictor was ready, and the first `deploy` took 262 s instead of ~50. Translated connections carry a pod's
    address by the time the filter table sees them, so only the untranslated ones match.
    """
    if _run("iptables", "-t", "filter", "-S", ADMIN_CHAIN, check=False).returncode:
        _run("iptables", "-t", "filter", "-N", ADMIN_CHAIN)
    refuse = ["-d", kube.SERVICE_CIDR, "-j", "REJECT"]
    _run("iptables", "-t", "filter", "-A", ADMIN_CHAIN, "-p", "tcp", *refuse, "--reject-with", "tcp-reset")
    _run("iptables", "-t", "filter", "-A", ADMIN_CHAIN, *refuse)
    # The host's own connections (Airflow, the tests) too; `down` removes this jump with the chain.
    _run("iptables", "-t", "filter", "-I", "OUTPUT", "-d", kube.SERVICE_CIDR, "-j", ADMIN_CHAIN)


def _delete_chains(before: dict[str, list[str]]) -> None:
    """Remove the KUBE-*/CNI-* chains that were not there before `up`, and every rule jumping to them."""
    for command in ("iptables", "ip6tables"):
        if not shutil.which(f"{command}-save"):
            continue
        tables: dict[str, list[str]] = {}
        table = ""
        for line in _run(f"{command}-save").stdout.splitlines():
            if line.startswith("*"):
                table = line[1:]
                tables[table] = []
            elif table and line and not line.startswith(("#", "COMMIT")):
                tables[table].append(line)
        for table, lines in tables.items():
            old = set(before.get(f"{command}/{table}", []))
            chains = [l[1:].split()[0] for l in lines if l.startswith(":")]
            ours = {c for c in chains if c.startswith(CHAIN_PREFIXES) and c not in old}
            if not ours:
                continue
            script = [f"*{table}"]
            for line in lines:
                parts = line.split()
                if parts[0] == "-A" and parts[1] not in ours and any(
                        parts[i] in ("-j", "-g") and parts[i + 1] in ours for i in range(len(parts) - 1)):
                    script.append("-D" + line[2:])
            script += [f"-F {c}" for c in sorted(ours)] + [f"-X {c}" for c in sorted(ours)] + ["COMMIT", ""]
            _run(f"{command}-restore", "--noflush", input="\n".join(script))


def _delete_tables(before: dict[str, list[str]]) -> None:
    """Delete the tables that iptables-nft made for kube-proxy, the kubelet and the CNI plugins and that were
    not there before `up`, once they hold nothing but their empty built-in chains: iptables cannot delete a
    table, and a leftover `*nat` in iptables-save is a change of the machine's state."""
    if not shutil.which("nft"):
        return
    for command, family in (("iptables", "ip"), ("ip6tables", "ip6")):
        if "nf_tables" not in _run(command, "--version", check=False).stdout:
            continue  # legacy iptables: tables are the kernel's, always there
        for key in iptables_chains():
            table = key.split("/", 1)[1]
            if not key.startswith(command + "/") or key in before:
                continue
            listing = _run("nft", "-j", "list", "table", family, table, check=False)
            if listing.returncode != 0:
                continue
            items = json.loads(listing.stdout).get("nftables", [])
            if any("rule" in item for item in items) or any(
                    "chain" in item and "hook" not in item["chain"] for item in items):
                continue  # not empty: someone else's
            _run("nft", "delete", "table", family, table, check=False)


def _unmount_under(prefixes: list[str]) -> None:
    """Unmount everything mounted at or below `prefixes`, deepest and newest first (lazily if busy)."""
    prefixes = [p.rstrip("/") for p in prefixes if p]
    for _ in range(20):
        points = [m for m in mounts() if any(m == p or m.startswith(p + "/") for p in prefixes)]
        if not points:
            return
        for point in reversed(points):
            if subprocess.run(["umount", point], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", point], capture_output=True)


def _remove_cgroups(before: dict[str, list[str]]) -> None:
    """rmdir the kubepods* cgroup trees that were not there before `up`, leaves first."""
    for _ in range(50):
        left = False
        for hierarchy, names in kubepods_cgroups().items():
            for name in names:
                if name in before.get(hierarchy, []):
                    continue
                top = (CGROUP_ROOT / hierarchy / name) if hierarchy else CGROUP_ROOT / name
                for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                    try:
                        directory.rmdir()
                    except OSError:
                        left = True
                try:
                    top.rmdir()
                except OSError:
                    left = True
        if not left:
            return
        _kill(_pids_of_cgroups(CGROUP_PREFIX), timeout=1)
        time.sleep(0.1)


def down(root: Path) -> None:
    """Stop everything `up` started under `root` and remove all it made, on the host too."""
    root = root.resolve()
    state = root / STATE_FILE
    if not state.exists():
        kube.down(root / "control-plane")
        shutil.rmtree(root, ignore_errors=True)
        return
    node = Node(**json.loads(state.read_text()))
    # 1. The kubelet (it would restart containers) and kube-proxy, then whatever runs in the pods' cgroups
    #    (containers, pause), the shims, containerd and the control plane.
    #    In parallel, but etcd last: an API server without etcd takes its time to stop (and etcd waits for it).
    _stop_groups([node.pids[n] for n in ("kube-proxy", "kubelet") if n in node.pids])
    shims = _shim_pids(node)
    _kill(_pids_of_cgroups(CGROUP_PREFIX) | shims)
    cluster = node.control_plane / kube.STATE_FILE
    control_plane = json.loads(cluster.read_text())["pids"] if cluster.exists() else {}
    _stop_groups([p for n, p in {**node.pids, **control_plane}.items()
                  if n not in ("kube-proxy", "kubelet", "etcd")])
    _stop_groups([control_plane["etcd"]] if "etcd" in control_plane else [])
    _kill(shims := _shim_pids(node) | shims)
    _wait_reaped(shims | set(node.pids.values()) | set(control_plane.values()))
    kube.down(node.control_plane)  # its processes are gone: deletes its directory
    # 3. Mounts: container rootfs (overlay), shm, network namespaces, the kubelet's volumes and its root dir.
    owned = [str(root), node.socket_dir] + [p for p in node.created if p in HOST_DIRS]
    _unmount_under(owned)
    # 4. Network: the bridge and any veth left on it, then the iptables chains (kube-proxy's own cleanup
    #    first: it knows the jump rules it put into the built-in chains).
    if _run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
        links = json.loads(_run("ip", "-j", "link", "show", "master", BRIDGE).stdout or "[]")
        for link in links:
            _run("ip", "link", "del", link["ifname"], check=False)
        _run("ip", "link", "del", BRIDGE, check=False)
    if (proxy := shutil.which("kube-proxy") or str(kube._bin("kube-proxy"))) and Path(proxy).exists():
        _run(proxy, "--cleanup", check=False)
    _delete_chains(node.chains)
    _delete_tables(node.chains)
    # 5. cgroups, kernel settings, host directories, the directory itself.
    _remove_cgroups(node.cgroups)
    for name, value in node.sysctls.items():  # ip_forward first: writing it resets the others
        try:
            if _sysctl_path(name).read_text().strip() != value:
                _sysctl_path(name).write_text(value + "\n")
        except OSError:
            pass
    for path in node.created:
        if os.path.islink(path) or os.path.isfile(path):
            os.unlink(path)
        else:
            shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)


def load(root: Path, archives: list[Path]) -> list[str]:
    """Import image archives (`docker save` or OCI layout tars) into the node's containerd, where the kubelet
    finds them (pods need `imagePullPolicy: IfNotPresent` or `Never`: no registry is reachable)."""
    node = Node(**json.loads((root.resolve() / STATE_FILE).read_text()))
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    names = []
    for archive in archives:
        out = node.ctr("images", "import", "--platform", f"linux/{arch}", str(archive)).stdout
        names += [line.split()[0] for line in out.splitlines() if line.split()[1:2] == ["saved"]]
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down", "load"])
    parser.add_argument("--dir", default=".local-cluster", help="directory for certificates, data, images and logs")
    parser.add_argument("archives", nargs="*", type=Path, help="load: image tars (docker save) to import")
    args = parser.parse_intermixed_args(argv)
    root = Path(args.dir).resolve()
    if args.action == "down":
        down(root)
        return 0
    if args.action == "load":
        for name in load(root, args.archives):
            print(f"loaded {name}", file=sys.stderr)
        return 0
    def interrupted(signum, frame):  # `kill` of a half-started `up`: clean up like Ctrl-C does
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    node = up(root)
    for name, value in node.env().items():
        print(f"export {name}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
