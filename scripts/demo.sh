#!/usr/bin/env bash
# The main job on an embedded default: starts a local S3 (SeaweedFS) on loopback, backs up
# a directory (a generated sample when none is given), then runs again to show that nothing
# is uploaded twice. Usage: scripts/demo.sh [DIRECTORY]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh demo
exec .venv/bin/s3backup demo "$@"
