"""`qbert report`: models/results.json, models/RESULTS.md and a plot, from the built artifacts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from quantization.artifact import ArtifactError, read_manifest
from quantization.catalog import Catalog

_MB = 1_000_000


def collect_results(catalog: Catalog, artifacts: Path) -> list[dict[str, Any]]:
    """One row per task x precision x metric, in catalog order, from evaluated artifacts."""
    rows = []
    for task_name, entry in catalog.tasks.items():
        manifests = {}
        for precision in (*entry.precisions, *entry.study):
            try:
                manifests[precision] = read_manifest(artifacts / task_name / precision)
            except ArtifactError:
                continue
        baseline = {e["metric"]: e["value"] for e in manifests.get("fp32", {}).get("evaluation", [])}
        for precision, manifest in manifests.items():
            summary = manifest["summary"]
            for evaluation in manifest["evaluation"]:
                rows.append(
                    {
                        "task": task_name,
                        "precision": precision,
                        "metric": evaluation["metric"],
                        "value": evaluation["value"],
                        "fp32_value": baseline.get(evaluation["metric"]),
                        "split": evaluation["split"],
                        "n": evaluation["n"],
                        "avg_bits": summary["avg_bits_encoder"],
                        # every stored byte of the encoder weights, scales and masks included, per weight
                        "avg_bits_all_in": _all_in_bits(summary),
                        "packed_bytes": summary["encoder_packed_bytes"],
                        "fp32_bytes": summary["encoder_fp32_bytes"],
                        "qat": bool(manifest.get("qat", False)),
                        "embedding_bits": summary["avg_bits_embeddings"],
                        "activation_bits": 8 if manifest["precision"]["activations"] else 32,
                        "embedding_packed_bytes": summary["embedding_packed_bytes"],
                        "training": _training_summary(manifest.get("training")),
                        **_preprocessing_summary(manifest.get("preprocessing")),
                        "total_packed_bytes": summary["total_packed_bytes"],
                        "total_fp32_bytes": summary["total_fp32_bytes"],
                        "latency_b1_ms": evaluation.get("latency_b1_ms"),
                        "torch_threads": evaluation.get("torch_threads"),
                        "date": evaluation["date"],
                    }
                )
    return rows


def _all_in_bits(summary: dict[str, Any]) -> float | None:
    fp32 = summary["encoder_fp32_bytes"]
    return round(32 * summary["encoder_packed_bytes"] / fp32, 4) if fp32 else None


def merge_with_recorded(built: list[dict[str, Any]], recorded: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The recorded rows (the last results.json), each task and precision built here replaced by its built rows, and
    the built ones not recorded yet after their task's last row: an artifact lives on the machine that built it, the
    record of its evaluation in the repository. Rows without an FP32 figure take it from the merged FP32 rows."""
    built_by_key: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in built:
        built_by_key.setdefault((row["task"], row["precision"]), []).append(row)
    merged: list[dict[str, Any]] = []
    placed: set[tuple[str, str]] = set()
    for row in recorded:
        key = (row["task"], row["precision"])
        if key not in built_by_key:
            merged.append(row)
        elif key not in placed:
            merged.extend(built_by_key[key])
            placed.add(key)
    for key, rows in built_by_key.items():
        if key in placed:
            continue
        last = max((i for i, row in enumerate(merged) if row["task"] == key[0]), default=len(merged) - 1)
        merged[last + 1 : last + 1] = rows
    fp32 = {(row["task"], row["metric"]): row["value"] for row in merged if row["precision"] == "fp32"}
    return [
        row if row.get("fp32_value") is not None else {**row, "fp32_value": fp32.get((row["task"], row["metric"]))}
        for row in merged
    ]


