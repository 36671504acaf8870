#!/usr/bin/env bash
# Serving latency and throughput figures (issue #4): for each task at fp32, w8 and w2g128, closed-loop
# load at concurrency 1 and 16 against `qbert serve`, and the raw model's in-process throughput at
# batch 16 measured in the same run (before the HTTP load, so they never share the CPU).
#
# PIN=1 (the default, with 2 CPUs or more): the load generator gets the last CPU to itself, the service the
# others, and the raw model is timed on the service's CPUs with as many threads: served and raw get the same
# compute, and the client's CPU (which belongs to the users' machines in production) is no part of the overhead.
# PIN=0: everything shares every CPU (the served/raw ratio then also pays for the load generator).
# BULK=C:T (default 2:16): then, for sst2 and ner, C clients each sending T texts per request ({"texts": [...]}):
# with 2 × 16 one full batch runs while the next waits. Compared with the raw model at batch 16; BULK= skips it.
#   scripts/serving-figures.sh [OUT_DIR] [SECONDS]      env: PIN, BULK, QBERT_WORKERS, QBERT_MAX_WAIT_MS, PORT, TASKS
set -euo pipefail
out=${1:-serving-figures}
seconds=${2:-15}
tasks=${TASKS:-sst2 ner qa}
bulk=${BULK-2:16}
port=${PORT:-8765}
bin=${VENV:-.venv}/bin
cpus=$(nproc)
mkdir -p "$out"
serve=() load=() raw_cpus=() load_threads=$cpus
if [[ ${PIN:-1} == 1 && $cpus -ge 2 ]]; then
  service_cpus="0-$((cpus - 2))"
  serve=(taskset -c "$service_cpus") load=(taskset -c "$((cpus - 1))")
  raw_cpus=(--raw-cpus "$service_cpus") load_threads=$((cpus - 1))
fi
echo "service CPUs: ${service_cpus:-all}; load generator: ${load[*]:-all CPUs}" >"$out/layout.txt"
QBERT_PORT=$port QBERT_PRECISIONS=fp32,w8,w2g128 "${serve[@]}" "$bin/qbert" serve --no-build >"$out/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; do sleep 0.5; done
for task in $tasks; do
  for precision in fp32 w8 w2g128; do
    "${load[@]}" "$bin/qbert" loadtest --url "http://127.0.0.1:$port" --mix "$task:$precision" --concurrency 1 \
      --duration "$seconds" --json "$out/$task-$precision-c1.json" >/dev/null
    "${load[@]}" "$bin/qbert" --threads "$load_threads" loadtest --url "http://127.0.0.1:$port" \
      --mix "$task:$precision" --concurrency 16 --duration "$seconds" --compare-raw "${raw_cpus[@]}" \
      --json "$out/$task-$precision-c16.json" >/dev/null
  done
done
if [[ -n $bulk ]]; then
  for task in $tasks; do
    [[ $task == qa ]] && continue  # one question per request
    for precision in fp32 w8 w2g128; do
      "${load[@]}" "$bin/qbert" --threads "$load_threads" loadtest --url "http://127.0.0.1:$port" \
        --mix "$task:$precision" --concurrency "${bulk%%:*}" --texts-per-request "${bulk##*:}" --raw-batch 16 \
        --duration "$seconds" --compare-raw "${raw_cpus[@]}" --json "$out/$task-$precision-bulk.json" >/dev/null
    done
  done
fi
curl -s "http://127.0.0.1:$port/metrics" >"$out/metrics.txt"
"$bin/python" - "$out" "$tasks" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| task | precision | c1 p50 ms | c1 p95 ms | c16 p50 ms | c16 p95 ms | c16 req/s | raw b16 inputs/s "
      "| served / raw | CPU ms per answer: raw, served (API), load generator | served / raw CPU |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for task in sys.argv[2].split():
    for precision in ("fp32", "w8", "w2g128"):
        c1 = json.loads((out / f"{task}-{precision}-c1.json").read_text())
        c16 = json.loads((out / f"{task}-{precision}-c16.json").read_text())
        a, b, raw = c1["rows"][0], c16["rows"][0], c16["raw"][0]
        cpu = (f"{raw['cpu_ms_per_input']:.2f}, {c16['service_cpu_ms_per_request']:.2f} "
               f"({c16['api_cpu_ms_per_request']:.2f}), {c16['client_cpu_ms_per_request']:.2f}")
        print(f"| {task} | {precision} | {a['p50_ms']} | {a['p95_ms']} | {b['p50_ms']} | {b['p95_ms']} | "
              f"{c16['throughput_rps']} | {raw['throughput_ips']} | {c16['served_vs_raw']:.2f} | {cpu} | "
              f"{c16['served_cpu_vs_raw']:.2f} |")
bulk = sorted(out.glob("*-bulk.json"))
if bulk:
    print("\n| task | precision | clients × texts per request | p50 ms | p95 ms | inputs/s | raw b16 inputs/s "
          "| served / raw | CPU ms per input: raw, served | served / raw CPU |")
    print("|---|---|---|---|---|---|---|---|---|---|")
for path in bulk:
    r = json.loads(path.read_text())
    row, raw = r["rows"][0], r["raw"][0]
    print(f"| {row['task']} | {row['precision']} | {row['concurrency']} × {row['texts_per_request']} | {row['p50_ms']} | "
          f"{row['p95_ms']} | {r['throughput_ips']} | {raw['throughput_ips']} | {r['served_vs_raw']:.2f} | "
          f"{raw['cpu_ms_per_input']:.2f}, {r['service_cpu_ms_per_input']:.2f} | {r['served_cpu_vs_raw']:.2f} |")
PY
