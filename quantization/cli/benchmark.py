"""`qbert bench`: our runtime beside PyTorch, ONNX Runtime and OpenVINO, interleaved, on the same inputs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from quantization.catalog import load_catalog, repo_root
from quantization.cli.output import emit
from quantization.config import ATTENTION_PRECISIONS, BACKENDS

if TYPE_CHECKING:
    from quantization.bench import BenchPlan


def plan_from_args(args: argparse.Namespace) -> BenchPlan:
    """The quick or full plan with the command line's changes."""
    from quantization.bench import FULL, QUICK, Shape

    plan = QUICK if args.quick else FULL
    changes: dict[str, Any] = {"threads": args.threads or plan.threads, "memory": not args.no_memory}
    if args.rounds:
        changes["rounds"] = args.rounds
    if args.model:
        changes["models"] = tuple(args.model)
    if args.attention_precision:
        changes["attention_precision"] = args.attention_precision
    if args.backend:
        changes["backends"] = tuple(args.backend)
    if args.precision:
        changes["precisions"] = tuple(args.precision)
    if args.runtime:
        # PyTorch FP32 (the reference every output is checked against) and ours always run
        changes["runtimes"] = tuple(dict.fromkeys(["torch-fp32", *args.runtime, "qbert"]))
    if args.shape:
        changes["shapes"] = tuple(Shape(*shape) for shape in args.shape)
    return dataclasses.replace(plan, **changes)


def cmd_bench(args: argparse.Namespace) -> int:
    from quantization.bench import format_table, headline, prepare_candidates, run_bench

    plan = plan_from_args(args)
    cache = Path(args.cache) if args.cache else repo_root() / "models" / "cache" / "bench"
    candidates = prepare_candidates(plan, load_catalog(), cache)
    result = run_bench(plan, candidates, progress=lambda line: tqdm.write(f"bench: {line}", file=sys.stderr))
    emit(format_table(result))
    for model in dict.fromkeys(row["model"] for row in result["rows"]):
        for line in headline(result, model):
            emit(line)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _shape(text: str) -> tuple[int, int]:
    batch, _, seq = text.lower().partition("x")
    try:
        return int(batch), int(seq)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape is BATCHxSEQ, e.g. 8x128; got {text!r}") from None


def register(sub: Any) -> None:
    """Add this group's subcommands to `sub` (the parser's subparsers)."""
    p = sub.add_parser("bench", help="our runtime beside PyTorch and ONNX Runtime, interleaved, same inputs")
    p.add_argument("--quick", action="store_true", help="bert-base shape + SST-2, b1×128 and b8×128 (minutes: README)")
    p.add_argument("--json", help="write the rows as JSON here")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 5)")
    p.add_argument("--model", action="append", help="bert-base-random or a catalog task (repeatable)")
    p.add_argument("--no-memory", action="store_true", help="skip the fresh-process RSS and load-time readings")
    p.add_argument("--cache", help="exports and quantized copies (default models/cache/bench)")
    p.add_argument("--backend", action="append", choices=BACKENDS, help="a backend of ours to time (repeatable)")
    p.add_argument("--precision", action="append", help="a precision of ours to time, e.g. w8 (repeatable)")
    p.add_argument(
        "--runtime",
        action="append",
        help="a peer to time (torch-dynamic-int8, ort-fp32, ort-int8, ov-fp32, ov-int8; repeatable); PyTorch FP32, "
        "the reference, and ours always run",
    )
    p.add_argument("--shape", action="append", type=_shape, help="BATCHxSEQ, e.g. 1x384 (repeatable)")
    p.add_argument(
        "--attention-precision",
        choices=ATTENTION_PRECISIONS,
        help="our packed backend's attention products (default float32, the service's default)",
    )
    p.set_defaults(func=cmd_bench)
