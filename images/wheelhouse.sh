#!/usr/bin/env bash
# Build the wheelhouse the image builds install from with `pip install --no-index`:
# every wheel the hub, notebook and gateway images need, resolved on the host (which reaches
# PyPI with its own trust store), so image builds need no network and no TLS setup at all.
#
# Usage: images/wheelhouse.sh            (writes build/wheelhouse/, git-ignored)
# Env:   PYTHON (default .venv/bin/python, else python3) — must be CPython 3.11 like the images.
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
"$PY" -m pip wheel --quiet --wheel-dir "$out" \
  --requirement images/hub/requirements.txt \
  --requirement images/notebook/requirements.txt \
  --requirement images/gateway/requirements.txt \
  --requirement build/pyproject-requirements.txt \
  "setuptools>=68" wheel pip
echo "wheelhouse: $(ls "$out" | wc -l) wheels, $(du -sh "$out" | cut -f1) in $(( $(date +%s) - start ))s"
