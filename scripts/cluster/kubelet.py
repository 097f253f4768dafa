"""The process kubelet: plays the test cluster's nodes, running pods of the project's image as local processes.

It registers the nodes (and renews their Leases, so the node lifecycle controller keeps them Ready), watches
the pods bound to them, and for each pod whose containers use the project's image (the chart's
`image.repository`, any tag) runs the containers' command and args with the project's installed console
scripts (the virtualenv's bin first on PATH). Each container process gets its own mount namespace
(`unshare --mount`) where the pod's volumes are bind-mounted at their real mount paths (read-only ones
remounted read-only) and the termination message file at its terminationMessagePath, and runs as the pod's
runAsUser / runAsGroup / fsGroup / supplementalGroups. Each pod has a network namespace of its own (loopback
only), into which the API server (as port 443, with the `kubernetes.default.svc` names in the container's
/etc/hosts, and on its own port) and the ports listed in CLUSTER_DIR/host-ports are forwarded on 127.0.0.1.
Status goes back to the API server as a kubelet writes it: Running, then terminated with exit code,
reason and the termination message.

What it does not do (README, Testing): no images or image filesystems (the host's files are the container's,
plus the volume mounts), no cgroups or resource limits, no capabilities, seccomp or AppArmor, no probes (a
running container is ready), no pod-to-pod network or Services (a pod reaches only the forwarded host
ports), no `kubectl logs`/`exec` (logs are files in CLUSTER_DIR/pods/), restart back-off capped at 10 seconds.

Usage: kubelet.py --kubeconfig=... --cluster-dir=... --venv=... --chart=... --nodes=node-a,node-b
       kubelet.py exec SPEC.json   (internal: the in-namespace half of starting one container)
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("process-kubelet")
_libc = ctypes.CDLL(None, use_errno=True)

KUBE_VERSION = "v1.34.4"
MAX_TERMINATION_MESSAGE = 4096
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# In each pod, the API server answers as the `kubernetes` Service does: these names, port 443.
KUBERNETES_NAMES = ("kubernetes", "kubernetes.default", "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local")
KUBERNETES_SERVICE_PORT = 443
# What the project's image (Dockerfile) brings besides its files: its user and group, ENV and WORKDIR.
IMAGE_ACCOUNTS = {"passwd": "s3backup:x:65532:65532::/nonexistent:/usr/sbin/nologin", "group": "s3backup:x:65532:"}
IMAGE_ENV = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
IMAGE_WORKDIR = "/tmp"
REPO = Path(__file__).resolve().parents[2]  # the checkout: its editable install imports from syncer/, operator/


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------------------------------------------------
# Pure decisions over plain pod dicts.


def image_repository(image: str) -> str:
    """`registry/repo:tag@sha256:...` -> `registry/repo` (a port in the registry is not a tag)."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: $(VAR) becomes its value when defined, $$ escapes a $."""
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", replace, text)


def field_value(pod: dict[str, Any], path: str) -> str:
    """A downward-API fieldRef's value (metadata.name, metadata.labels['x'], spec.nodeName, status.podIP...)."""
    meta, spec = pod["metadata"], pod["spec"]
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.*)'\]", path)
    if match:
        return (meta.get(match.group(1)) or {}).get(match.group(2), "")
    values = {
        "metadata.name": meta.get("name", ""), "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""), "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.hostIP": "127.0.0.1", "status.podIP": "127.0.0.1", "status.hostIPs": "127.0.0.1",
        "status.podIPs": "127.0.0.1",
    }
    if path not in values:
        raise ConfigError("CreateContainerConfigError", f"unsupported fieldRef {path!r}")
    return values[path]


def pod_identity(pod: dict[str, Any], container: dict[str, Any]) -> tuple[int, int, list[int]]:
    """(uid, gid, supplementary groups) from the container's and the pod's securityContext (the container's
    wins), with the image's user (65532, the Dockerfile's USER) where neither says."""
    pod_context = pod["spec"].get("securityContext") or {}
    context = container.get("securityContext") or {}
    uid = context.get("runAsUser", pod_context.get("runAsUser", 65532))
    gid = context.get("runAsGroup", pod_context.get("runAsGroup", 65532))
    groups = [gid]
    if pod_context.get("fsGroup") is not None:
        groups.append(pod_context["fsGroup"])
    groups += list(pod_context.get("supplementalGroups") or [])
    run_as_non_root = context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))
    if run_as_non_root and uid == 0:
        raise ConfigError("CreateContainerConfigError", "container has runAsNonRoot and image will run as root")
    return int(uid), int(gid), sorted(set(groups))


def terminated_reason(exit_code: int) -> str:
    return "Completed" if exit_code == 0 else "Error"


def pod_phase(restart_policy: str, exit_codes: list[int | None]) -> str:
    """The phase once every container has run (None: still running or restarting)."""
    if any(code is None for code in exit_codes):
        return "Running"
    if all(code == 0 for code in exit_codes):
        return "Succeeded"
    return "Failed" if restart_policy == "Never" else "Running"


