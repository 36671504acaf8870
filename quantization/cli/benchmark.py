"""`qbert bench`: our runtime beside PyTorch, ONNX Runtime and OpenVINO, interleaved, on the same inputs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from quantization.catalog import load_catalog, repo_root
from quantization.cli.output import emit
from quantization.config import ATTENTION_PRECISIONS


def cmd_bench(args: argparse.Namespace) -> int:
    import dataclasses

    from quantization.bench import FULL, QUICK, format_table, headline, prepare_candidates, run_bench

    plan = QUICK if args.quick else FULL
    changes: dict[str, Any] = {"threads": args.threads or plan.threads, "memory": not args.no_memory}
    if args.rounds:
        changes["rounds"] = args.rounds
    if args.model:
        changes["models"] = tuple(args.model)
    if args.attention_precision:
        changes["attention_precision"] = args.attention_precision
    plan = dataclasses.replace(plan, **changes)
    cache = Path(args.cache) if args.cache else repo_root() / "models" / "cache" / "bench"
    candidates = prepare_candidates(plan, load_catalog(), cache)
    result = run_bench(plan, candidates, progress=lambda line: tqdm.write(f"bench: {line}", file=sys.stderr))
    emit(format_table(result))
    for line in headline(result):
        emit(line)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def register(sub: Any) -> None:
    """Add this group's subcommands to `sub` (the parser's subparsers)."""
    p = sub.add_parser("bench", help="our runtime beside PyTorch and ONNX Runtime, interleaved, same inputs")
    p.add_argument("--quick", action="store_true", help="bert-base shape + SST-2, b1×128 and b8×128 (minutes: README)")
    p.add_argument("--json", help="write the rows as JSON here")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 5)")
    p.add_argument("--model", action="append", help="bert-base-random or a catalog task (repeatable)")
    p.add_argument("--no-memory", action="store_true", help="skip the fresh-process RSS and load-time readings")
    p.add_argument("--cache", help="exports and quantized copies (default models/cache/bench)")
    p.add_argument(
        "--attention-precision",
        choices=ATTENTION_PRECISIONS,
        help="our packed backend's attention products (default float32, the service's default)",
    )
    p.set_defaults(func=cmd_bench)
