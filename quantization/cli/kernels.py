"""`qbert kernels`: build (or find built) the packed backend's kernels for this machine, and say whether they run."""

from __future__ import annotations

import argparse
from typing import Any

from quantization.cli.output import emit


def cmd_kernels(args: argparse.Namespace) -> int:
    from quantization.runtime.packed_kernels import kernel_cache_dir, unavailable_reason

    reason = unavailable_reason()
    if reason is None:
        emit(f"packed kernels: ready ({kernel_cache_dir()})")
    else:
        emit(f"packed kernels: unavailable here ({reason}); the packed backend falls back to compiled")
    return 0  # unavailable is not an error: the service falls back


def register(sub: Any) -> None:
    """Add this group's subcommands to `sub` (the parser's subparsers)."""
    p = sub.add_parser("kernels", help="build the packed backend's kernels now (make install does) and report")
    p.set_defaults(func=cmd_kernels)
