"""`qbert hessian` and `qbert allocate`: Q-BERT's sensitivity study and the bit-allocation plans made from it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tqdm import tqdm

from quantization.catalog import hessian_dir, load_catalog
from quantization.cli.output import emit


def cmd_hessian(args: argparse.Namespace) -> int:
    from quantization.sensitivity import figure_title, plot_sensitivity, sensitivities_to_dict, sensitivity_table
    from quantization.sensitivity_study import SensitivityStudy, measure_sensitivity

    study = SensitivityStudy(
        batches=args.batches,
        batch_size=args.batch_size,
        max_length=args.max_length,
        max_iterations=args.max_iterations,
        tolerance=args.tolerance,
        trace_samples=args.trace_samples,
        seed=args.seed,
    )
    entry = load_catalog().task(args.task)
    with tqdm(desc=f"hessian {args.task}", unit="block", disable=None) as bar:
        try:
            results, meta = measure_sensitivity(entry, study, on_block=lambda _: bar.update())
        except ValueError as exc:
            raise SystemExit(str(exc)) from exc
    out_dir = Path(args.out) if args.out else hessian_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{args.task}.json").write_text(json.dumps(sensitivities_to_dict(results, meta), indent=2) + "\n")
    plot_sensitivity(results, out_dir / f"{args.task}.png", figure_title(meta))
    emit(sensitivity_table(results))
    emit(f"{meta['seconds']:.0f} s; wrote {out_dir / f'{args.task}.json'} and {out_dir / f'{args.task}.png'}")
    return 0


def cmd_allocate(args: argparse.Namespace) -> int:
    from quantization.allocation import allocation_plan
    from quantization.build import load_checkpoint
    from quantization.catalog import plans_dir, read_plan
    from quantization.plan import check_full_plan
    from quantization.sensitivity import sensitivities_from_dict

    catalog = load_catalog()
    entry = catalog.task(args.task)
    hessian_file = Path(args.hessian) if args.hessian else hessian_dir() / f"{args.task}.json"
    hessian = json.loads(hessian_file.read_text())
    checkpoint = load_checkpoint(entry.checkpoint_location(), entry.make_task())
    if hessian["checkpoint_sha256"] != checkpoint.sha256:
        raise SystemExit(f"{hessian_file} was computed on another checkpoint; run `qbert hessian --task {args.task}`")
    weights = catalog.precision(args.base).weights
    if weights is None:
        raise SystemExit(f"--base {args.base} quantizes no weights")
    budget_as = read_plan(plans_dir() / args.task / f"{args.budget_as}.json") if args.budget_as else None
    try:
        plan = allocation_plan(
            checkpoint.model,
            sensitivities_from_dict(hessian),
            weights,
            [int(b) for b in args.bits.split(",")],
            args.rule,
            budget_bytes=int(args.budget_mb * 1_000_000) if args.budget_mb else None,
            budget_layer_bits=budget_as,
        )
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    check_full_plan(checkpoint.model, plan.layer_bits)
    record: dict[str, Any] = {"task": args.task, "base": args.base, **plan.record(), "hessian": hessian_file.name}
    if args.budget_as and not args.budget_mb:
        record["budget_as"] = args.budget_as
    out = plans_dir() / args.task / f"{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    counts = {b: sum(1 for v in plan.layer_bits.values() if v == b) for b in plan.bits}
    emit(
        f"{out}: {counts} layers per width, {plan.packed_bytes / 1e6:.3f} MB packed, "
        f"second-order cost {plan.second_order_cost:.4g}"
    )
    return 0


def register(sub: Any) -> None:
    """Add this group's subcommands to `sub` (the parser's subparsers)."""
    p = sub.add_parser("hessian", help="per-block Hessian sensitivity (top eigenvalue, trace) on training batches")
    p.add_argument("--task", required=True)
    p.add_argument("--batches", type=int, default=10, help="independent mini-batches (Q-BERT: ≥ 10)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--max-iterations", type=int, default=100)
    p.add_argument("--tolerance", type=float, default=1e-3, help="relative eigenvalue change that stops the iteration")
    p.add_argument("--trace-samples", type=int, default=0, help="Hutchinson samples at most per batch (0: no trace)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="folder for TASK.json and TASK.png (default models/hessian)")
    p.set_defaults(func=cmd_hessian)

    p = sub.add_parser("allocate", help="a bit-allocation plan from `qbert hessian` results")
    p.add_argument("--task", required=True)
    p.add_argument("--name", required=True, help="plan name: writes models/plans/TASK/NAME.json")
    p.add_argument("--rule", choices=("qbert", "reversed", "budget"), default="qbert")
    p.add_argument("--bits", default="2,3", help="widths to choose from (qbert/reversed: LOW,HIGH)")
    p.add_argument("--base", default="mp23", help="catalog precision whose weight quantizer is used")
    p.add_argument("--budget-mb", type=float, help="budget: packed encoder weights at most this many MB")
    p.add_argument("--budget-as", help="budget: the packed size of this plan of the task")
    p.add_argument("--hessian", help="the `qbert hessian` result (default models/hessian/TASK.json)")
    p.set_defaults(func=cmd_allocate)
