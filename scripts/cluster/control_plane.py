"""Starts and stops the test cluster's control plane on loopback (run by scripts/cluster.sh up/down).

`up` makes a temporary CLUSTER_DIR with a CA and client/serving certificates (openssl), the service-account
signing keys and an admin kubeconfig; starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler
and the process kubelet (kubelet.py) as background processes; and prints the `export` lines.
`down` stops them (their pids are in CLUSTER_DIR/pids) and removes CLUSTER_DIR.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
NODES = ("node-a", "node-b", "node-c")
SERVICE_CIDR = "10.96.0.0/16"  # only names Service IPs: nothing ever connects to them (pods use loopback)
KUBERNETES_SERVICE_IP = "10.96.0.1"


def free_port(taken: set[int]) -> int:
    """A free loopback port below Linux's ephemeral range (32768 and up by default): a component polled before
    it listens could otherwise, now and then, have its poller connected to itself (TCP self-connect)."""
    while True:
        port = random.randint(26000, 32700)  # local_s3.free_port takes 10000-15999, and 20000-25999 for gRPC
        if port in taken:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        taken.add(port)
        return port


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_pki(pki: Path) -> None:
    """A CA, the API server's serving certificate (127.0.0.1 as SAN), client certificates and SA keys."""
    pki.mkdir(parents=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "30",
            "-subj", "/CN=s3backup-test-ca", cwd=pki)
    sans = ("IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,"
            f"DNS:kubernetes.default.svc.cluster.local,IP:{KUBERNETES_SERVICE_IP}")
    certs = {
        "apiserver": ("/CN=kube-apiserver", sans),
        "admin": ("/O=system:masters/CN=admin", None),
        "controller-manager": ("/CN=system:kube-controller-manager", None),
        "scheduler": ("/CN=system:kube-scheduler", None),
        "kubelet": ("/O=system:masters/CN=process-kubelet", None),
    }
    for name, (subject, san) in certs.items():
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", subject, cwd=pki)
        extensions = pki / f"{name}.ext"
        usage = "serverAuth" if san else "clientAuth"
        extensions.write_text(f"extendedKeyUsage={usage}\n" + (f"subjectAltName={san}\n" if san else ""))
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "30", "-extfile", extensions.name, cwd=pki)
    openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def write_kubeconfig(path: Path, server: str, pki: Path, user: str) -> None:
    path.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: s3backup-test
  cluster:
    server: {server}
    certificate-authority: {pki / 'ca.crt'}
users:
- name: {user}
  user:
    client-certificate: {pki / (user + '.crt')}
    client-key: {pki / (user + '.key')}
contexts:
- name: s3backup-test
  context: {{cluster: s3backup-test, user: {user}, namespace: default}}
