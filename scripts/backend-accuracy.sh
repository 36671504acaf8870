#!/usr/bin/env bash
# Issue 6's accuracy check: each served artifact evaluated on another backend (default compiled) beside the
# metric its build recorded (eager, the reference path), as a markdown table.
#   scripts/backend-accuracy.sh [BACKEND] [PRECISIONS] [TASKS]      env: VENV
set -euo pipefail
backend=${1:-compiled}
precisions=${2:-"fp32 w8 w4g128 w3g128 w2g128 direct-w4 direct-w2"}
tasks=${3:-"sst2 ner qa"}
bin=${VENV:-.venv}/bin
"$bin/python" - "$backend" "$precisions" "$tasks" "$bin/qbert" <<'PY'
import json, re, subprocess, sys
from pathlib import Path

backend, precisions, tasks, qbert = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), sys.argv[4]
line = re.compile(r"^\w+ \S+ (\w+): ([0-9.]+) on ")
print(f"| task | precision | metric | recorded (eager) | {backend} | Δ pt |")
print("|---|---|---|---|---|---|")
for task in tasks:
    for precision in precisions:
        artifact = Path("models/artifacts") / task / precision
        recorded = {e["metric"]: e["value"] for e in json.loads((artifact / "manifest.json").read_text())["evaluation"]}
        run = subprocess.run([qbert, "--threads", "2", "eval", str(artifact), "--backend", backend],
                             check=True, capture_output=True, text=True)
        for match in filter(None, map(line.match, run.stdout.splitlines())):
            metric, value = match[1], float(match[2])
            delta = (value - recorded[metric]) * 100
            print(f"| {task} | {precision} | {metric} | {recorded[metric] * 100:.2f} | {value * 100:.2f} | {delta:+.2f} |",
                  flush=True)
PY