class ConfigError(Exception):
    """The container cannot be started yet (a missing Secret, ...): waiting with this reason, retried."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# ---------------------------------------------------------------------------------------------------------
# The in-namespace half: `kubelet.py exec SPEC.json` runs under `unshare --mount --propagation private`.


MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC = 1, 32, 4096, 16384


def mount(source: str | None, target: Path, kind: str | None, flags: int, data: str | None = None) -> None:
    """mount(2) itself: mount(8) would canonicalize a /proc/self/fd/N source to a path that a mount made
    meanwhile may hide."""
    def encode(text: str | None) -> bytes | None:
        return None if text is None else text.encode()
    if _libc.mount(encode(source), str(target).encode(), encode(kind), flags, encode(data)) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"mount {source} on {target}: {os.strerror(error)}")


def expose_runtime(prefix: Path) -> None:
    """Let the pod's user run the Python the virtualenv was made from, as an image would.

    When that Python is installed under a directory other users cannot enter (pyenv under a 0700 /root), this
    namespace gets an empty tmpfs over that directory with only the Python installation bind-mounted back:
    the container sees the runtime and nothing else of root's home."""
    closed = next((parent for parent in reversed(prefix.parents) if not os.stat(parent).st_mode & 0o001), None)
    if closed is None:
        return
    runtime = os.open(prefix, os.O_PATH)
    mount("tmpfs", closed, "tmpfs", 0, "mode=0755,size=1m")
    prefix.mkdir(parents=True, exist_ok=True)
    for directory in [prefix, *prefix.parents]:
        if directory == closed:
            break
        directory.chmod(0o755)
    mount(f"/proc/self/fd/{runtime}", prefix, None, MS_BIND | MS_REC)
    os.close(runtime)


def overlay_missing_mount_points(targets: list[Path], scratch: Path) -> None:
    """A mount point missing on the host is made in a copy-on-write overlay of its nearest existing parent
    directory, as a runtime makes it in the image's filesystem: the host's directories stay as they are. Only
    directly under "/" (which cannot be overlaid) is an empty mount point left on the host."""
    parents = set()
    for target in targets:
        existing = next(path for path in [target, *target.parents] if path.exists())
        inside_a_volume = any(other == existing or other in existing.parents for other in targets)
        if existing not in (target, Path("/")) and not inside_a_volume:
            parents.add(existing)
    outermost = sorted(path for path in parents if not any(other in path.parents for other in parents))
    for index, parent in enumerate(outermost):
        upper, work = scratch / f"{index}-upper", scratch / f"{index}-work"
        upper.mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):  # then the mount point is made on the host, empty
            mount("overlay", parent, "overlay", 0, f"lowerdir={parent},upperdir={upper},workdir={work}")


def reexpose_project(project: list[tuple[Path, int]], targets: list[Path]) -> None:
    """The project's console scripts and sources stand in for the image's files: where a volume's mount path
    hides them (a checkout under /tmp, and an emptyDir at /tmp), they are bind-mounted back, read-only."""
    for path, fd in project:
        if any(target == path or target in path.parents for target in targets):
            path.mkdir(parents=True, exist_ok=True)
            mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
            mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        os.close(fd)


def exec_container(spec_file: Path) -> None:
    """Bind-mount the volumes at their mount paths, drop to the pod's user and groups, exec the command."""
    spec = json.loads(spec_file.read_text())
    mounts = sorted(spec["mounts"], key=lambda m: m["target"].count("/"))
    # Each source is opened before anything is mounted: CLUSTER_DIR may sit under a mount path (/tmp).
    sources = [os.open(mount["source"], os.O_PATH) for mount in mounts]
    project = [(Path(path), os.open(path, os.O_PATH)) for path in spec.get("project", [])]
    expose_runtime(Path(sys.base_prefix))
    if spec.get("scratch"):
        overlay_missing_mount_points([Path(mount["target"]) for mount in mounts], Path(spec["scratch"]))
    for volume, source in zip(mounts, sources, strict=True):
        target = Path(volume["target"])
        if volume["file"]:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch(exist_ok=True)
        else:
            target.mkdir(parents=True, exist_ok=True)
        mount(f"/proc/self/fd/{source}", target, None, MS_BIND | MS_REC)
        if volume["readOnly"]:
            mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    for source in sources:
        os.close(source)
    reexpose_project(project, [Path(mount["target"]) for mount in mounts])
    os.setgroups(spec["groups"])
    os.setgid(spec["gid"])
    os.setuid(spec["uid"])
    os.chdir(spec["cwd"])
    argv = spec["argv"]
    try:
        os.execvpe(argv[0], argv, spec["env"])
    except OSError as error:
        print(f"process kubelet: cannot run {argv[0]!r}: {error}", file=sys.stderr)
        os._exit(127)


# ---------------------------------------------------------------------------------------------------------
# Pod networks: each pod has a network namespace of its own with only a loopback interface (so two pods may
# listen on the same port, as real pods do). Host services the pods need (the API server, and the ports
# listed in CLUSTER_DIR/host-ports: the tests' S3 and Pushgateway) are forwarded into it on 127.0.0.1.

CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


def listen_in(netns: str, host_netns_fd: int, port: int) -> socket.socket:
    """A socket listening on 127.0.0.1:port inside `netns`. setns moves only the calling thread, so this runs
    in a thread of its own, which returns to the host's namespace before it ends."""
    result: dict[str, Any] = {}

    def inside() -> None:
        with open(netns) as target:
            _setns(target.fileno())
        try:
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", port))
            listener.listen(64)
            result["socket"] = listener
        except OSError as error:
            result["error"] = error
        finally:
            _setns(host_netns_fd)

    thread = threading.Thread(target=inside)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["socket"]


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)


