"""3b-5: a CronJob that fires on its own, deletion through the garbage collector, Pod Security `restricted`,
and a root-only lost+found on the volume (the backup pod runs as non-root)."""

from __future__ import annotations

import os
import stat

from tests.cluster.support import (
    FILES,
    NODE,
    bucket_keys,
    finished_job,
    last_run,
    make_volume,
    run_now,
    wait_for,
)
from tests.cluster.support import backup_manifest as manifest


def test_the_cronjob_controller_starts_a_scheduled_run(cluster, operator, s3, new_namespace):
    namespace = new_namespace("every-minute")
    claim = make_volume(cluster, namespace, "data", FILES)
    prefix = f"cron-{os.getpid()}"
    cluster.apply(manifest(namespace, "minutely", claim, s3, prefix, schedule="* * * * *"))

    def scheduled_job():
        jobs = [job for job in cluster.items("jobs", "-n", namespace, "-l", "s3backup.dev/backup=minutely")
                if job["metadata"]["ownerReferences"][0]["kind"] == "CronJob"]
        return jobs[0] if jobs else None
    job = wait_for(scheduled_job, "a Job from the CronJob controller", timeout=150, every=2)
    finished_job(cluster, namespace, job["metadata"]["name"])
    run = last_run(cluster, namespace, "minutely", job["metadata"]["name"])
    assert run["result"] == "Succeeded"
    status = cluster.get("s3backup", "minutely", "-n", namespace)["status"]
    assert status.get("lastScheduleTime")
    assert sorted(bucket_keys(s3, prefix)) == sorted(FILES)


def test_deleting_the_backup_removes_its_cronjob_jobs_and_pods(cluster, operator, s3, new_namespace):
    namespace = new_namespace("deletion")
    claim = make_volume(cluster, namespace, "data", FILES)
    prefix = f"deletion-{os.getpid()}"
    cluster.apply(manifest(namespace, "doomed", claim, s3, prefix))
    job = finished_job(cluster, namespace, run_now(cluster, namespace, "doomed")["metadata"]["name"])
    assert cluster.get("cronjob", "doomed-s3backup", "-n", namespace)
    assert cluster.items("pods", "-n", namespace, "-l", f"job-name={job['metadata']['name']}")

    cluster.kubectl("delete", "s3backup", "doomed", "-n", namespace, "--wait=true", "--timeout=60s")
    wait_for(lambda: cluster.get("cronjob", "doomed-s3backup", "-n", namespace) is None, "the CronJob gone")
    wait_for(lambda: not cluster.items("jobs", "-n", namespace), "the Jobs gone (garbage collector)")
    wait_for(lambda: not cluster.items("pods", "-n", namespace), "the pods gone (garbage collector, kubelet)")
    # Nothing in the bucket is touched.
    assert sorted(bucket_keys(s3, prefix)) == sorted(FILES)


def test_a_restricted_namespace_runs_backups(cluster, operator, s3, new_namespace):
    namespace = new_namespace("restricted", {"pod-security.kubernetes.io/enforce": "restricted",
                                             "pod-security.kubernetes.io/warn": "restricted"})
    # The control: Pod Security is enforced here, a root pod is refused.
    refused = cluster.kubectl("run", "root-pod", "-n", namespace, "--image=ghcr.io/s3backup/s3backup:0.1.0",
                              "--restart=Never", "--", "s3backup", "--help", check=False)
    assert refused.returncode != 0 and "violates PodSecurity" in refused.stderr, refused.stderr
    claim = make_volume(cluster, namespace, "data", FILES)
    prefix = f"restricted-{os.getpid()}"
    cluster.apply(manifest(namespace, "locked-down", claim, s3, prefix))
    job = finished_job(cluster, namespace, run_now(cluster, namespace, "locked-down")["metadata"]["name"])
    assert job["status"].get("succeeded") == 1
    events = cluster.items("events", "-n", namespace, "--field-selector", "reason=FailedCreate")
    assert not events, [event["message"] for event in events]
    assert last_run(cluster, namespace, "locked-down", job["metadata"]["name"])["result"] == "Succeeded"
    assert sorted(bucket_keys(s3, prefix)) == sorted(FILES)


def test_a_root_only_lost_and_found_is_skipped(cluster, operator, s3, new_namespace):
    """A fresh ext4 volume has a root-owned 0700 lost+found; the backup pod (uid 65532) cannot read it.
    The run must still succeed, without it."""
    namespace = new_namespace("lost-found")
    claim = make_volume(cluster, namespace, "data", FILES)
    lost = cluster.node_dir(NODE, f"/srv/{namespace}-data") / "lost+found"
    lost.mkdir()
    (lost / "#12345").write_bytes(b"orphan")
    os.chown(lost, 0, 0)
    lost.chmod(stat.S_IRWXU)
    prefix = f"lost-found-{os.getpid()}"
    cluster.apply(manifest(namespace, "volume", claim, s3, prefix))
    job = finished_job(cluster, namespace, run_now(cluster, namespace, "volume")["metadata"]["name"])
    pods = cluster.items("pods", "-n", namespace, "-l", f"job-name={job['metadata']['name']}")
    run = last_run(cluster, namespace, "volume", job["metadata"]["name"])
    assert run["result"] == "Succeeded", (run, [cluster.pod_log(pod) for pod in pods])
    assert (run["filesUploaded"], run["filesFailed"]) == (len(FILES), 0)
    assert sorted(bucket_keys(s3, prefix)) == sorted(FILES)
