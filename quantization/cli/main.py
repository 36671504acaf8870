"""The `qbert` command: global options, one group module per family of subcommands."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

from quantization.cli.add import register as add_commands
from quantization.cli.artifacts import register as artifact_commands
from quantization.cli.benchmark import register as bench_commands
from quantization.cli.kernels import register as kernel_commands
from quantization.cli.load import register as load_commands
from quantization.cli.output import set_threads
from quantization.cli.ray_serve import register as ray_commands
from quantization.cli.serving import register as serving_commands
from quantization.cli.study import register as study_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qbert", description="Q-BERT quantized BERT artifacts and serving")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    sub = parser.add_subparsers(dest="command", required=True)
    for register in (
        artifact_commands,
        add_commands,
        serving_commands,
        ray_commands,
        load_commands,
        bench_commands,
        kernel_commands,
        study_commands,
    ):
        register(sub)
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
    set_threads(args.threads)
    return int(args.func(args) or 0)