def forward(listener: socket.socket, port: int) -> None:
    """Relay each connection accepted inside the pod to 127.0.0.1:port on the host, until `listener` closes."""
    while True:
        try:
            inside, _ = listener.accept()
        except OSError:
            return
        try:
            outside = socket.create_connection(("127.0.0.1", port), timeout=10)
            outside.settimeout(None)
        except OSError:
            inside.close()
            continue
        threading.Thread(target=_pipe, args=(inside, outside), daemon=True).start()
        threading.Thread(target=_pipe, args=(outside, inside), daemon=True).start()


def _die_with_parent() -> None:
    """In the child: SIGKILL when the thread that started it ends, even if the kubelet is killed."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class PodNetwork:
    """The pod's network namespace, held open by a sleeping process, with the host ports forwarded in."""

    def __init__(self, host_netns_fd: int, ports: dict[int, int]) -> None:
        self.sandbox = subprocess.Popen(
            ["unshare", "--net", "--", "sh", "-c", "ip link set lo up && exec sleep infinity"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=_die_with_parent)
        self.path = f"/proc/{self.sandbox.pid}/ns/net"
        host = os.fstat(host_netns_fd).st_ino
        deadline = time.monotonic() + 10
        # Ready once `sleep` runs (lo is up) in a namespace that is not the host's.
        while not (Path(f"/proc/{self.sandbox.pid}/cmdline").read_bytes() == b"sleep\0infinity\0"
                   and os.stat(self.path).st_ino != host):
            if self.sandbox.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("could not make the pod's network namespace")
            time.sleep(0.02)
        self.listeners = []
        for inside, outside in ports.items():
            listener = listen_in(self.path, host_netns_fd, inside)
            self.listeners.append(listener)
            threading.Thread(target=forward, args=(listener, outside), daemon=True).start()

    def close(self) -> None:
        for listener in self.listeners:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.sandbox.pid, signal.SIGKILL)
        self.sandbox.wait()


# ---------------------------------------------------------------------------------------------------------
# The kubelet proper.


@dataclass
class ContainerRun:
    name: str
    process: subprocess.Popen | None = None
    started_at: str = ""
    restart_count: int = 0
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    next_start: float = 0.0
    message_file: Path | None = None
    log_file: Path | None = None
    policy: str = "File"


