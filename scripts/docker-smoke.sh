#!/usr/bin/env bash
# Optional end-to-end check of docker/Dockerfile on a machine with a Docker engine but no registry:
#   1. makes the Dockerfile's base image locally when it cannot be pulled (debootstrap bookworm with
#      Debian's python3.11, `docker import`ed under the base's tag);
#   2. serves a local torch CPU wheel as a package index when TORCH_WHEELS holds one;
#   3. builds the image (host network: traffic stays on 127.0.0.1), runs it with host networking and
#      the built artifacts mounted, waits for Docker's HEALTHCHECK to report healthy, asks /readyz,
#      /models and one prediction per task, and stops it with SIGTERM.
# Usage (root, dockerd running): scripts/docker-smoke.sh [ARTIFACTS_DIR] [PORT]
set -euo pipefail
cd "$(dirname "$0")/.."
ARTIFACTS=$(realpath "${1:-models/artifacts}")
PORT=${2:-18080}
IMAGE=qbert-serve:smoke
TORCH_WHEELS=${TORCH_WHEELS:-/opt/wheels}
WORK=${QBERT_SMOKE_DIR:-/tmp/qbert-docker-smoke}
BASE=$(sed -n 's/^ARG PYTHON_IMAGE=//p' docker/Dockerfile)
mkdir -p "$WORK"
log() { echo "[docker-smoke] $*" >&2; }

docker info >/dev/null
if ! docker image inspect "$BASE" >/dev/null 2>&1 && ! docker pull "$BASE" >/dev/null 2>&1; then
  log "making $BASE locally with debootstrap (no registry)"
  rootfs="$WORK/rootfs"
  [ -e "$rootfs/usr/include/python3.11/Python.h" ] || rm -rf "$rootfs"
  [ -d "$rootfs" ] || debootstrap --variant=minbase --include=python3,python3-venv,python3-dev,ca-certificates \
      bookworm "$rootfs" http://deb.debian.org/debian >"$WORK/debootstrap.log"
  ln -sf python3 "$rootfs/usr/bin/python"
  # This host reaches package registries through a proxy with its own CA: the base trusts what the host trusts.
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  tar -C "$rootfs" -c . | docker import -c 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
      -c 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' -c 'CMD ["python3"]' - "$BASE" >/dev/null
fi

build_args=()
wheel=$(ls "$TORCH_WHEELS"/torch-2.13.0*.whl 2>/dev/null | head -1 || true)
if [ -n "$wheel" ]; then
  index="$WORK/index"
  mkdir -p "$index/simple/torch"
  ln -sf "$wheel" "$index/simple/torch/$(basename "$wheel")"
  echo "<a href=\"$(basename "$wheel")\">$(basename "$wheel")</a>" >"$index/simple/torch/index.html"
  python3 -m http.server 18099 --bind 127.0.0.1 --directory "$index" >"$WORK/index.log" 2>&1 &
  index_pid=$!
  trap 'kill $index_pid 2>/dev/null || true' EXIT
  build_args+=(--build-arg TORCH_INDEX_URL=http://127.0.0.1:18099/simple)
  log "serving $(basename "$wheel") as the torch index"
fi

log "building $IMAGE"
start=$(date +%s)
docker build --network host "${build_args[@]}" -f docker/Dockerfile -t "$IMAGE" . >"$WORK/build.log" 2>&1 \
  || { tail -30 "$WORK/build.log"; exit 1; }
log "built in $(( $(date +%s) - start )) s; image $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"

docker rm -f qbert-smoke >/dev/null 2>&1 || true
docker run -d --name qbert-smoke --network host -e QBERT_PORT="$PORT" -e QBERT_HOST=127.0.0.1 \
  -v "$ARTIFACTS:/artifacts:ro" "$IMAGE" >/dev/null
trap 'docker rm -f qbert-smoke >/dev/null 2>&1 || true; kill ${index_pid:-0} 2>/dev/null || true' EXIT
log "user in container: $(docker exec qbert-smoke id -un)"
for _ in $(seq 1 120); do
  health=$(docker inspect -f '{{.State.Health.Status}}' qbert-smoke)
  [ "$health" = healthy ] && break
  [ "$(docker inspect -f '{{.State.Running}}' qbert-smoke)" = true ] || { docker logs qbert-smoke | tail -30; exit 1; }
  sleep 2
done
log "HEALTHCHECK: $health"
[ "$health" = healthy ]
curl -sf "127.0.0.1:$PORT/readyz"; echo
curl -sf "127.0.0.1:$PORT/models" | python3 -c 'import json,sys; m=json.load(sys.stdin)["models"]; print(len(m), "models, backends", sorted({x["backend"] for x in m}))'
docker logs qbert-smoke 2>&1 | grep -m3 -A3 "runs eager" || true
curl -sf "127.0.0.1:$PORT/predict/sst2" -H 'content-type: application/json' -d '{"text": "a gripping, beautifully acted film"}'; echo
curl -sf "127.0.0.1:$PORT/predict/ner?precision=w4g128" -H 'content-type: application/json' -d '{"text": "John Smith works for Acme Corp in Paris."}'; echo
curl -sf "127.0.0.1:$PORT/qa?precision=w2g128" -H 'content-type: application/json' \
  -d '{"question": "Where does John live?", "context": "John Smith lives in Paris, where he works for Acme Corp."}'; echo
docker stop -t 35 qbert-smoke >/dev/null
log "stopped: exit code $(docker inspect -f '{{.State.ExitCode}}' qbert-smoke)"
