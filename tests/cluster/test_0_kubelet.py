"""The process kubelet itself: a pod's env, volumes, user and groups, and its status, as a kubelet provides them."""

from __future__ import annotations

import secrets
from pathlib import Path

from tests.cluster.support import delete_namespace, make_namespace, wait_for

IMAGE = "ghcr.io/s3backup/s3backup:0.1.0"


def test_a_pod_gets_its_env_volumes_user_and_status(cluster):
    namespace = make_namespace(cluster, "kubelet")
    out = cluster.node_dir("node-b", f"/srv/{namespace}")
    out.mkdir(parents=True)
    out.chmod(0o777)
    host_had_mount_points = {path: Path(path).exists() for path in ("/etc/secret", "/etc/config", "/mnt/out")}
    password = secrets.token_hex(8)
    cluster.kubectl("create", "secret", "generic", "creds", "-n", namespace, f"--from-literal=password={password}")
    cluster.kubectl("create", "configmap", "settings", "-n", namespace, "--from-literal=greeting=hello")
    script = " && ".join([
        "id -u > /mnt/out/uid", "id -G > /mnt/out/groups", "env > /mnt/out/env",
        "cat /etc/secret/password > /mnt/out/secret", "cat /etc/config/greeting > /mnt/out/config",
        "touch /mnt/scratch/x && ls -ld /mnt/scratch > /mnt/out/emptydir",
        "cat /var/run/secrets/kubernetes.io/serviceaccount/namespace > /mnt/out/sa-namespace",
        "(touch /etc/config/new 2> /mnt/out/readonly || true)",
        "echo bye > /dev/termination-log", "exit 3",
    ])
    cluster.apply({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe", "namespace": namespace},
        "spec": {
            "restartPolicy": "Never", "nodeSelector": {"kubernetes.io/hostname": "node-b"},
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000, "supplementalGroups": [3000]},
            "containers": [{
                "name": "main", "image": IMAGE, "command": ["sh", "-c", script],
                "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CM_"}],
                "env": [
                    {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                    {"name": "FROM_CONFIG", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}}},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "EXPANDED", "value": "$(FROM_CONFIG)-world"},
                ],
                "volumeMounts": [
                    {"name": "out", "mountPath": "/mnt/out"},
                    {"name": "secret", "mountPath": "/etc/secret", "readOnly": True},
                    {"name": "config", "mountPath": "/etc/config", "readOnly": True},
                    {"name": "scratch", "mountPath": "/mnt/scratch"},
                ],
            }],
            "volumes": [
                {"name": "out", "hostPath": {"path": f"/srv/{namespace}", "type": "Directory"}},
                {"name": "secret", "secret": {"secretName": "creds"}},
                {"name": "config", "configMap": {"name": "settings"}},
                {"name": "scratch", "emptyDir": {}},
            ],
        },
    })

    def finished():
        pod = cluster.get("pod", "probe", "-n", namespace)
        return pod if pod and pod["status"].get("phase") in ("Succeeded", "Failed") else None
    pod = wait_for(finished, "the pod finished")
    assert pod["spec"]["nodeName"] == "node-b"
    assert pod["status"]["phase"] == "Failed"  # restartPolicy Never, exit code 3
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"], terminated["message"]) == (3, "Error", "bye\n")
    assert (out / "uid").read_text().split() == ["1000"]
    assert {"1000", "2000", "3000"} <= set((out / "groups").read_text().split())
    env = dict(line.split("=", 1) for line in (out / "env").read_text().splitlines() if "=" in line)
    assert env["FROM_SECRET"] == password
    assert (env["FROM_CONFIG"], env["CM_greeting"], env["EXPANDED"]) == ("hello", "hello", "hello-world")
    assert (env["POD_NAME"], env["NODE"]) == ("probe", "node-b")
    assert env["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"
    assert (out / "secret").read_text() == password
    assert (out / "config").read_text() == "hello"
    assert (out / "emptydir").read_text().startswith("drwxrwxrwx")
    assert (out / "sa-namespace").read_text() == namespace
    assert "Read-only file system" in (out / "readonly").read_text()
    # Mount points missing on the host were made in the container's view only (an overlay), as in an image.
    assert {path: Path(path).exists() for path in host_had_mount_points} == host_had_mount_points
    delete_namespace(cluster, namespace)


def test_a_pod_of_another_image_fails_with_a_clear_reason(cluster):
    namespace = make_namespace(cluster, "other-image")
    cluster.kubectl("run", "stranger", "-n", namespace, "--image=docker.io/library/busybox:1.36", "--restart=Never",
                    "--", "true")

    def waiting():
        pod = cluster.get("pod", "stranger", "-n", namespace) or {}
        statuses = pod.get("status", {}).get("containerStatuses") or [{}]
        return statuses[0].get("state", {}).get("waiting")
    state = wait_for(waiting, "the pod's waiting state")
    assert state["reason"] == "ErrImagePull"
    assert "runs only the project's image (ghcr.io/s3backup/s3backup" in state["message"]
    delete_namespace(cluster, namespace)


def test_init_containers_run_in_order_before_the_containers(cluster):
    namespace = make_namespace(cluster, "init")
    step = {"image": IMAGE, "volumeMounts": [{"name": "shared", "mountPath": "/mnt/shared"}]}
    cluster.apply({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ordered", "namespace": namespace},
        "spec": {
            "restartPolicy": "Never",
            "initContainers": [{**step, "name": "one", "command": ["sh", "-c", "echo one >> /mnt/shared/log"]},
                               {**step, "name": "two", "command": ["sh", "-c", "echo two >> /mnt/shared/log"]}],
            "containers": [{**step, "name": "main",
                            "command": ["sh", "-c", "cat /mnt/shared/log > /dev/termination-log"]}],
            "volumes": [{"name": "shared", "emptyDir": {}}],
        },
    })

    def finished():
        pod = cluster.get("pod", "ordered", "-n", namespace)
        return pod if pod and pod["status"].get("phase") in ("Succeeded", "Failed") else None
    pod = wait_for(finished, "the pod finished")
    assert pod["status"]["phase"] == "Succeeded"
    assert [s["state"]["terminated"]["reason"] for s in pod["status"]["initContainerStatuses"]] == ["Completed"] * 2
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"] == "one\ntwo\n"
    delete_namespace(cluster, namespace)
