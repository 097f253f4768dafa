"""Real services the tests start on loopback: the Pushgateway and Prometheus (Debian packages).

SeaweedFS is started through the product's own `s3backup_syncer.local_s3.LocalS3`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from s3backup_syncer.local_s3 import free_port


def _wait_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: process exited early:\n{log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError as error:
            if error.code != 503:  # 401/404: up (behind auth, or no ready path); 503: still starting
                return
            time.sleep(0.2)
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise TimeoutError(f"{url} did not answer in {timeout}s")


class Service:
    """A background process on a free loopback port, stopped with `stop()` or `with`."""

    binary = ""
    ready_path = "/-/ready"

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._tempdir = tempfile.TemporaryDirectory(prefix=f"s3backup-{Path(self.binary).name}-")
        self.dir = Path(self._tempdir.name)
        self.process: subprocess.Popen | None = None

    def args(self) -> list[str]:
        raise NotImplementedError

    def start(self):
        path = shutil.which(self.binary)
        if not path:
            raise FileNotFoundError(f"{self.binary} is not installed (apt-get install it; scripts/test.sh does)")
        log = self.dir / "log.txt"
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [path, *self.args()], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        _wait_http(self.url + self.ready_path, self.process, log)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._tempdir.cleanup()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Pushgateway(Service):
    binary = "prometheus-pushgateway"

    def args(self) -> list[str]:
        # An empty persistence file: nothing leaks from one test run into the next.
        return [f"--web.listen-address=127.0.0.1:{self.port}", "--persistence.file="]


class Prometheus(Service):
    binary = "prometheus"

    def __init__(self, scrape_url: str, rule_files: list[Path] | None = None,
                 extra_scrape_configs: list[dict] | None = None) -> None:
        """Scrapes the Pushgateway at `scrape_url` (honor_labels), plus any `extra_scrape_configs`
        (Prometheus scrape_config entries, e.g. the operator's /metrics)."""
        self.scrape_url = scrape_url
        self.rule_files = rule_files or []
        self.extra_scrape_configs = extra_scrape_configs or []
        super().__init__()

    def args(self) -> list[str]:
        target = self.scrape_url.split("://", 1)[1]
        rules = "".join(f"\n  - {path}" for path in self.rule_files)
        extra = "".join(f"  - {json.dumps(config)}\n" for config in self.extra_scrape_configs)  # JSON is YAML
        (self.dir / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            + (f"rule_files:{rules}\n" if rules else "")
            + "scrape_configs:\n"
            + f"  - job_name: pushgateway\n    honor_labels: true\n    static_configs: [{{targets: ['{target}']}}]\n"
            + extra
        )
        return [
            f"--config.file={self.dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
