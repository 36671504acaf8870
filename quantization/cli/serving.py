"""`qbert serve`: the service under uvicorn, with the process-wide tuning the app factory leaves to its entry point."""

from __future__ import annotations

import argparse
import logging
from typing import Any

logger = logging.getLogger("qbert")


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
            "tasks": args.tasks.split(",") if args.tasks else None,
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


def register(sub: Any) -> None:
    """Add this group's subcommands to `sub` (the parser's subparsers)."""
    p = sub.add_parser("serve", help="serve the artifacts over HTTP (settings: QBERT_* environment variables)")
    p.add_argument("--host", help="default 127.0.0.1 (QBERT_HOST)")
    p.add_argument("--port", type=int, help="default 8000 (QBERT_PORT)")
    p.add_argument("--workers", type=int, help="worker processes (QBERT_WORKERS, default 1)")
    p.add_argument("--default-precision", help="precision when a request names none (QBERT_DEFAULT_PRECISION)")
    p.add_argument("--tasks", help="comma-separated catalog models to serve (QBERT_TASKS, default: all of them)")
    p.add_argument("--no-build", action="store_true", help="serve what is built; do not build missing artifacts")
    p.set_defaults(func=cmd_serve)
