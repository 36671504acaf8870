"""The Quant-Noise study's table (scripts/quant-noise-study.sh): per task and precision, plain QAT against
Quant-Noise, each as mean ± standard deviation over its seeds of the task's primary metric, and the runs' wall time.

    python3 scripts/quant-noise-table.py OUT [OUT ...] [--json FILE]   (models/quant-noise.json: `qbert report` reads it)

An existing --json FILE is extended: its rows of a (task, precision, recipe) that the OUT folders do not hold are kept,
so a study's runs can be added a part at a time (artifacts of finished parts may be deleted).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

NAME = re.compile(r"^(?P<precision>.+)-(?P<recipe>plain|noise)-seed(?P<seed>\d+)$")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path, nargs="+")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for manifest_path in sorted(path for out in args.out for path in out.glob("*/*/manifest.json")):
        manifest = json.loads(manifest_path.read_text())
        match = NAME.match(manifest_path.parent.name)
        if match is None or not manifest.get("evaluation"):
            continue
        row = manifest["evaluation"][0]  # the task's first metric is its primary one
        training = manifest.get("training") or {}
        rate = (manifest["precision"].get("qat") or {}).get("noise_rate")
        recipe = "plain" if match["recipe"] == "plain" else f"noise {rate:g}"
        runs[(manifest_path.parent.parent.name, match["precision"], recipe)].append(
            {
                "seed": int(match["seed"]),
                "metric": row["metric"],
                "value": row["value"],
                "train_seconds": training.get("seconds"),
                "noise": rate,
            }
        )
    measured = set(runs)
    if args.json and args.json.exists():
        for row in json.loads(args.json.read_text()):
            key = (row["task"], row["precision"], row["recipe"])
            if key not in measured:
                runs[key] = row["runs"]
    print("| task | precision | recipe | metric | mean | sd | seeds | train s (mean) |")
    print("|---|---|---|---|---|---|---|---|")
    table = []
    for (task, precision, recipe), rows in sorted(runs.items()):
        values = [r["value"] * 100 for r in rows]
        seconds = [r["train_seconds"] for r in rows if r["train_seconds"] is not None]
        spread = statistics.stdev(values) if len(values) > 1 else float("nan")
        mean_seconds = statistics.mean(seconds) if seconds else float("nan")
        print(
            f"| {task} | {precision} | {recipe} | {rows[0]['metric']} | {statistics.mean(values):.2f} | "
            f"{spread:.2f} | {len(rows)} | {mean_seconds:.0f} |"
        )
        table.append({"task": task, "precision": precision, "recipe": recipe, "runs": rows})
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