current-context: s3backup-test
""")


def start(cluster: Path, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    log = open(cluster / "logs" / f"{name}.log", "ab")  # noqa: SIM115 -- the child keeps it
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               start_new_session=True, env=env)
    (cluster / "pids" / name).write_text(str(process.pid))
    return process


def wait_until(what: str, check, process: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{what} not ready after {timeout}s:\n{log.read_text()[-3000:]}")


def https_ok(url: str, pki: Path, user: str = "admin") -> bool:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.load_cert_chain(pki / f"{user}.crt", pki / f"{user}.key")
    try:
        with urllib.request.urlopen(url, context=context, timeout=3) as response:
            return response.status == 200
    except urllib.error.HTTPError:
        return False


def which(bin_path: str, name: str) -> str:
    for directory in bin_path.split(":"):
        candidate = Path(directory) / name
        if candidate.is_file():
            return str(candidate)
    raise FileNotFoundError(f"{name} not found in {bin_path} (scripts/cluster.sh build)")


def up(bin_path: str, venv: Path, chart: Path) -> Path:
    venv, chart = venv.absolute(), chart.absolute()
    cluster = Path(tempfile.mkdtemp(prefix="s3backup-cluster-"))
    cluster.chmod(0o755)  # pods run as non-root users and need their way to CLUSTER_DIR/pods and nodes
    for sub in ("logs", "pids", "etcd", "nodes", "pods"):
        (cluster / sub).mkdir()
    (cluster / "etcd").chmod(0o700)
    pki = cluster / "pki"
    make_pki(pki)
    taken: set[int] = set()
    etcd_port, peer_port, api_port, cm_port, sched_port = (free_port(taken) for _ in range(5))
    etcd_url = f"http://127.0.0.1:{etcd_port}"
    server = f"https://127.0.0.1:{api_port}"
    (cluster / "server").write_text(server)
    for user in ("admin", "controller-manager", "scheduler", "kubelet"):
        write_kubeconfig(cluster / f"{user}.kubeconfig", server, pki, user)
    try:
        etcd = start(cluster, "etcd", [
            which(bin_path, "etcd"), "--name=default", f"--data-dir={cluster / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync",  # a throwaway test store: durability costs time and buys nothing
            "--log-level=warn",
        ])
        wait_until("etcd", lambda: urllib.request.urlopen(etcd_url + "/health", timeout=2).status == 200,
                   etcd, cluster / "logs" / "etcd.log")
        apiserver = start(cluster, "kube-apiserver", [
            which(bin_path, "kube-apiserver"), f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", f"--secure-port={api_port}", "--advertise-address=127.0.0.1",
            # Endpoints may not hold loopback addresses: pods reach the API server through
            # KUBERNETES_SERVICE_HOST=127.0.0.1 (the process kubelet sets it), not the kubernetes Service.
            "--endpoint-reconciler-type=none",
            f"--cert-dir={pki}", f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}", f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=Node,RBAC",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=false",
        ])
        wait_until("kube-apiserver", lambda: https_ok(server + "/readyz", pki), apiserver,
                   cluster / "logs" / "kube-apiserver.log", timeout=120)
        controller_manager = start(cluster, "kube-controller-manager", [
            which(bin_path, "kube-controller-manager"),
            f"--kubeconfig={cluster / 'controller-manager.kubeconfig'}",
            f"--authentication-kubeconfig={cluster / 'controller-manager.kubeconfig'}",
            f"--authorization-kubeconfig={cluster / 'controller-manager.kubeconfig'}",
            "--bind-address=127.0.0.1", f"--secure-port={cm_port}", f"--cert-dir={pki / 'cm'}",
            "--controllers=*", "--leader-elect=false",
            f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
            "--use-service-account-credentials=true",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}", f"--cluster-signing-key-file={pki / 'ca.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
        ])
        scheduler = start(cluster, "kube-scheduler", [
            which(bin_path, "kube-scheduler"), f"--kubeconfig={cluster / 'scheduler.kubeconfig'}",
            f"--authentication-kubeconfig={cluster / 'scheduler.kubeconfig'}",
            f"--authorization-kubeconfig={cluster / 'scheduler.kubeconfig'}",
            "--bind-address=127.0.0.1", f"--secure-port={sched_port}", f"--cert-dir={pki / 'scheduler'}",
            "--leader-elect=false",
        ])
        for name, process, port in (("kube-controller-manager", controller_manager, cm_port),
                                    ("kube-scheduler", scheduler, sched_port)):
            wait_until(name, lambda port=port: _healthz(port), process, cluster / "logs" / f"{name}.log")
        kubelet_env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        kubelet = start(cluster, "kubelet", [
            str(venv / "bin" / "python"), str(HERE / "kubelet.py"),
            f"--kubeconfig={cluster / 'kubelet.kubeconfig'}", f"--cluster-dir={cluster}",
            f"--venv={venv}", f"--chart={chart}", f"--nodes={','.join(NODES)}",
        ], env=kubelet_env)
        wait_until("process kubelet", lambda: (cluster / "kubelet.ready").exists(), kubelet,
                   cluster / "logs" / "kubelet.log")
        _wait_default_service_account(bin_path, cluster)
    except BaseException:
        down(cluster)
        raise
    return cluster


def _healthz(port: int) -> bool:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # their self-signed serving certificates; /healthz needs no auth
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=context, timeout=2) as response:
        return response.status == 200


def _wait_default_service_account(bin_path: str, cluster: Path, timeout: float = 60) -> None:
    """The serviceaccount controller creates `default` in each namespace; pods cannot be created before."""
    kubectl = which(bin_path, "kubectl")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = subprocess.run([kubectl, f"--kubeconfig={cluster / 'admin.kubeconfig'}", "get",
                                 "serviceaccount", "default", "-n", "default", "-o", "name"],
                                capture_output=True, text=True)
        if result.returncode == 0:
            return
        time.sleep(0.5)
    raise TimeoutError("the default ServiceAccount did not appear (kube-controller-manager log?)")


def down(cluster: Path) -> None:
    """Stop the kubelet first (it stops its pods' processes), then the control plane, and remove CLUSTER_DIR."""
    order = ("kubelet", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd")
    for name in order:
        pid_file = cluster / "pids" / name
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text())
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        pid_file.unlink()
    if (cluster / "pki").exists():  # only ever remove a directory `up` made
        subprocess.run(["rm", "-rf", "--one-file-system", str(cluster)], check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie of ours is gone for our purpose
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/cluster.sh")
    sub = parser.add_subparsers(dest="command", required=True)
    up_parser = sub.add_parser("up")
    up_parser.add_argument("--bin-path", required=True)
    up_parser.add_argument("--venv", type=Path, required=True)
    up_parser.add_argument("--chart", type=Path, required=True)
    down_parser = sub.add_parser("down")
    down_parser.add_argument("--cluster-dir", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "down":
        down(args.cluster_dir)
        return 0
    try:
        cluster = up(args.bin_path, args.venv, args.chart)
    except (RuntimeError, TimeoutError, FileNotFoundError, subprocess.CalledProcessError) as error:
        print(f"cluster: {error}", file=sys.stderr)
        return 1
    print(f"export KUBECONFIG={cluster / 'admin.kubeconfig'}")
    print(f"export CLUSTER_DIR={cluster}")
    print(f"export PATH={args.bin_path}:$PATH")
    return 0


if __name__ == "__main__":
    sys.exit(main())