class Kubelet:
    def __init__(self, kubeconfig: str, cluster_dir: Path, venv: Path, image: str, nodes: list[str]) -> None:
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        configuration.connection_pool_maxsize = 32
        self.api = client.ApiClient(configuration)
        self.core = client.CoreV1Api(self.api)
        self.coordination = client.CoordinationV1Api(self.api)
        self.server = configuration.host
        self.ca_file = configuration.ssl_ca_cert
        self.cluster_dir = cluster_dir
        self.venv = venv
        self.image = image
        self.nodes = nodes
        self.workers: dict[str, PodWorker] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.host_netns_fd = os.open("/proc/self/ns/net", os.O_RDONLY)

    def forwarded_ports(self) -> dict[int, int]:
        """{port in the pod: port on the host}: the API server as the `kubernetes` Service (443) and on its own
        port, and the host ports the tests list in CLUSTER_DIR/host-ports."""
        api = int(self.server.rsplit(":", 1)[1])
        ports = {KUBERNETES_SERVICE_PORT: api, api: api}
        listed = self.cluster_dir / "host-ports"
        if listed.exists():
            ports.update({int(port): int(port) for port in listed.read_text().split()})
        return ports

    # Nodes --------------------------------------------------------------------------------------------

    def node_status(self) -> dict[str, Any]:
        stamp = now()
        conditions = [
            {"type": kind, "status": "False", "reason": f"KubeletHas{reason}", "message": "process kubelet",
             "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}
            for kind, reason in (("MemoryPressure", "SufficientMemory"), ("DiskPressure", "NoDiskPressure"),
                                 ("PIDPressure", "SufficientPID"))
        ]
        conditions.append({"type": "Ready", "status": "True", "reason": "KubeletReady",
                           "message": "process kubelet is posting ready status",
                           "lastHeartbeatTime": stamp, "lastTransitionTime": stamp})
        resources = {"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"}
        return {"status": {
            "conditions": conditions, "capacity": resources, "allocatable": resources,
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {"kubeletVersion": KUBE_VERSION, "kubeProxyVersion": "", "operatingSystem": "linux",
                         "architecture": "amd64", "containerRuntimeVersion": "process://0",
                         "osImage": "process kubelet", "kernelVersion": os.uname().release,
                         "machineID": "", "systemUUID": "", "bootID": ""},
        }}

    def register_nodes(self) -> None:
        from kubernetes.client.exceptions import ApiException

        for name in self.nodes:
            labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                      "s3backup.dev/test-node": "true"}
            if name in ("node-a", "node-b"):
                labels["role"] = "backup-server"
            try:
                self.core.create_node({"metadata": {"name": name, "labels": labels}})
            except ApiException as error:
                if error.status != 409:
                    raise
            self.core.patch_node_status(name, self.node_status())
            (self.cluster_dir / "nodes" / name).mkdir(parents=True, exist_ok=True)
        self.renew_leases()

    def renew_leases(self) -> None:
        from kubernetes.client.exceptions import ApiException

        for name in self.nodes:
            body = {"metadata": {"name": name, "namespace": "kube-node-lease"},
                    "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now_micro()}}
            try:
                self.coordination.patch_namespaced_lease(name, "kube-node-lease", body)
            except ApiException as error:
                if error.status != 404:
                    raise
                self.coordination.create_namespaced_lease("kube-node-lease", body)

    def heartbeat(self) -> None:
        beats = 0
        while not self.stopping.wait(10):
            try:
                self.renew_leases()
                beats += 1
                if beats % 6 == 0:
                    for name in self.nodes:
                        self.core.patch_node_status(name, self.node_status())
            except Exception:  # the API server may be restarting; the next beat retries
                log.exception("heartbeat")

    def wait_nodes_schedulable(self, timeout: float = 60) -> None:
        """The node lifecycle controller removes the not-ready taint once it sees Ready; wait for that."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            nodes = [self.core.read_node(name) for name in self.nodes]
            if all(not node.spec.taints for node in nodes):
                return
            time.sleep(0.5)
        raise TimeoutError("nodes still tainted")

    # Pods ---------------------------------------------------------------------------------------------

    def watch_pods(self) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        resource_version = ""
        while not self.stopping.is_set():
            try:
                if not resource_version:
                    listing = self.api.sanitize_for_serialization(self.core.list_pod_for_all_namespaces())
                    for pod in listing["items"]:
                        self.dispatch("ADDED", pod)
                    resource_version = listing["metadata"]["resourceVersion"]
                stream = watch.Watch().stream(self.core.list_pod_for_all_namespaces, resource_version=resource_version,
                                              timeout_seconds=60, allow_watch_bookmarks=True,
                                              _preload_content=False)
                for event in stream:
                    pod = event["raw_object"]
                    resource_version = pod["metadata"].get("resourceVersion", resource_version)
                    if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        self.dispatch(event["type"], pod)
            except ApiException as error:
                if error.status == 410:
                    resource_version = ""
                else:
                    log.warning("pod watch: %s", error)
                    time.sleep(1)
            except Exception:
                if self.stopping.is_set():
                    return
                log.exception("pod watch")
                time.sleep(1)

    def dispatch(self, kind: str, pod: dict[str, Any]) -> None:
        if pod.get("spec", {}).get("nodeName") not in self.nodes:
            return
        uid = pod["metadata"]["uid"]
        with self.lock:
            worker = self.workers.get(uid)
            if worker is None:
                if kind == "DELETED":
                    return
                worker = PodWorker(self, pod)
                self.workers[uid] = worker
                worker.start()
            else:
                worker.update(pod, deleted=kind == "DELETED")

    def forget(self, uid: str) -> None:
        with self.lock:
            self.workers.pop(uid, None)

    def stop(self) -> None:
        self.stopping.set()
        with self.lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.kill_all(grace=5, report=False)
            if worker.network:
                worker.network.close()


class PodWorker(threading.Thread):
    """One pod: sets up its volumes, runs its init containers then its containers, reports status."""

    def __init__(self, kubelet: Kubelet, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod {meta['namespace']}/{meta['name']}", daemon=True)
        self.kubelet = kubelet
        self.pod = pod
        self.uid = meta["uid"]
        self.dir = kubelet.cluster_dir / "pods" / f"{meta['namespace']}_{meta['name']}_{self.uid}"
        self.changed = threading.Event()
        self.deleted = False
        self.runs: dict[str, ContainerRun] = {}
        self.init_runs: dict[str, ContainerRun] = {}
        self.volumes: dict[str, Path] = {}
        self.start_time = now()
        self.phase = "Pending"
        self.proc_lock = threading.Lock()
        self.network: PodNetwork | None = None

    # The watch calls this; the worker thread reads self.pod.
    def update(self, pod: dict[str, Any], deleted: bool) -> None:
        self.pod = pod
        self.deleted = self.deleted or deleted
        self.changed.set()

    @property
    def terminating(self) -> bool:
        return self.deleted or bool(self.pod["metadata"].get("deletionTimestamp"))

    def run(self) -> None:
        try:
            self.live()
        except Exception:  # the pod stays; the next event about it starts a new worker
            log.exception("%s", self.name)
        finally:
            self.kill_all(grace=self.grace(), report=False)
            if self.network:
                self.network.close()
            if self.terminating:
                self.finalize()
            self.kubelet.forget(self.uid)

    def grace(self) -> int:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        value = meta.get("deletionGracePeriodSeconds")
        return int(value if value is not None else spec.get("terminationGracePeriodSeconds", 30))

    def live(self) -> None:
        status = self.pod.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            self.phase = status["phase"]
            self.wait_for_deletion()
            return
        spec = self.pod["spec"]
        self.runs = {c["name"]: ContainerRun(c["name"]) for c in spec["containers"]}
        self.init_runs = {c["name"]: ContainerRun(c["name"]) for c in spec.get("initContainers") or []}
        wrong = [c["image"] for c in [*spec.get("initContainers", []), *spec["containers"]]
                 if image_repository(c["image"]) != self.kubelet.image]
        if wrong:
            message = (f"the process kubelet runs only the project's image ({self.kubelet.image}, any tag), "
                       f"not {wrong[0]}")
            for run in [*self.init_runs.values(), *self.runs.values()]:
                run.state = {"waiting": {"reason": "ErrImagePull", "message": message}}
            self.report()
            self.wait_for_deletion()
            return
        self.report()
        while not self.terminating:
            try:
                self.setup_volumes()
                break
            except ConfigError as error:
                for run in [*self.init_runs.values(), *self.runs.values()]:
                    run.state = {"waiting": {"reason": "ContainerCreating", "message": error.message}}
                self.report()
                self.changed.wait(2)
                self.changed.clear()
        if self.terminating:
            return
        self.network = PodNetwork(self.kubelet.host_netns_fd, self.kubelet.forwarded_ports())
        for container in spec.get("initContainers") or []:
            if not self.run_to_completion(container, self.init_runs[container["name"]]):
                return
        self.run_containers()

    def wait_for_deletion(self) -> None:
        while not self.terminating:
            self.changed.wait(5)
            self.changed.clear()

    # Volumes ------------------------------------------------------------------------------------------

    def setup_volumes(self) -> None:
        pod = self.pod
        node = pod["spec"]["nodeName"]
        security = pod["spec"].get("securityContext") or {}
        fs_group = security.get("fsGroup")
        volumes_dir = self.dir / "volumes"
        volumes_dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)
        volumes_dir.chmod(0o755)
        for volume in pod["spec"].get("volumes") or []:
            name = volume["name"]
            if "hostPath" in volume:
                self.volumes[name] = self.host_path(node, volume["hostPath"])
            elif "persistentVolumeClaim" in volume:
                self.volumes[name] = self.claim_path(node, volume["persistentVolumeClaim"]["claimName"])
            elif "emptyDir" in volume:
                path = volumes_dir / name
                path.mkdir(exist_ok=True)
                path.chmod(0o777)
                self.volumes[name] = path
            elif any(kind in volume for kind in ("secret", "configMap", "projected", "downwardAPI")):
                path = volumes_dir / name
                path.mkdir(exist_ok=True)
                self.write_files(path, volume, fs_group)
                self.volumes[name] = path
            else:
                raise ConfigError("ContainerCreating", f"volume {name!r}: this kind is not supported by the "
                                  "process kubelet (hostPath, persistentVolumeClaim, emptyDir, secret, "
                                  "configMap, projected, downwardAPI are)")

    def host_path(self, node: str, host_path: dict[str, Any]) -> Path:
        path = self.kubelet.cluster_dir / "nodes" / node / host_path["path"].lstrip("/")
        kind = host_path.get("type") or ""
        if kind == "DirectoryOrCreate":
            path.mkdir(parents=True, exist_ok=True)
        elif kind == "Directory" and not path.is_dir():
            raise ConfigError("ContainerCreating", f"hostPath type check failed: {host_path['path']} is not a "
                              "directory")
        return path

    def claim_path(self, node: str, claim_name: str) -> Path:
        from kubernetes.client.exceptions import ApiException

        namespace = self.pod["metadata"]["namespace"]
        try:
            claim = self.kubelet.core.read_namespaced_persistent_volume_claim(claim_name, namespace)
        except ApiException as error:
            raise ConfigError("ContainerCreating", f'persistentvolumeclaim "{claim_name}" not found') from error
        if not claim.spec.volume_name:
            raise ConfigError("ContainerCreating", f'persistentvolumeclaim "{claim_name}" is not bound')
        volume = self.kubelet.core.read_persistent_volume(claim.spec.volume_name)
        source = volume.spec.host_path or volume.spec.local
        if source is None:
            raise ConfigError("ContainerCreating", f"PersistentVolume {claim.spec.volume_name}: the process "
                              "kubelet mounts hostPath and local volumes only")
        return self.kubelet.cluster_dir / "nodes" / node / source.path.lstrip("/")

    def write_files(self, directory: Path, volume: dict[str, Any], fs_group: int | None) -> None:
        """secret / configMap / projected / downwardAPI volumes: their files, as the kubelet writes them."""
        if "projected" in volume:
            sources = volume["projected"].get("sources") or []
            default_mode = volume["projected"].get("defaultMode", 0o644)
        else:
            sources = [volume]
            kind = next(k for k in ("secret", "configMap", "downwardAPI") if k in volume)
            default_mode = volume[kind].get("defaultMode", 0o644)
        for source in sources:
            for relative, content, mode in self.source_files(source):
                target = directory / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
                target.chmod(default_mode if mode is None else mode)
                if fs_group is not None:
                    os.chown(target, 0, fs_group)

    def source_files(self, source: dict[str, Any]) -> list[tuple[str, bytes, int | None]]:
        from kubernetes.client.exceptions import ApiException

        namespace = self.pod["metadata"]["namespace"]
        core = self.kubelet.core
        if "serviceAccountToken" in source:
            projection = source["serviceAccountToken"]
            spec: dict[str, Any] = {"expirationSeconds": projection.get("expirationSeconds", 3600),
                                    "boundObjectRef": {"kind": "Pod", "apiVersion": "v1",
                                                       "name": self.pod["metadata"]["name"], "uid": self.uid}}
            if projection.get("audience"):
                spec["audiences"] = [projection["audience"]]
            account = self.pod["spec"].get("serviceAccountName") or "default"
            token = core.create_namespaced_service_account_token(account, namespace, {"spec": spec})
            return [(projection["path"], token.status.token.encode(), None)]
        if "downwardAPI" in source:
            return [(item["path"], field_value(self.pod, item["fieldRef"]["fieldPath"]).encode(), item.get("mode"))
                    for item in source["downwardAPI"].get("items") or [] if "fieldRef" in item]
        kind = "secret" if "secret" in source else "configMap"
        ref = source[kind]
        name = ref.get("secretName") or ref.get("name")
        try:
            if kind == "secret":
                data = {k: base64.b64decode(v) for k, v in (core.read_namespaced_secret(name, namespace).data or {})
                        .items()}
            else:
                config_map = core.read_namespaced_config_map(name, namespace)
                data = {k: v.encode() for k, v in (config_map.data or {}).items()}
                data.update({k: base64.b64decode(v) for k, v in (config_map.binary_data or {}).items()})
        except ApiException as error:
            if error.status == 404 and ref.get("optional"):
                return []
            noun = "secret" if kind == "secret" else "configmap"
            raise ConfigError("ContainerCreating", f'{noun} "{name}" not found') from error
        items = ref.get("items")
        if not items:
            return [(key, value, None) for key, value in data.items()]
        return [(item["path"], data[item["key"]], item.get("mode")) for item in items if item["key"] in data]

    # Environment --------------------------------------------------------------------------------------

    def container_env(self, container: dict[str, Any]) -> dict[str, str]:
        from kubernetes.client.exceptions import ApiException

        pod, core = self.pod, self.kubelet.core
        namespace = pod["metadata"]["namespace"]
        host, port = "127.0.0.1", str(KUBERNETES_SERVICE_PORT)  # forwarded to the API server in the pod
        env = {
            "PATH": f"{self.kubelet.venv / 'bin'}:{SYSTEM_PATH}", **IMAGE_ENV,
            "HOSTNAME": pod["metadata"]["name"], "HOME": "/nonexistent",
            "KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port,
            "KUBERNETES_SERVICE_PORT_HTTPS": port, "KUBERNETES_PORT": f"tcp://{host}:{port}",
        }
        cache: dict[tuple[str, str], dict[str, str] | None] = {}

        def lookup(kind: str, name: str) -> dict[str, str] | None:
            if (kind, name) not in cache:
                try:
                    if kind == "secret":
                        data = core.read_namespaced_secret(name, namespace).data or {}
                        cache[kind, name] = {k: base64.b64decode(v).decode() for k, v in data.items()}
                    else:
                        cache[kind, name] = core.read_namespaced_config_map(name, namespace).data or {}
                except ApiException as error:
                    if error.status != 404:
                        raise
                    cache[kind, name] = None
            return cache[kind, name]

        for source in container.get("envFrom") or []:
            kind = "secret" if "secretRef" in source else "configmap"
            ref = source.get("secretRef") or source.get("configMapRef")
            data = lookup(kind, ref["name"])
            if data is None:
                if ref.get("optional"):
                    continue
                raise ConfigError("CreateContainerConfigError", f'{kind} "{ref["name"]}" not found')
            env.update({source.get("prefix", "") + key: value for key, value in data.items()})
        for variable in container.get("env") or []:
            name = variable["name"]
            if "valueFrom" not in variable:
                env[name] = expand(variable.get("value", ""), env)
                continue
            source = variable["valueFrom"]
            if "fieldRef" in source:
                env[name] = field_value(pod, source["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in source or "configMapKeyRef" in source:
                kind = "secret" if "secretKeyRef" in source else "configmap"
                ref = source.get("secretKeyRef") or source.get("configMapKeyRef")
                data = lookup(kind, ref["name"])
                if data is None or ref["key"] not in data:
                    if ref.get("optional"):
                        continue
                    if data is None:
                        raise ConfigError("CreateContainerConfigError", f'{kind} "{ref["name"]}" not found')
                    raise ConfigError("CreateContainerConfigError",
                                      f"couldn't find key {ref['key']} in {kind.capitalize()} "
                                      f"{namespace}/{ref['name']}")
                env[name] = data[ref["key"]]
            elif "resourceFieldRef" in source:
                env[name] = "0"
        return env

    # Containers ---------------------------------------------------------------------------------------

    def launch(self, container: dict[str, Any], run: ContainerRun) -> None:
        """Start one container process (raises ConfigError when it cannot start yet)."""
        uid, gid, groups = pod_identity(self.pod, container)
        env = self.container_env(container)
        command = container.get("command") or ["s3backup"]  # the image's ENTRYPOINT
        args = container.get("args") if container.get("args") is not None else (
            [] if container.get("command") else ["--help"])  # the image's CMD goes with its ENTRYPOINT only
        argv = [expand(part, env) for part in [*command, *args]]
        container_dir = self.dir / "containers" / container["name"]
        container_dir.mkdir(parents=True, exist_ok=True)
        container_dir.chmod(0o755)
        message_file = container_dir / "termination-log"
        message_file.write_bytes(b"")
        message_file.chmod(0o666)
        mounts = [{"source": str(message_file), "target": container.get("terminationMessagePath")
                   or "/dev/termination-log", "readOnly": False, "file": True}]
        hosts = container_dir / "hosts"  # what the cluster's DNS would answer, as a kubelet-managed /etc/hosts
        hosts.write_text(f"127.0.0.1 localhost {self.pod['metadata']['name']} {' '.join(KUBERNETES_NAMES)}\n")
        hosts.chmod(0o644)
        mounts.append({"source": str(hosts), "target": "/etc/hosts", "readOnly": True, "file": True})
        for name, line in IMAGE_ACCOUNTS.items():  # the image's user and group, as in its /etc files
            accounts = container_dir / name
            accounts.write_text(Path(f"/etc/{name}").read_text() + line + "\n")
            accounts.chmod(0o644)
            mounts.append({"source": str(accounts), "target": f"/etc/{name}", "readOnly": True, "file": True})
        for mount in container.get("volumeMounts") or []:
            source = self.volumes[mount["name"]]
            if mount.get("subPath"):
                source = source / mount["subPath"]
                source.mkdir(parents=True, exist_ok=True)
            mounts.append({"source": str(source), "target": mount["mountPath"],
                           "readOnly": bool(mount.get("readOnly")), "file": source.is_file()})
        spec_file = container_dir / "spec.json"
        spec_file.write_text(json.dumps({"mounts": mounts, "uid": uid, "gid": gid, "groups": groups, "env": env,
                                         "argv": argv, "cwd": container.get("workingDir") or IMAGE_WORKDIR,
                                         "scratch": str(container_dir / "overlay"),
                                         "project": [str(REPO), str(self.kubelet.venv)]}))
        spec_file.chmod(0o600)  # it holds the resolved environment (Secret values)
        log_file = open(container_dir / "log", "ab")  # noqa: SIM115 -- the child keeps it
        run.process = subprocess.Popen(
            ["nsenter", f"--net={self.network.path}", "--", "unshare", "--mount", "--propagation", "private", "--",
             sys.executable, __file__, "exec", str(spec_file)],
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log_file.close()
        run.started_at = now()
        run.exit_code = None
        run.state = {"running": {"startedAt": run.started_at}}
        run.message_file = message_file
        run.log_file = container_dir / "log"
        run.policy = container.get("terminationMessagePolicy", "File")

    def reap(self, run: ContainerRun) -> bool:
        """True when the container's process has exited (its terminated state is then recorded)."""
        if run.process is None or run.process.poll() is None:
            return False
        code = run.process.returncode
        code = 128 - code if code < 0 else code  # killed by a signal: 128 + signal, as a runtime reports
        message = run.message_file.read_bytes()[:MAX_TERMINATION_MESSAGE] if run.message_file else b""
        if not message.strip() and code != 0 and run.policy == "FallbackToLogsOnError" and run.log_file:
            lines = run.log_file.read_bytes().splitlines()[-80:]
            message = b"\n".join(lines)[-2048:]
        terminated = {"exitCode": code, "reason": terminated_reason(code), "startedAt": run.started_at,
                      "finishedAt": now(), "containerID": f"process://{run.process.pid}"}
        if message:
            terminated["message"] = message.decode(errors="replace")
        run.state = {"terminated": terminated}
        run.exit_code = code
        run.process = None
        return True

    def try_launch(self, container: dict[str, Any], run: ContainerRun) -> bool:
        try:
            with self.proc_lock:
                if self.terminating:
                    return False
                self.launch(container, run)
            return True
        except ConfigError as error:
            run.state = {"waiting": {"reason": error.reason, "message": error.message}}
            return False

    def run_to_completion(self, container: dict[str, Any], run: ContainerRun) -> bool:
        """An init container: run it until it succeeds (restartPolicy permitting). False: the pod stops."""
        policy = self.pod["spec"].get("restartPolicy", "Always")
        while not self.terminating:
            if run.process is None and time.monotonic() >= run.next_start:
                if not self.try_launch(container, run):
                    self.report()
                    self.changed.wait(2)
                    self.changed.clear()
                    continue
                self.report()
            if self.reap(run):
                if run.exit_code == 0:
                    self.report()
                    return True
                if policy == "Never":
                    self.phase = "Failed"
                    self.report()
                    self.wait_for_deletion()
                    return False
                self.restarted(run)
                self.report()
            self.changed.wait(0.3)
            self.changed.clear()
        return False

    def restarted(self, run: ContainerRun) -> None:
        run.last_state = run.state
        run.restart_count += 1
        run.next_start = time.monotonic() + min(10, 2 ** (run.restart_count - 1))
        run.state = {"waiting": {"reason": "CrashLoopBackOff",
                                 "message": f"back-off restarting failed container {run.name}"}}

    def run_containers(self) -> None:
        policy = self.pod["spec"].get("restartPolicy", "Always")
        containers = {c["name"]: c for c in self.pod["spec"]["containers"]}
        done: set[str] = set()
        dirty = True
        while not self.terminating:
            for name, container in containers.items():
                run = self.runs[name]
                if name in done:
                    continue
                if run.process is None and time.monotonic() >= run.next_start:
                    dirty = self.try_launch(container, run) or dirty or "waiting" in run.state
                    if "waiting" in run.state:
                        run.next_start = time.monotonic() + 2
                elif self.reap(run):
                    dirty = True
                    if policy == "Always" or (policy == "OnFailure" and run.exit_code != 0):
                        self.restarted(run)
                    else:
                        done.add(name)
            self.phase = pod_phase(policy, [self.runs[n].exit_code if n in done else None for n in containers])
            if dirty:
                self.report()
                dirty = False
            if self.phase in ("Succeeded", "Failed"):
                self.wait_for_deletion()
                return
            self.changed.wait(0.3)
            self.changed.clear()

    def kill_all(self, grace: int, report: bool) -> None:
        """SIGTERM each container's process group, SIGKILL what is left after `grace` seconds."""
        with self.proc_lock:
            running = [run for run in [*self.init_runs.values(), *self.runs.values()] if run.process]
        for run in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.process.pid, signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(run.process.poll() is None for run in running):  # type: ignore
            time.sleep(0.1)
        for run in running:
            if run.process and run.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(run.process.pid, signal.SIGKILL)
                run.process.wait()
            self.reap(run)
        if report and running:
            self.report()

    def finalize(self) -> None:
        """A deleted pod: its processes are gone; remove the object (the kubelet's final, zero-grace delete)."""
        from kubernetes.client.exceptions import ApiException

        if self.deleted or self.kubelet.stopping.is_set():
            return
        meta = self.pod["metadata"]
        try:
            self.kubelet.core.delete_namespaced_pod(meta["name"], meta["namespace"], body={"gracePeriodSeconds": 0,
                                                          "preconditions": {"uid": self.uid}})
        except ApiException as error:
            if error.status not in (404, 409):
                log.warning("%s: final delete: %s", self.name, error)

    # Status -------------------------------------------------------------------------------------------

    def container_statuses(self, containers: list[dict[str, Any]], runs: dict[str, ContainerRun]) -> list[dict]:
        statuses = []
        for container in containers:
            run = runs[container["name"]]
            status = {"name": run.name, "image": container["image"], "imageID": "", "restartCount": run.restart_count,
                      "ready": "running" in run.state, "started": "running" in run.state, "state": run.state}
            if run.last_state:
                status["lastState"] = run.last_state
            terminated = run.state.get("terminated") or {}
            if terminated.get("containerID"):
                status["containerID"] = terminated["containerID"]
            elif run.process is not None:
                status["containerID"] = f"process://{run.process.pid}"
            statuses.append(status)
        return statuses

    def report(self) -> None:
        from kubernetes.client.exceptions import ApiException

        spec = self.pod["spec"]
        statuses = self.container_statuses(spec["containers"], self.runs)
        init_statuses = self.container_statuses(spec.get("initContainers") or [], self.init_runs)
        initialized = all("terminated" in s["state"] and s["state"]["terminated"]["exitCode"] == 0
                          for s in init_statuses)
        ready = initialized and all(s["ready"] for s in statuses)
        phase = self.phase
        if phase == "Pending" and any("running" in s["state"] or "terminated" in s["state"] for s in statuses):
            phase = "Running"
        if phase not in ("Succeeded", "Failed"):
            self.phase = phase
        stamp = now()

        def condition(kind: str, value: bool) -> dict[str, str]:
            return {"type": kind, "status": "True" if value else "False", "lastTransitionTime": stamp}

        status = {
            "phase": phase, "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}], "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}], "startTime": self.start_time,
            "conditions": [condition("Initialized", initialized), condition("ContainersReady", ready),
                           condition("Ready", ready)],
            "containerStatuses": statuses,
        }
        if init_statuses:
            status["initContainerStatuses"] = init_statuses
        meta = self.pod["metadata"]
        try:
            self.kubelet.core.patch_namespaced_pod_status(meta["name"], meta["namespace"], {"status": status})
        except ApiException as error:
            if error.status != 404:
                log.warning("%s: status: %s", self.name, error)


