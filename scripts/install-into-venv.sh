#!/bin/sh
# Builds the project's wheel and installs it, with the pinned runtime dependencies of
# constraints.txt, into a new virtualenv that has no pip of its own.
# The Dockerfile's build stage runs exactly this; so does tests/packaging (there is no
# Docker engine on the test machines), so the image's install steps are tested.
# Usage: scripts/install-into-venv.sh SOURCE_DIR VENV_DIR   (PYTHON: the interpreter to use)
set -eu
src=$1
venv=$2
python=${PYTHON:-python3}

dist=$(mktemp -d)
trap 'rm -rf "$dist"' EXIT
"$python" -m pip wheel --quiet --disable-pip-version-check --no-cache-dir --no-deps \
  --wheel-dir "$dist" "$src"
"$python" -m venv --without-pip "$venv"
"$python" -m pip --python "$venv/bin/python" install --quiet --disable-pip-version-check \
  --no-cache-dir --constraint "$src/constraints.txt" "$dist"/s3backup-*.whl
