"""`qbert ray-serve`: the service on a Ray cluster, each model a Ray Serve deployment (`service.ray_serving`)."""

from __future__ import annotations

import argparse
import logging
import signal
from typing import Any

from quantization.cli.output import emit

logger = logging.getLogger("qbert")

APPLICATION = "qbert"  # the Ray Serve application's name


def cmd_ray_serve(args: argparse.Namespace) -> int:
    try:
        import ray
        from ray import serve
    except ImportError:
        logger.error("qbert ray-serve: Ray is not installed (pip install 'qbert-serve[ray]')")
        return 2
    from service.ray_serving import build_application

    settings: dict[str, Any] = {}
    if args.tasks:
        settings["tasks"] = args.tasks.split(",")
    if args.precisions:
        settings["precisions"] = args.precisions.split(",")
    if args.default_precision:
        settings["default_precision"] = args.default_precision
    scaling = {
        "min_replicas": args.min_replicas,
        "max_replicas": max(args.max_replicas, args.min_replicas),
        "target_ongoing_requests": args.target_ongoing_requests,
        "max_ongoing_requests": args.max_ongoing_requests,
        "cpus_per_replica": args.cpus_per_replica,
    }
    ray.init(address=args.address, logging_level=logging.WARNING)  # None: a local Ray of this process's own
    serve.start(http_options={"host": args.host, "port": args.port}, proxy_location="EveryNode")
    application = build_application({"settings": settings, "scaling": scaling})
    emit(f"deploying to Ray ({ray.cluster_resources().get('CPU', 0):g} CPUs): http://{args.host}:{args.port}")
    # As `serve run` does, the application lives as long as this command: SIGINT or SIGTERM (a process manager's,
    # or a shell's for a background job, which ignores SIGINT) deletes it from the cluster.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        serve.run(application, name=APPLICATION, route_prefix="/", blocking=True)
    except KeyboardInterrupt:
        serve.delete(APPLICATION)
        emit(f"deleted the {APPLICATION} application")
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def register(sub: Any) -> None:
    p = sub.add_parser(
        "ray-serve",
        help="serve the artifacts on a Ray cluster: each model a Ray Serve deployment, autoscaled on ongoing requests",
    )
    p.add_argument("--address", help="a running cluster's address (ray start --head); default: start a local Ray")
    p.add_argument("--host", default="127.0.0.1", help="Serve's HTTP proxies listen here (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--tasks", help="comma-separated catalog models (default: QBERT_TASKS, else all)")
    p.add_argument("--precisions", help="comma-separated precisions (default: QBERT_PRECISIONS, else all built)")
    p.add_argument("--default-precision", help="precision when a request names none (QBERT_DEFAULT_PRECISION)")
    p.add_argument("--min-replicas", type=int, default=1, help="replicas per model at least (default 1)")
    p.add_argument("--max-replicas", type=int, default=2, help="replicas per model at most (default 2)")
    p.add_argument(
        "--target-ongoing-requests",
        type=float,
        default=8.0,
        help="ongoing requests per replica the autoscaler aims at (default 8)",
    )
    p.add_argument("--max-ongoing-requests", type=int, default=32, help="per replica; more wait at the caller")
    p.add_argument("--cpus-per-replica", type=float, default=1.0, help="Ray CPUs per replica = its torch threads")
    p.set_defaults(func=cmd_ray_serve)