def _run_kubelet(args: argparse.Namespace) -> int:
    import yaml

    values = yaml.safe_load((Path(args.chart) / "values.yaml").read_text())
    venv = Path(args.venv).absolute()  # the pods' PATH: they start in their workingDir, "/" by default
    kubelet = Kubelet(args.kubeconfig, Path(args.cluster_dir), venv, values["image"]["repository"],
                      args.nodes.split(","))

    def stop(*_: Any) -> None:
        kubelet.stop()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    kubelet.register_nodes()
    threading.Thread(target=kubelet.heartbeat, name="heartbeat", daemon=True).start()
    threading.Thread(target=kubelet.watch_pods, name="pods", daemon=True).start()
    kubelet.wait_nodes_schedulable()
    (Path(args.cluster_dir) / "kubelet.ready").write_text("ready\n")
    log.info("nodes %s ready; running pods of %s", args.nodes, kubelet.image)
    while True:
        time.sleep(3600)


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "exec":
        exec_container(Path(sys.argv[2]))
        return 127
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s: %(message)s")
    parser = argparse.ArgumentParser(prog="kubelet.py")
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--cluster-dir", required=True)
    parser.add_argument("--venv", required=True)
    parser.add_argument("--chart", required=True)
    parser.add_argument("--nodes", required=True)
    return _run_kubelet(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
