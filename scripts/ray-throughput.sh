#!/usr/bin/env bash
# Ray Serve throughput with one replica of a model against two (issue 23), measured in one run on a real two-node
# Ray cluster on this machine: `ray start --head` and a second node joined to it, one CPU each; each replica gets a
# CPU (one torch thread). The same closed-loop load (`qbert loadtest`, bulk requests) runs against each deployment.
# The artifacts must be built (`qbert build --task sst2 --precision w8`). It ends with `ray stop`.
#   scripts/ray-throughput.sh [OUT_DIR] [SECONDS]      env: TASK (sst2), PRECISION (w8), CONCURRENCY (8), TEXTS (4)
set -euo pipefail
out=${1:-ray-throughput}
seconds=${2:-20}
task=${TASK:-sst2} precision=${PRECISION:-w8} concurrency=${CONCURRENCY:-8} texts=${TEXTS:-4}
bin=${VENV:-.venv}/bin
mkdir -p "$out"
export RAY_USAGE_STATS_ENABLED=0
"$bin/ray" status >/dev/null 2>&1 && { echo "a Ray cluster already runs here; stop it first" >&2; exit 1; }
trap '"$bin/ray" stop --force >/dev/null 2>&1 || true' EXIT
"$bin/ray" start --head --port=6390 --num-cpus=1 --include-dashboard=false >"$out/head.log" 2>&1
"$bin/ray" start --address=127.0.0.1:6390 --num-cpus=1 >"$out/node.log" 2>&1
grep -o 'avx512[a-z_0-9]*\|amx[a-z_0-9]*\|avx_vnni' /proc/cpuinfo | sort -u | tr '\n' ' ' >"$out/cpu-flags.txt"
port=${PORT:-8791}
for replicas in 1 2; do
  "$bin/qbert" ray-serve --address 127.0.0.1:6390 --port "$port" --tasks "$task" --precisions "$precision" \
    --min-replicas "$replicas" --max-replicas "$replicas" --cpus-per-replica 1 >"$out/serve-$replicas.log" 2>&1 &
  serving=$!
  for _ in $(seq 240); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 1; done
  "$bin/qbert" loadtest --url "http://127.0.0.1:$port" --mix "$task:$precision" --concurrency "$concurrency" \
    --texts-per-request "$texts" --duration "$seconds" --warmup 20 --json "$out/replicas-$replicas.json" \
    | tee "$out/replicas-$replicas.txt"
  kill -TERM "$serving"; wait "$serving" || true  # the command deletes its application as it exits
done