def _training_summary(training: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the results say of an artifact's QAT: enough to compare runs, not the whole recipe."""
    if not training:
        return None
    config = training["config"]
    return {
        "split": training["split"],
        "steps": training["steps"],
        "batch_size": config["batch_size"],
        "learning_rate": config["learning_rate"],
        "distill_weight": config["distill_weight"],
        "hidden_distill_weight": config.get("hidden_distill_weight", 0.0),
        "activation_ranges": config["activation_ranges"],
        "seconds": training["seconds"],
    }


def _preprocessing_summary(record: dict[str, Any] | None) -> dict[str, Any]:
    """PTQ1.61's preprocessing where it ran: its steps and wall time (calibration, first quantization, training)."""
    if not record:
        return {}
    return {"preprocessing": {"steps": record["steps"], "rank": record["config"]["rank"], "seconds": record["seconds"]}}


def write_results_json(rows: list[dict[str, Any]], path: Path) -> None:
    path.write_text(json.dumps({"results": rows}, indent=2) + "\n")


def _fmt_delta(value: float, baseline: float | None) -> str:
    return "—" if baseline is None else f"{(value - baseline) * 100:+.2f}"


def results_markdown(rows: list[dict[str, Any]], plot_name: str | None) -> str:
    lines = [
        "# Accuracy and size per precision",
        "",
        "Generated by `qbert report` from the artifacts built by `qbert build`; do not edit by hand.",
        "Sizes are of the encoder's Linear weights (Q-BERT's *w-bits* size), packed codes plus their",
        "float32 scales and uint8 zero points; *total* adds embeddings, LayerNorm, biases, pooler and head.",
        "Metrics in points (percent); Δ is against FP32 on the same split. Latency: median end-to-end",
        "milliseconds of one request at batch size 1 (pre- and post-processing included), measured in",
        "the same run as the metric, on the torch thread count shown.",
        "",
    ]
    for task in dict.fromkeys(r["task"] for r in rows):
        task_rows = [r for r in rows if r["task"] == task]
        metrics = list(dict.fromkeys(r["metric"] for r in task_rows))
        first = task_rows[0]
        lines += [f"## {task} — {first['split']}, n = {first['n']}", ""]
        header = "| precision | QAT | avg bits | e-bits | encoder MB | compression | total MB |"
        header += "".join(f" {m} | Δ {m} |" for m in metrics) + " b1 latency ms |"
        lines += [header, "|" + "---|" * (header.count("|") - 1)]
        for precision in dict.fromkeys(r["precision"] for r in task_rows):
            by_metric = {r["metric"]: r for r in task_rows if r["precision"] == precision}
            r = next(iter(by_metric.values()))
            cells = [
                precision,
                "yes" if r["qat"] else "no",
                f"{r['avg_bits']:g}",
                f"{r['embedding_bits']:g}",
                f"{r['packed_bytes'] / _MB:.2f}",
                f"{r['fp32_bytes'] / r['packed_bytes']:.1f}×",
                f"{r['total_packed_bytes'] / _MB:.2f}",
            ]
            for m in metrics:
                row = by_metric[m]
                cells += [f"{row['value'] * 100:.2f}", _fmt_delta(row["value"], row["fp32_value"])]
            latency = r.get("latency_b1_ms")
            cells.append(f"{latency:.1f} ({r.get('torch_threads')}t)" if latency is not None else "—")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if plot_name:
        lines += [f"![accuracy and size versus bits]({plot_name})", ""]
    return "\n".join(lines)


def plot_results(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    primary = {"accuracy", "entity_f1", "f1"}
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        task_rows = [r for r in rows if r["task"] == task and r["metric"] in primary]
        size_ax = ax.twinx()
        for r in task_rows:
            direct = r["precision"].startswith("direct")
            ax.scatter(r["avg_bits"], r["value"] * 100, marker="x" if direct else "o", color="C3" if direct else "C0")
            ax.annotate(
                r["precision"], (r["avg_bits"], r["value"] * 100), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
            size_ax.scatter(r["avg_bits"], r["packed_bytes"] / _MB, marker="s", color="C2", alpha=0.4)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("average bits per encoder weight")
        ax.set_ylabel(f"{task_rows[0]['metric']} (%)" if task_rows else "metric")
        size_ax.set_ylabel("encoder MB (green squares)")
        ax.set_title(task)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
