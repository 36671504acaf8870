"""`qbert loadtest` and `qbert soak`: the load generators against a running service."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quantization.catalog import artifacts_dir
from quantization.cli.output import emit
from quantization.config import BACKENDS
from quantization.system import cpu_affinity, parse_cpu_list

DEFAULT_MIX = "sst2:w8,ner:w8,qa:w8"  # the default precision of each task


def _parse_mix(items: Sequence[str]) -> tuple[tuple[str, str], ...]:
    mix = []
    for item in ",".join(items).split(","):
        task, sep, precision = item.strip().partition(":")
        if not sep or not task or not precision:
            raise SystemExit(f"--mix takes TASK:PRECISION items (e.g. sst2:w8,qa:fp32), got {item!r}")
        mix.append((task, precision))
    return tuple(mix)


def cmd_loadtest(args: argparse.Namespace) -> int:
    import asyncio

    from quantization.loadgen.loadtest import (
        LoadPlan,
        compared_with_raw,
        format_table,
        raw_throughput,
        run_load,
        sample_payloads,
    )

    plan = LoadPlan(
        url=args.url,
        mix=_parse_mix(args.mix or [DEFAULT_MIX]),
        concurrency=args.concurrency,
        duration_s=args.duration if args.requests is None else None,
        requests=args.requests,
        warmup=args.warmup,
        api_key=args.api_key,
        texts_per_request=args.texts_per_request,
    )
    payloads = {task: sample_payloads(task) for task in {t for t, _ in plan.mix}}
    raw_batch = args.raw_batch or args.concurrency * args.texts_per_request
    raw = []
    if args.compare_raw:  # before the HTTP load, so the two never share the CPU
        with cpu_affinity(args.raw_cpus):
            for task, precision in dict.fromkeys(plan.mix):
                artifact = artifacts_dir() / task / precision
                raw.append(raw_throughput(artifact, payloads[task], raw_batch, args.raw_seconds, args.raw_backend))
    result = compared_with_raw(asyncio.run(run_load(plan, payloads)), raw, args.raw_cpus)
    emit(format_table(result))
    emit(
        f"total: {result['throughput_rps']} requests/s, {result['throughput_ips']} inputs/s over {result['seconds']} s"
    )
    for row in raw:
        emit(f"raw model {row['task']}/{row['precision']} at batch {row['batch']}: {row['throughput_ips']} inputs/s")
    if "served_vs_raw" in result:
        emit(f"served / raw throughput: {result['served_vs_raw']:.3f}")
    if "service_cpu_ms_per_request" in result:
        emit(
            f"CPU per request: service {result['service_cpu_ms_per_request']} ms "
            f"(API {result['api_cpu_ms_per_request']} ms; {result['service_cpu_ms_per_input']} ms per input), "
            f"load generator {result['client_cpu_ms_per_request']} ms"
            + "".join(f"; raw model {row['cpu_ms_per_input']} ms per input" for row in raw)
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def cmd_soak(args: argparse.Namespace) -> int:
    from quantization.loadgen.loadtest import LoadPlan, sample_payloads
    from quantization.loadgen.soak import run_soak

    mix = _parse_mix(args.mix or [DEFAULT_MIX])
    plan = LoadPlan(
        url=args.url, mix=mix, concurrency=args.concurrency, duration_s=args.sample_every, api_key=args.api_key
    )
    payloads = {task: sample_payloads(task) for task in {t for t, _ in mix}}
    result = run_soak(plan, payloads, args.duration, args.sample_every)
    emit(f"{result['requests']} requests in {result['seconds']} s, statuses {result['statuses']}")
    emit(f"resident MB at the end: {result['resident_mb_last']}")
    emit(f"growth MB (last third vs first third of samples): {result['growth_mb']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _add_load_options(parser: argparse.ArgumentParser, concurrency: int) -> None:
    """Options shared by the load generators (`loadtest`, `soak`)."""
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--mix", action="append", default=None, help=f"TASK:PRECISION[,...] (default {DEFAULT_MIX})")
    parser.add_argument("--concurrency", type=int, default=concurrency)
    parser.add_argument("--api-key")
    parser.add_argument("--json", help="write the results as JSON here")


def register(sub: Any) -> None:
    """Add this group's subcommands to `sub` (the parser's subparsers)."""
    p = sub.add_parser("loadtest", help="closed-loop HTTP load over a mix of tasks and precisions")
    _add_load_options(p, concurrency=16)
    p.add_argument("--duration", type=float, default=30.0, help="seconds of load (ignored with --requests)")
    p.add_argument("--requests", type=int, help="total requests instead of a duration")
    p.add_argument("--warmup", type=int, default=20, help="unrecorded requests first")
    p.add_argument(
        "--texts-per-request",
        type=int,
        default=1,
        help='bulk requests: {"texts": [...]} of this many inputs (every kind but QA); throughput also in inputs/s',
    )
    p.add_argument("--compare-raw", action="store_true", help="also measure the bare models in process first")
    p.add_argument("--raw-seconds", type=float, default=10.0)
    p.add_argument(
        "--raw-batch", type=int, help="batch size of the bare models (default: concurrency × texts per request)"
    )
    p.add_argument(
        "--raw-cpus",
        type=parse_cpu_list,
        help="CPUs for the bare models (e.g. the server's taskset list, so served and raw get the same cores); "
        "the load itself runs on this process's own CPUs (Linux)",
    )
    p.add_argument("--raw-backend", choices=BACKENDS, default="aot", help="as the server's QBERT_BACKEND (default aot)")
    p.set_defaults(func=cmd_loadtest)

    p = sub.add_parser("soak", help="steady load while sampling resident memory from /metrics")
    _add_load_options(p, concurrency=8)
    p.add_argument("--duration", type=float, default=600.0, help="seconds")
    p.add_argument("--sample-every", type=float, default=10.0, help="seconds between memory samples")
    p.set_defaults(func=cmd_soak)
