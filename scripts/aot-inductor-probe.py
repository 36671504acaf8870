"""What compiling our packed models ahead of time (AOTInductor) would save per call, before it becomes a backend.

In one process and interleaved (median of per-round medians): OpenVINO INT8, our `packed` backend as served
(torch.compile, warmed up, skipping guards), and the same eager model exported with `torch.export` (batch and
sequence dynamic) and compiled by AOTInductor into a package run from C++: no Dynamo frame, guards or Python
wrappers per call. Outputs are checked equal to the served model's first.

    .venv/bin/python scripts/aot-inductor-probe.py [--model sst2|ner|qa|bert-base-random] [--precision w8]
        [--shapes 1x16 1x32 1x128 8x128] [--rounds 8] [--cache models/cache/bench]

A study, not a runtime path: the package embeds the model's weights (one compile per model, tens of seconds), and
the service's memory accounting, load check and fallbacks do not know it yet.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from quantization import bench, peers
from quantization.architectures import INPUT_NAMES
from quantization.artifact import read_artifact
from quantization.catalog import load_catalog
from quantization.runtime import build_for_backend, warm_up_compiled
from quantization.runtime.torch_internals import original_module


def compile_ahead(model: torch.nn.Module, vocab_size: int, longest: int, package: Path) -> Any:
    batch, seq = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("seq", min=2, max=longest)
    example = bench.make_inputs(bench.Shape(2, 32), vocab_size)
    with torch.no_grad():
        exported = torch.export.export(
            peers.FirstOutput(model).eval(),
            (),
            {name: example[name] for name in INPUT_NAMES},
            dynamic_shapes={name: {0: batch, 1: seq} for name in INPUT_NAMES},
            strict=False,
        )
    return torch._inductor.aoti_load_package(
        torch._inductor.aoti_compile_and_package(exported, package_path=str(package))
    )


def compare(shape: bench.Shape, args: argparse.Namespace, ov_runner: Any, served: Any, ahead: Any, vocab: int) -> str:
    """One shape's line: medians of per-round medians, interleaved, and whether the outputs are equal."""
    inputs = bench.make_inputs(shape, vocab)
    keyword = {name: inputs[name] for name in INPUT_NAMES}

    def call_ahead() -> Any:
        with torch.inference_mode():
            return ahead(**keyword)

    with torch.inference_mode():
        ahead_output = call_ahead()  # the runner returns the graph's outputs as a list
        same = torch.equal(served(**inputs)[0], ahead_output[0] if isinstance(ahead_output, list) else ahead_output)
    served_runner = peers.torch_runner(served)
    calls = {"ov-int8": lambda: ov_runner(inputs), "packed": lambda: served_runner(inputs), "aot": call_ahead}
    rounds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.rounds):
        for name, call in calls.items():
            rounds[name].append(bench.sample_ms(call, 0.3))
    ms = {name: statistics.median(values) for name, values in rounds.items()}
    return (
        f"{args.model} {args.precision} {shape.label}: OV INT8 {ms['ov-int8']:.2f} ms; packed {ms['packed']:.2f} ms"
        f" ({ms['ov-int8'] / ms['packed']:.3f}x OV); AOTInductor {ms['aot']:.2f} ms"
        f" ({ms['ov-int8'] / ms['aot']:.3f}x OV); outputs equal: {same}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="sst2", help="a catalog task or bert-base-random")
    parser.add_argument("--precision", default="w8")
    parser.add_argument("--shapes", nargs="+", default=["1x16", "1x32", "1x128", "8x128"])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--cache", default="models/cache/bench", help="the bench's exports and quantized copies")
    args = parser.parse_args()
    torch.set_num_threads(2)
    shapes = tuple(bench.Shape(*map(int, label.split("x"))) for label in args.shapes)
    plan = bench.BenchPlan(
        models=(args.model,),
        shapes=shapes,
        precisions=(args.precision,),
        runtimes=("torch-fp32", "ov-int8", "qbert"),
        backends=("packed",),
    )
    candidates = bench.prepare_candidates(plan, load_catalog(), Path(args.cache))
    ov = next(c for c in candidates if c.runtime == "ov-int8")
    ours = next(c for c in candidates if c.runtime == "qbert")
    ov_runner, _ = bench.load_runner(ov, 2)
    served, _, _ = build_for_backend(read_artifact(ours.path), "packed")
    if not warm_up_compiled(served):
        sys.exit("the packed model did not compile")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:  # the package's files stay while its runner runs
        ahead = compile_ahead(
            original_module(served.compiled), ours.vocab_size, served.longest_sequence, Path(folder) / "model.pt2"
        )
        sys.stdout.write(f"AOTInductor export and compile: {time.perf_counter() - started:.0f} s\n")
        for shape in shapes:
            sys.stdout.write(compare(shape, args, ov_runner, served, ahead, ours.vocab_size) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
