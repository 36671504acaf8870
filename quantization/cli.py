"""The `qbert` command line: quantize, eval, build, report."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from quantization.artifact import read_manifest
from quantization.catalog import Catalog, TaskEntry, artifacts_dir, load_catalog, repo_root

logger = logging.getLogger("qbert")


def _emit(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _eval_with_progress(artifact: Path, entry: TaskEntry, data: Path | None, batch_size: int) -> list[dict]:
    from quantization.build import evaluate_artifact

    with tqdm(desc=f"eval {entry.task}/{artifact.name}", unit="seq", leave=False, disable=None) as bar:

        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.update(done)

        return evaluate_artifact(artifact, entry, data=data, batch_size=batch_size, on_batch=advance)


def _build_one(catalog: Catalog, entry: TaskEntry, precision: str, force: bool, batch_size: int, cache: dict) -> str:
    from quantization.build import inputs_sha256, is_up_to_date, load_checkpoint, quantize_checkpoint

    out = artifacts_dir() / entry.task / precision
    if entry.task not in cache:
        cache[entry.task] = load_checkpoint(entry.checkpoint_location(), entry.task)
    checkpoint = cache[entry.task]
    config = catalog.precision(precision)
    expected = inputs_sha256(checkpoint.sha256, config, entry.task)
    if not force and is_up_to_date(out, expected) and read_manifest(out)["evaluation"]:
        return "up to date"
    quantize_checkpoint(checkpoint, entry.task, config, out)
    rows = _eval_with_progress(out, entry, None, batch_size)
    return ", ".join(f"{r['metric']}={r['value']:.4f}" for r in rows)


def cmd_build(args: argparse.Namespace) -> int:
    catalog = load_catalog()
    tasks = args.task or list(catalog.tasks)
    jobs = [
        (catalog.task(t), p)
        for t in tasks
        for p in catalog.task(t).precisions
        if not args.precision or p in args.precision
    ]
    cache: dict = {}
    with tqdm(jobs, desc="build", unit="artifact", disable=None) as bar:
        for entry, precision in bar:
            bar.set_postfix_str(f"{entry.task}/{precision}")
            status = _build_one(catalog, entry, precision, args.force, args.batch_size, cache)
            tqdm.write(f"{entry.task}/{precision}: {status}")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from quantization.build import load_checkpoint, quantize_checkpoint

    catalog = load_catalog()
    entry = catalog.task(args.task)
    location = args.checkpoint or entry.checkpoint_location()
    out = Path(args.out) if args.out else artifacts_dir() / args.task / args.precision
    checkpoint = load_checkpoint(location, args.task)
    manifest = quantize_checkpoint(checkpoint, args.task, catalog.precision(args.precision), out)
    _emit(f"wrote {out}: {json.dumps(manifest['summary'])}")
    if not args.no_eval:
        for row in _eval_with_progress(out, entry, None, args.batch_size):
            _emit(f"{row['metric']}: {row['value']:.4f} on {row['split']} (n={row['n']})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    artifact = Path(args.artifact)
    manifest = read_manifest(artifact)
    entry = load_catalog().task(manifest["task"])
    data = Path(args.data) if args.data else None
    for row in _eval_with_progress(artifact, entry, data, args.batch_size):
        _emit(
            f"{manifest['task']} {manifest['precision']['name']} {row['metric']}: {row['value']:.4f} "
            f"on {row['split']} (n={row['n']}), b1 latency {row['latency_b1_ms']:.1f} ms"
        )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from quantization.report import collect_results, plot_results, results_markdown, write_results_json

    out_dir = Path(args.out) if args.out else repo_root() / "models"
    rows = collect_results(load_catalog(), artifacts_dir())
    if not rows:
        logger.error("no evaluated artifacts under %s; run `qbert build` first", artifacts_dir())
        return 1
    write_results_json(rows, out_dir / "results.json")
    plot_results(rows, out_dir / "results.png")
    (out_dir / "RESULTS.md").write_text(results_markdown(rows, "results.png"))
    _emit(f"wrote {out_dir / 'results.json'}, {out_dir / 'RESULTS.md'}, {out_dir / 'results.png'} ({len(rows)} rows)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qbert", description="Q-BERT quantized BERT artifacts and serving")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("quantize", help="quantize one checkpoint at one precision")
    p.add_argument("--task", required=True)
    p.add_argument("--precision", required=True)
    p.add_argument("--checkpoint", help="checkpoint folder or hub id (default: the catalog's)")
    p.add_argument("--out", help="artifact folder (default: models/artifacts/TASK/PRECISION)")
    p.add_argument("--no-eval", action="store_true", help="skip evaluation on the catalog's split")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("eval", help="evaluate an artifact")
    p.add_argument("artifact")
    p.add_argument("--data", help="a file in the task's standard format (default: the catalog's split)")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("build", help="build and evaluate every catalog artifact whose inputs changed")
    p.add_argument("--task", action="append", help="only this task (repeatable)")
    p.add_argument("--precision", action="append", help="only this precision (repeatable)")
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("report", help="write models/results.json, models/RESULTS.md and the plot")
    p.add_argument("--out", help="folder (default: models/)")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    _set_threads(args.threads)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
