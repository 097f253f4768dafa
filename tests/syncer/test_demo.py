"""The README's first command: `s3backup demo` on its generated sample, end to end against SeaweedFS."""

from __future__ import annotations

import subprocess
import sys


def test_the_demo_backs_up_twice_reading_nothing_the_second_time_and_restores_byte_for_byte():
    result = subprocess.run([sys.executable, "-m", "s3backup_syncer.cli", "demo"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    second = next(line for line in lines if line.startswith("second run"))
    assert "uploaded 0 (0 B)" in second and "read 0 B for checksums" in second
    assert any(line.startswith("verify --sample 100:") and "8 same" in line and "0 corrupt" in line for line in lines)
    assert any(line.startswith("restore:") and "restored 8 " in line and "0 failed" in line for line in lines)
    assert lines[-1].endswith("equals the source, byte for byte")
