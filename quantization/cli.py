"""The `qbert` command line: quantize, eval, build, report."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from quantization.artifact import read_manifest
from quantization.catalog import TaskEntry, artifacts_dir, hessian_dir, load_catalog, repo_root
from quantization.config import BACKENDS, PrecisionConfig
from quantization.system import cpu_affinity, parse_cpu_list

logger = logging.getLogger("qbert")
DEFAULT_MIX = "sst2:w8,ner:w8,qa:w8"  # load generators: the default precision of each task


def _emit(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _eval_with_progress(
    artifact: Path, entry: TaskEntry, data: Path | None, batch_size: int, backend: str = "eager"
) -> list[dict]:
    from quantization.build import evaluate_artifact

    with tqdm(desc=f"eval {entry.task}/{artifact.name}", unit="seq", leave=False, disable=None) as bar:

        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.update(done)

        return evaluate_artifact(artifact, entry, data=data, batch_size=batch_size, on_batch=advance, backend=backend)


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
    if args.qat_steps:
        changes["qat"] = dataclasses.replace(changes.get("qat", precision.qat or QATConfig()), steps=args.qat_steps)
    if changes:
        default_name = f"{args.precision}-qat" if "qat" in changes and precision.qat is None else args.precision
        changes["name"] = args.name or default_name
        precision = dataclasses.replace(precision, **changes)
    out = Path(args.out) if args.out else artifacts_dir() / args.task / precision.name
    checkpoint = load_checkpoint(args.checkpoint or entry.checkpoint_location(), args.task)
    if args.plan:
        from quantization.plan import check_full_plan

        check_full_plan(checkpoint.model, precision.layer_bits)
    manifest = _write_artifact(checkpoint, entry, precision, out)
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
    for row in _eval_with_progress(artifact, entry, data, args.batch_size, args.backend):
        _emit(
            f"{manifest['task']} {manifest['precision']['name']} {row['metric']}: {row['value']:.4f} "
            f"on {row['split']} (n={row['n']}), b1 latency {row['latency_b1_ms']:.1f} ms ({args.backend})"
        )
    return 0


def _hessian_tables(out_dir: Path) -> dict[str, tuple[str, str | None]]:
    """Per task with a `qbert hessian` result under models/hessian: its table, and its figure drawn into
    `out_dir`/hessian (the path returned is relative to `out_dir`)."""
    from quantization.sensitivity import figure_title, plot_sensitivity, sensitivities_from_dict, sensitivity_table

    tables = {}
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
    from quantization.report import collect_results, plot_results, results_markdown, write_results_json
    from quantization.reproduction import reproduction_markdown

    out_dir = Path(args.out) if args.out else repo_root() / "models"
    rows = collect_results(load_catalog(), artifacts_dir())
    if not rows:
        logger.error("no evaluated artifacts under %s; run `qbert build` first", artifacts_dir())
        return 1
    write_results_json(rows, out_dir / "results.json")
    plot_results(rows, out_dir / "results.png")
    markdown = results_markdown(rows, "results.png")
    markdown += "\n" + reproduction_markdown(rows, _hessian_tables(out_dir))
    bench_file = out_dir / "bench.json"
    if bench_file.exists():  # written by `qbert bench --json models/bench.json` (`make bench`)
        from quantization.bench import bench_markdown

        markdown += "\n" + bench_markdown(json.loads(bench_file.read_text()))
    (out_dir / "RESULTS.md").write_text(markdown)
    _emit(f"wrote {out_dir / 'results.json'}, {out_dir / 'RESULTS.md'}, {out_dir / 'results.png'} ({len(rows)} rows)")
    return 0


def _tune_api_process(scheduling: str) -> None:
    """What the API process asks of the operating system, here in its entry point rather than in the app factory.

    SCHED_BATCH on this (the event loop's) thread: its wakeups do not preempt a worker's batch on a shared core;
    the workers it spawns inherit the policy and set their own. Everything made so far (imports, schemas, routes)
    lives as long as the process: frozen, it is not walked again by every full collection under load."""
    import gc

    from quantization.system import set_batch_scheduling

    if scheduling == "batch" and not set_batch_scheduling(True):
        logger.info("SCHED_BATCH is not available here; the API process keeps the normal scheduling policy")
    gc.freeze()


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service import ServiceSettings, create_app

    overrides = {
        name: value
        for name, value in {
            "host": args.host,
            "port": args.port,
            "workers": args.workers,
            "default_precision": args.default_precision,
            "torch_threads": args.threads,
            "build": not args.no_build,
        }.items()
        if value is not None
    }
    settings = ServiceSettings(**overrides)
    progress = None
    if settings.build:
        from quantization.progress import BuildProgress

        progress = BuildProgress()
    app = create_app(settings, on_build_event=progress)
    _tune_api_process(settings.api_scheduling)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info" if args.verbose else "warning",
        access_log=args.verbose,  # a log record per request costs CPU even when its level is filtered out
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
    )
    return 0


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

    from service.loadtest import LoadPlan, format_table, raw_throughput, run_load, sample_payloads

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
    result = asyncio.run(run_load(plan, payloads))
    if raw:
        result["raw"] = raw
        if args.raw_cpus:
            result["raw_cpus"] = sorted(args.raw_cpus)
        if len(raw) == 1:
            result["served_vs_raw"] = round(result["throughput_ips"] / raw[0]["throughput_ips"], 3)
            if "service_cpu_ms_per_input" in result:  # CPU per answer, served versus bare: the client aside
                result["served_cpu_vs_raw"] = round(result["service_cpu_ms_per_input"] / raw[0]["cpu_ms_per_input"], 3)
    _emit(format_table(result))
    _emit(
        f"total: {result['throughput_rps']} requests/s, {result['throughput_ips']} inputs/s over {result['seconds']} s"
    )
    for row in raw:
        _emit(f"raw model {row['task']}/{row['precision']} at batch {row['batch']}: {row['throughput_ips']} inputs/s")
    if "served_vs_raw" in result:
        _emit(f"served / raw throughput: {result['served_vs_raw']:.3f}")
    if "service_cpu_ms_per_request" in result:
        _emit(
            f"CPU per request: service {result['service_cpu_ms_per_request']} ms "
            f"(API {result['api_cpu_ms_per_request']} ms; {result['service_cpu_ms_per_input']} ms per input), "
            f"load generator {result['client_cpu_ms_per_request']} ms"
            + "".join(f"; raw model {row['cpu_ms_per_input']} ms per input" for row in raw)
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def cmd_soak(args: argparse.Namespace) -> int:
    from service.loadtest import LoadPlan, sample_payloads
    from service.soak import run_soak

    mix = _parse_mix(args.mix or [DEFAULT_MIX])
    plan = LoadPlan(
        url=args.url, mix=mix, concurrency=args.concurrency, duration_s=args.sample_every, api_key=args.api_key
    )
    payloads = {task: sample_payloads(task) for task in {t for t, _ in mix}}
    result = run_soak(plan, payloads, args.duration, args.sample_every)
    _emit(f"{result['requests']} requests in {result['seconds']} s, statuses {result['statuses']}")
    _emit(f"resident MB at the end: {result['resident_mb_last']}")
    _emit(f"growth MB (last third vs first third of samples): {result['growth_mb']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import dataclasses

    from quantization.bench import FULL, QUICK, format_table, headline, prepare_candidates, run_bench

    plan = QUICK if args.quick else FULL
    changes = {"threads": args.threads or plan.threads, "memory": not args.no_memory}
    if args.rounds:
        changes["rounds"] = args.rounds
    if args.model:
        changes["models"] = tuple(args.model)
    plan = dataclasses.replace(plan, **changes)
    cache = Path(args.cache) if args.cache else repo_root() / "models" / "cache" / "bench"
    candidates = prepare_candidates(plan, load_catalog(), cache)
    result = run_bench(plan, candidates, progress=lambda line: tqdm.write(f"bench: {line}", file=sys.stderr))
    _emit(format_table(result))
    for line in headline(result):
        _emit(line)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def cmd_hessian(args: argparse.Namespace) -> int:
    import time

    from quantization.build import load_checkpoint, training_set
    from quantization.hessian import HutchinsonConfig, PowerIterationConfig, block_sensitivities
    from quantization.sensitivity import (
        batch_losses,
        figure_title,
        plot_sensitivity,
        sensitivities_to_dict,
        sensitivity_table,
    )
    from quantization.train_data import fixed_batches

    entry = load_catalog().task(args.task)
    checkpoint = load_checkpoint(entry.checkpoint_location(), args.task, attn_implementation="eager")
    wanted = args.batches * args.batch_size
    data = training_set(checkpoint, entry, wanted, args.max_length, args.seed)
    features = data.features[:wanted]
    if len(features) < wanted:
        raise SystemExit(f"{data.split} gives {len(features)} features; {wanted} are needed")
    batches = fixed_batches(features, args.batch_size, data.pad_token_id)
    power = PowerIterationConfig(max_iterations=args.max_iterations, tolerance=args.tolerance, seed=args.seed)
    trace = None
    if args.trace_samples:
        floor = min(HutchinsonConfig.min_samples, args.trace_samples)
        trace = HutchinsonConfig(max_samples=args.trace_samples, min_samples=floor, seed=args.seed)
    started = time.perf_counter()
    with tqdm(desc=f"hessian {args.task}", unit="block", disable=None) as bar:
        results = block_sensitivities(
            checkpoint.model.eval(),
            batch_losses(checkpoint.model, batches),
            power,
            trace,
            on_block=lambda _: bar.update(),
        )
    seconds = time.perf_counter() - started
    out_dir = Path(args.out) if args.out else hessian_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "task": args.task,
        "checkpoint_sha256": checkpoint.sha256,
        "split": entry.train_split(),
        "batches": args.batches,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "power_iteration": {"max_iterations": power.max_iterations, "tolerance": power.tolerance},
        "hutchinson": {"max_samples": trace.max_samples, "tolerance": trace.tolerance} if trace else None,
        "seed": args.seed,
        "seconds": round(seconds, 1),
    }
    (out_dir / f"{args.task}.json").write_text(json.dumps(sensitivities_to_dict(results, meta), indent=2) + "\n")
    plot_sensitivity(results, out_dir / f"{args.task}.png", figure_title({"task": args.task, **meta}))
    _emit(sensitivity_table(results))
    _emit(f"{seconds:.0f} s; wrote {out_dir / f'{args.task}.json'} and {out_dir / f'{args.task}.png'}")
    return 0


def cmd_allocate(args: argparse.Namespace) -> int:
    from quantization.allocation import (
        allocate_under_budget,
        block_bits_to_layer_bits,
        layer_options,
        plan_size,
        qbert_block_bits,
    )
    from quantization.build import load_checkpoint
    from quantization.catalog import plans_dir, read_plan
    from quantization.plan import check_full_plan
    from quantization.sensitivity import module_traces, sensitivities_from_dict

    catalog = load_catalog()
    entry = catalog.task(args.task)
    hessian_file = Path(args.hessian) if args.hessian else hessian_dir() / f"{args.task}.json"
    hessian = json.loads(hessian_file.read_text())
    sensitivities = sensitivities_from_dict(hessian)
    checkpoint = load_checkpoint(entry.checkpoint_location(), args.task)
    if hessian["checkpoint_sha256"] != checkpoint.sha256:
        raise SystemExit(f"{hessian_file} was computed on another checkpoint; run `qbert hessian --task {args.task}`")
    weights = catalog.precision(args.base).weights
    if weights is None:
        raise SystemExit(f"--base {args.base} quantizes no weights")
    bits = sorted(int(b) for b in args.bits.split(","))
    record: dict[str, Any] = {"task": args.task, "rule": args.rule, "bits": bits, "base": args.base}
    if args.rule in ("qbert", "reversed"):
        if len(bits) != 2:
            raise SystemExit("the Q-BERT rule mixes two widths: --bits LOW,HIGH")
        block_bits = qbert_block_bits(sensitivities, bits[0], bits[1], reverse=args.rule == "reversed")
        layer_bits = block_bits_to_layer_bits(checkpoint.model, block_bits)
        record["block_bits"] = block_bits
        record["omega"] = {s.block: s.omega for s in sensitivities}
    options = layer_options(checkpoint.model, weights, bits, module_traces(sensitivities))
    if args.rule == "budget":
        if args.budget_mb:
            budget = int(args.budget_mb * 1_000_000)
        elif args.budget_as:
            budget, _ = plan_size(options, read_plan(plans_dir() / args.task / f"{args.budget_as}.json"))
            record["budget_as"] = args.budget_as
        else:
            raise SystemExit("--rule budget needs --budget-mb or --budget-as PLAN")
        allocation = allocate_under_budget(options, budget)
        layer_bits = allocation.layer_bits
        record["budget_bytes"] = budget
    check_full_plan(checkpoint.model, layer_bits)
    size, cost = plan_size(options, layer_bits)
    record.update(packed_bytes=size, second_order_cost=cost, hessian=hessian_file.name, layer_bits=layer_bits)
    out = plans_dir() / args.task / f"{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    counts = {b: sum(1 for v in layer_bits.values() if v == b) for b in bits}
    _emit(f"{out}: {counts} layers per width, {size / 1e6:.3f} MB packed, second-order cost {cost:.4g}")
    return 0


def _add_load_options(parser: argparse.ArgumentParser, concurrency: int) -> None:
    """Options shared by the load generators (`loadtest`, `soak`)."""
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--mix", action="append", default=None, help=f"TASK:PRECISION[,...] (default {DEFAULT_MIX})")
    parser.add_argument("--concurrency", type=int, default=concurrency)
    parser.add_argument("--api-key")
    parser.add_argument("--json", help="write the results as JSON here")


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
    p.add_argument("--qat", action="store_true", help="quantization-aware fine-tuning first (the task's recipe)")
    p.add_argument("--qat-steps", type=int, help="training steps (implies --qat)")
    p.add_argument("--plan", help="a bit-allocation plan JSON (`qbert allocate`): bits for every encoder Linear")
    p.add_argument("--name", help="precision name of the artifact (default: PRECISION, or PRECISION-qat)")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("eval", help="evaluate an artifact")
    p.add_argument("artifact")
    p.add_argument("--data", help="a file in the task's standard format (default: the catalog's split)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--backend", choices=BACKENDS, default="eager", help="results are recorded for eager only")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("build", help="build and evaluate every catalog artifact whose inputs changed")
    p.add_argument("--task", action="append", help="only this task (repeatable)")
    p.add_argument("--precision", action="append", help="only this precision (repeatable)")
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--study", action="store_true", help="also the reproduction study (QAT, mixed precision, ablations)")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("report", help="write models/results.json, models/RESULTS.md and the plot")
    p.add_argument("--out", help="folder (default: models/)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("serve", help="serve the artifacts over HTTP (settings: QBERT_* environment variables)")
    p.add_argument("--host", help="default 127.0.0.1 (QBERT_HOST)")
    p.add_argument("--port", type=int, help="default 8000 (QBERT_PORT)")
    p.add_argument("--workers", type=int, help="worker processes (QBERT_WORKERS, default 1)")
    p.add_argument("--default-precision", help="precision when a request names none (QBERT_DEFAULT_PRECISION)")
    p.add_argument("--no-build", action="store_true", help="serve what is built; do not build missing artifacts")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("loadtest", help="closed-loop HTTP load over a mix of tasks and precisions")
    _add_load_options(p, concurrency=16)
    p.add_argument("--duration", type=float, default=30.0, help="seconds of load (ignored with --requests)")
    p.add_argument("--requests", type=int, help="total requests instead of a duration")
    p.add_argument("--warmup", type=int, default=20, help="unrecorded requests first")
    p.add_argument(
        "--texts-per-request",
        type=int,
        default=1,
        help='bulk requests: {"texts": [...]} of this many inputs (sst2 and ner); throughput is also given in inputs/s',
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
    p.add_argument(
        "--raw-backend", choices=BACKENDS, default="compiled", help="as the server's QBERT_BACKEND (default compiled)"
    )
    p.set_defaults(func=cmd_loadtest)

    p = sub.add_parser("bench", help="our runtime beside PyTorch and ONNX Runtime, interleaved, same inputs")
    p.add_argument("--quick", action="store_true", help="bert-base shape + SST-2, b1×128 and b8×128 (< 5 min)")
    p.add_argument("--json", help="write the rows as JSON here")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 5)")
    p.add_argument("--model", action="append", help="bert-base-random or a catalog task (repeatable)")
    p.add_argument("--no-memory", action="store_true", help="skip the fresh-process RSS and load-time readings")
    p.add_argument("--cache", help="exports and quantized copies (default models/cache/bench)")
    p.set_defaults(func=cmd_bench)

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

    p = sub.add_parser("soak", help="steady load while sampling resident memory from /metrics")
    _add_load_options(p, concurrency=8)
    p.add_argument("--duration", type=float, default=600.0, help="seconds")
    p.add_argument("--sample-every", type=float, default=10.0, help="seconds between memory samples")
    p.set_defaults(func=cmd_soak)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("qbert.build").setLevel(logging.INFO)  # a build's progress lines, off a terminal
    # One progress display (`quantization.progress`), not a transformers bar per checkpoint and artifact loaded;
    # set before transformers is imported, and inherited by the processes `serve` spawns.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    _set_threads(args.threads)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
