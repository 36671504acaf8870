"""`qbert quantize`, `eval`, `build` and `report`: making artifacts, measuring them, reporting them."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from quantization.artifact import read_manifest
from quantization.catalog import TaskEntry, artifacts_dir, hessian_dir, load_catalog, repo_root
from quantization.cli.output import emit
from quantization.config import ATTENTION_PRECISIONS, BACKENDS, PACKED_KERNEL_BACKENDS, QAT_STARTS, PrecisionConfig

logger = logging.getLogger("qbert")


def _eval_with_progress(
    artifact: Path,
    entry: TaskEntry,
    data: Path | None,
    batch_size: int,
    backend: str = "eager",
    attention_precision: str = ATTENTION_PRECISIONS[0],
) -> list[dict]:
    from quantization.build import evaluate_artifact

    with tqdm(desc=f"eval {entry.task}/{artifact.name}", unit="seq", leave=False, disable=None) as bar:

        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.update(done)

        return evaluate_artifact(
            artifact,
            entry,
            data=data,
            batch_size=batch_size,
            on_batch=advance,
            backend=backend,
            attention_precision=attention_precision,
        )


def _write_artifact(checkpoint: Any, entry: TaskEntry, precision: PrecisionConfig, out: Path) -> dict:
    """`build.build_artifact` with a progress bar over QAT steps."""
    from quantization.build import build_artifact

    steps = precision.qat.steps if precision.qat else 0
    with tqdm(
        total=steps, desc=f"QAT {entry.task}/{precision.name}", unit="step", leave=False, disable=not steps or None
    ) as bar:

        def advance(step: int, loss: float) -> None:
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{loss:.4f}")

        return build_artifact(checkpoint, entry, precision, out, on_step=advance)


def cmd_build(args: argparse.Namespace) -> int:
    from quantization.catalog_build import build_catalog, catalog_jobs
    from quantization.progress import BuildProgress

    catalog = load_catalog()
    jobs = catalog_jobs(catalog, args.task, args.precision, study=args.study)
    progress = BuildProgress()

    def on_event(event: Any) -> None:  # a catalog_build.BuildEvent
        progress(event)
        if event.state == "built":  # the results on stdout; the progress display is on stderr
            metrics = ", ".join(f"{row['metric']}={row['value']:.4f}" for row in event.accuracy)
            tqdm.write(f"{event.task}/{event.precision}: {event.detail or metrics}", file=sys.stdout)

    try:
        outcomes = build_catalog(catalog, jobs, artifacts_dir(), on_event, force=args.force, batch_size=args.batch_size)
    finally:
        progress.close()
    failed = [f"{o.task}/{o.precision}: {o.detail}" for o in outcomes if o.state == "failed"]
    for line in failed:
        logger.error("not built: %s", line)
    return 1 if failed else 0


def cmd_quantize(args: argparse.Namespace) -> int:
    import dataclasses

    from quantization.build import load_checkpoint
    from quantization.catalog import read_plan
    from quantization.config import QATConfig

    catalog = load_catalog()
    entry = catalog.task(args.task)
    precision = catalog.precision_for(args.task, args.precision)
    changes: dict[str, Any] = {}
    if args.plan:
        changes["layer_bits"] = read_plan(Path(args.plan))
    if args.qat and precision.qat is None:
        changes["qat"] = entry.qat_recipe(QATConfig())
    recipe: dict[str, Any] = {}
    if args.qat_steps:
        recipe["steps"] = args.qat_steps
    if args.qat_seed is not None:
        recipe["seed"] = args.qat_seed
    if args.qat_start:
        recipe["start"] = args.qat_start
    if args.distill_weight is not None:
        recipe["distill_weight"] = args.distill_weight
    if args.hidden_distill_weight is not None:
        recipe["hidden_distill_weight"] = args.hidden_distill_weight
    if args.quant_noise:
        rate, _, rest = args.quant_noise.partition(",")
        unit, _, block = rest.partition(",")
        recipe |= {"noise_rate": float(rate), "noise_unit": unit or "block", "noise_block": int(block or 8)}
    if recipe:
        base = changes.get("qat", precision.qat or entry.qat_recipe(QATConfig()))
        changes["qat"] = dataclasses.replace(base, **recipe)
    if changes:
        default_name = f"{args.precision}-qat" if "qat" in changes and precision.qat is None else args.precision
        # A recipe changed from the catalog's is an artifact of its own, never the catalog precision's folder.
        default_name += "-qn" if "noise_rate" in recipe else ""
        default_name += f"-from-{args.qat_start}" if args.qat_start else ""
        default_name += f"-kd{args.distill_weight:g}" if args.distill_weight is not None else ""
        default_name += f"-hkd{args.hidden_distill_weight:g}" if args.hidden_distill_weight is not None else ""
        default_name += f"-seed{args.qat_seed}" if args.qat_seed is not None else ""
        changes["name"] = args.name or default_name
        precision = dataclasses.replace(precision, **changes)
    out = Path(args.out) if args.out else artifacts_dir() / args.task / precision.name
    checkpoint = load_checkpoint(args.checkpoint or entry.checkpoint_location(), entry.make_task())
    if args.plan:
        from quantization.plan import check_full_plan

        check_full_plan(checkpoint.model, precision.layer_bits)
    manifest = _write_artifact(checkpoint, entry, precision, out)
    emit(f"wrote {out}: {json.dumps(manifest['summary'])}")
    if not args.no_eval:
        for row in _eval_with_progress(out, entry, None, args.batch_size):
            emit(f"{row['metric']}: {row['value']:.4f} on {row['split']} (n={row['n']})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    artifact = Path(args.artifact)
    manifest = read_manifest(artifact)
    entry = load_catalog().task(manifest["task"])
    data = Path(args.data) if args.data else None
    rows = _eval_with_progress(artifact, entry, data, args.batch_size, args.backend, args.attention_precision)
    attention = f", {args.attention_precision} attention" if args.backend in PACKED_KERNEL_BACKENDS else ""
    for row in rows:
        emit(
            f"{manifest['task']} {manifest['precision']['name']} {row['metric']}: {row['value']:.4f} "
            f"on {row['split']} (n={row['n']}), b1 latency {row['latency_b1_ms']:.1f} ms ({row['backend']}{attention})"
        )
    return 0


def _hessian_tables(out_dir: Path) -> dict[str, tuple[str, str | None]]:
    """Per task with a `qbert hessian` result under models/hessian: its table, and its figure drawn into
    `out_dir`/hessian (the path returned is relative to `out_dir`)."""
    from quantization.sensitivity import figure_title, plot_sensitivity, sensitivities_from_dict, sensitivity_table

    tables: dict[str, tuple[str, str | None]] = {}
    for path in sorted(hessian_dir().glob("*.json")):
        data = json.loads(path.read_text())
        results = sensitivities_from_dict(data)
        figure = out_dir / "hessian" / path.with_suffix(".png").name  # models/hessian/ itself for the default out
        figure.parent.mkdir(parents=True, exist_ok=True)
        plot_sensitivity(results, figure, figure_title(data))  # drawn anew from the data
        relative = figure.relative_to(out_dir)
        caption = f"{data['batches']} batches of {data['batch_size']} from {data['split']}; "
        caption += f"{data['seconds']:.0f} s wall time\n\n"
        tables[data["task"]] = (
            caption + sensitivity_table(results),
            str(relative),
        )
    return tables


def cmd_report(args: argparse.Namespace) -> int:
    from quantization.report import (
        collect_results,
        merge_with_recorded,
        plot_results,
        results_markdown,
        write_results_json,
    )
    from quantization.reproduction import reproduction_markdown

    out_dir = Path(args.out) if args.out else repo_root() / "models"
    catalog = load_catalog()
    rows = collect_results(catalog, artifacts_dir())
    recorded_file = out_dir / "results.json"  # the record this report extends
    if recorded_file.exists():
        rows = merge_with_recorded(rows, json.loads(recorded_file.read_text())["results"])
    if not rows:
        logger.error("no evaluated artifacts under %s; run `qbert build` first", artifacts_dir())
        return 1
    write_results_json(rows, out_dir / "results.json")
    plot_results(rows, out_dir / "results.png")
    markdown = results_markdown(rows, "results.png")
    quant_noise_file = repo_root() / "models" / "quant-noise.json"  # scripts/quant-noise-table.py --json
    quant_noise = json.loads(quant_noise_file.read_text()) if quant_noise_file.exists() else None
    markdown += "\n" + reproduction_markdown(rows, _hessian_tables(out_dir), quant_noise)
    bench_file = out_dir / "bench.json"
    if bench_file.exists():  # written by `qbert bench --json models/bench.json` (`make bench`)
        from quantization.bench import bench_markdown

        markdown += "\n" + bench_markdown(json.loads(bench_file.read_text()))
    (out_dir / "RESULTS.md").write_text(markdown)
    emit(f"wrote {out_dir / 'results.json'}, {out_dir / 'RESULTS.md'}, {out_dir / 'results.png'} ({len(rows)} rows)")
    return 0


def register(sub: Any) -> None:
    """Add this group's subcommands to `sub` (the parser's subparsers)."""
    p = sub.add_parser("quantize", help="quantize one checkpoint at one precision")
    p.add_argument("--task", required=True)
    p.add_argument("--precision", required=True)
    p.add_argument("--checkpoint", help="checkpoint folder or hub id (default: the catalog's)")
    p.add_argument("--out", help="artifact folder (default: models/artifacts/TASK/PRECISION)")
    p.add_argument("--no-eval", action="store_true", help="skip evaluation on the catalog's split")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--qat", action="store_true", help="quantization-aware fine-tuning first (the task's recipe)")
    p.add_argument("--qat-steps", type=int, help="training steps (implies --qat)")
    p.add_argument("--qat-seed", type=int, help="the training run's seed: data order, dropout, Quant-Noise's draws")
    p.add_argument(
        "--quant-noise",
        metavar="RATE[,UNIT[,BLOCK]]",
        help="Quant-Noise: quantize this share of the weights per training pass, by UNIT block (BLOCK weights of a "
        "row, default 8) or layer (implies --qat)",
    )
    p.add_argument(
        "--qat-start",
        choices=QAT_STARTS,
        help="train from the FP32 weights (checkpoint) or from GPTQ's rounding of them (gptq) (implies --qat)",
    )
    p.add_argument("--distill-weight", type=float, help="share of the loss that is distillation from FP32 (--qat)")
    p.add_argument(
        "--hidden-distill-weight",
        type=float,
        help="weight of the mean squared error to FP32's hidden states after every block (--qat)",
    )
    p.add_argument("--plan", help="a bit-allocation plan JSON (`qbert allocate`): bits for every encoder Linear")
    p.add_argument("--name", help="precision name of the artifact (default: PRECISION, or PRECISION-qat)")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("eval", help="evaluate an artifact")
    p.add_argument("artifact")
    p.add_argument("--data", help="a file in the task's standard format (default: the catalog's split)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--backend", choices=BACKENDS, default="eager", help="results are recorded for eager only")
    p.add_argument(
        "--attention-precision",
        choices=ATTENTION_PRECISIONS,
        default=ATTENTION_PRECISIONS[0],
        help="the packed and aot backends' attention products (as the service's QBERT_ATTENTION_PRECISION)",
    )
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("build", help="build and evaluate every catalog artifact whose inputs changed")
    p.add_argument("--task", action="append", help="only this task (repeatable)")
    p.add_argument("--precision", action="append", help="only this precision (repeatable)")
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--study", action="store_true", help="also the reproduction study (QAT, mixed precision, ablations)")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser(
        "report",
        help="write models/results.json, models/RESULTS.md and the plot: the artifacts built here, and the rows "
        "the results.json already in the folder records for those not built here",
    )
    p.add_argument("--out", help="folder (default: models/)")
    p.set_defaults(func=cmd_report)
