#!/usr/bin/env bash
# Build the wheelhouse the image builds install from with `pip install --no-index`:
# every wheel the hub, notebook and gateway images need, resolved on the host (which reaches
# PyPI with its own trust store), so image builds need no network and no TLS setup at all.
#
# Usage: images/wheelhouse.sh            (writes build/wheelhouse/, git-ignored)
# Env:   PYTHON (default .venv/bin/python, else python3): the pip that downloads.
#        SANDBOX_WHEEL_PYTHON (default 3.11.2, the base image's Python) to resolve for.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
out=build/wheelhouse
mkdir -p "$out" build
start=$(date +%s)
# The package's own run-time dependencies, read from pyproject.toml (the project wheel itself is
# built inside the gateway image from source, so it is never stale).
"$PY" - > build/pyproject-requirements.txt <<'PYEOF'
import tomllib
data = tomllib.load(open("pyproject.toml", "rb"))
print("\n".join(data["project"]["dependencies"]))
PYEOF
# Resolve for the images' interpreter (Debian bookworm's CPython 3.11.2), not the host's:
# binary wheels only, so nothing is compiled and the result is the same on every host.
"$PY" -m pip download --quiet --dest "$out" \
  --python-version "${SANDBOX_WHEEL_PYTHON:-3.11.2}" --implementation cp --abi cp311 \
  --platform manylinux_2_36_x86_64 --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  --only-binary=:all: \
  --requirement images/hub/requirements.txt \
  --requirement images/notebook/requirements.txt \
  --requirement images/gateway/requirements.txt \
  --requirement build/pyproject-requirements.txt \
  "setuptools>=68" wheel pip
echo "wheelhouse: $(ls "$out" | wc -l) wheels, $(du -sh "$out" | cut -f1) in $(( $(date +%s) - start ))s"
