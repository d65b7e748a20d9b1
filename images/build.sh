#!/usr/bin/env bash
# Build every image the stack needs, offline-capable, timing each step:
#   1. the Debian bookworm base (debootstrap + docker import)   images/base/build.sh
#   2. the wheelhouse (host pip → build/wheelhouse)              images/wheelhouse.sh
#   3. trusted-sandbox/{hub,notebook,gateway}:latest             images/*/Dockerfile
#
# Usage: images/build.sh [--if-missing] [hub|notebook|gateway ...]
#   --if-missing   skip images that already exist (what scripts/stack and the e2e tests use)
# Env:   SANDBOX_BASE_IMAGE   base to build on (default: the offline debootstrap base; set it
#                             to e.g. python:3.11-slim-bookworm on hosts that can pull)
#        SANDBOX_PIP_ONLINE=1 install from PyPI inside the builds instead of the wheelhouse
#        SANDBOX_IMAGE_PREFIX image name prefix (default trusted-sandbox)
set -euo pipefail
cd "$(dirname "$0")/.."
export DOCKER_BUILDKIT=0   # the classic builder: no buildx plugin is needed
PREFIX="${SANDBOX_IMAGE_PREFIX:-trusted-sandbox}"
OFFLINE_BASE="trusted-sandbox/base:bookworm"
BASE="${SANDBOX_BASE_IMAGE:-$OFFLINE_BASE}"
IF_MISSING=0
targets=()
for arg in "$@"; do
  case "$arg" in
    --if-missing) IF_MISSING=1 ;;
    hub|notebook|gateway) targets+=("$arg") ;;
    *) echo "usage: $0 [--if-missing] [hub|notebook|gateway ...]" >&2; exit 2 ;;
  esac
done
[[ ${#targets[@]} -eq 0 ]] && targets=(hub notebook gateway)

have() { docker image inspect "$1" >/dev/null 2>&1; }
todo=()
for t in "${targets[@]}"; do
  if [[ $IF_MISSING -eq 1 ]] && have "$PREFIX/$t:latest"; then
    echo "images: $PREFIX/$t:latest present, skipped"
  else
    todo+=("$t")
  fi
done
[[ ${#todo[@]} -eq 0 ]] && exit 0

t0=$(date +%s)
if [[ "$BASE" == "$OFFLINE_BASE" ]]; then
  SANDBOX_BASE_IMAGE="$OFFLINE_BASE" images/base/build.sh
fi
pip_args=()
if [[ "${SANDBOX_PIP_ONLINE:-0}" == "1" ]]; then
  # PyPI from inside the build (needs a network the build container can use).
  mkdir -p build && "${PYTHON:-python3}" - > build/pyproject-requirements.txt <<'PYEOF'
import tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))
PYEOF
else
  # Serve the wheelhouse on the host's loopback for the duration of the builds; builds run
  # with --network host and install with --no-index from it (no TLS, no PyPI, no COPY).
  images/wheelhouse.sh
  # A fixed port keeps the build argument (and so Docker's layer cache) stable across builds;
  # a free one is picked only if it is taken.
  port="${SANDBOX_WHEEL_PORT:-38741}"
  if ! "${PYTHON:-python3}" -c "import socket; socket.socket().bind(('127.0.0.1', $port))" 2>/dev/null; then
    port=$("${PYTHON:-python3}" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  fi
  "${PYTHON:-python3}" -m http.server "$port" --bind 127.0.0.1 --directory build/wheelhouse \
    >/dev/null 2>&1 &
  server_pid=$!
  trap 'kill $server_pid 2>/dev/null || true' EXIT
  for _ in $(seq 50); do
    "${PYTHON:-python3}" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/')" \
      2>/dev/null && break
    sleep 0.1
  done
  pip_args=(--network host
            --build-arg "PIP_INSTALL_ARGS=--no-index --find-links http://127.0.0.1:$port/")
fi
for t in "${todo[@]}"; do
  s=$(date +%s)
  docker build --quiet -f "images/$t/Dockerfile" --build-arg "BASE_IMAGE=$BASE" "${pip_args[@]}" \
    --label "org.opencontainers.image.source=trusted-sandbox" \
    -t "$PREFIX/$t:latest" . >/dev/null
  echo "images: built $PREFIX/$t:latest in $(( $(date +%s) - s ))s"
done
echo "images: all done in $(( $(date +%s) - t0 ))s"
