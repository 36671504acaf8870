"""`qbert bench`: our int8 runtime beside its CPU peers, in one run, interleaved, on the same inputs.

Each round times every (model, runtime, precision) at every shape once (A B C … A B C …), so drifts of the
machine (thermal, other load) spread over all candidates; a sample is the median call time over a short
window. Rows report the median and min–max of the per-round samples. Before any timing, every candidate's
output is compared with PyTorch FP32 on the same inputs (`max_abs_diff`). Memory and load time come from a
fresh process per candidate (RSS after load, and its increase over the same process before loading).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import queue
import shutil
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

from quantization import peers
from quantization.allocation import block_bits_to_layer_bits
from quantization.artifact import TOKENIZER_FILES, WEIGHTS
from quantization.catalog import Catalog, artifacts_dir, plans_dir, read_plan
from quantization.config import (
    ATTENTION_PRECISIONS,
    BACKENDS,
    COMPILED_BACKENDS,
    PACKED_KERNEL_BACKENDS,
    WARMED_BACKENDS,
    PrecisionConfig,
    Rounding,
)
from quantization.runtime.loaded import BackendMismatchError as RefusedError  # a load-time check failed
from quantization.structure import encoder_blocks
from quantization.system import cpu_identity, cpu_kernel_flags, cpu_model_name, resident_bytes

logger = logging.getLogger(__name__)

PEERS = ("torch-fp32", "torch-dynamic-int8", "ort-fp32", "ort-int8", "ov-fp32", "ov-int8")
RUNTIMES = (*PEERS, "qbert")
BERT_BASE = "bert-base-random"  # bert-base shape (12 × 768), random weights: speed does not depend on them
VOCAB_SOURCE_TASK = "sst2"  # MiniLM's uncased WordPiece vocabulary is bert-base-uncased's (30,522 tokens)


@dataclass(frozen=True)
class Shape:
    batch: int
    seq: int

    def __post_init__(self) -> None:
        if self.batch < 1 or self.seq < 2:
            raise ValueError(f"shape needs batch ≥ 1 and seq ≥ 2, got {self.batch}×{self.seq}")

    @property
    def label(self) -> str:
        return f"b{self.batch}x{self.seq}"


@dataclass(frozen=True)
class BenchPlan:
    """What to measure. `models`: catalog tasks' checkpoints by task name, or `bert-base-random`."""

    models: tuple[str, ...]
    shapes: tuple[Shape, ...]
    precisions: tuple[str, ...] = ("w8", "w4g128", "w2g128", "mp23")
    runtimes: tuple[str, ...] = RUNTIMES
    backends: tuple[str, ...] = BACKENDS  # of our runtime
    rounds: int = 5
    sample_seconds: float = 0.25
    threads: int = 2
    memory: bool = True
    # RSS after a first call in the fresh process too, for every runtime; without it, for every runtime but our
    # compiled backend (whose first call compiles its architecture once more per process, tens of seconds: the quick
    # plan cannot afford it). A first call allocates a runtime's work buffers (OpenVINO's take over 100 MB on
    # bert-base), so peers are compared after one: a reading after load alone flatters whoever runs nothing at load.
    memory_after_run: bool = True
    memory_runtimes: tuple[str, ...] = RUNTIMES  # whose fresh-process readings to take (a child each, ~7 s)
    attention_precision: str = ATTENTION_PRECISIONS[0]  # our packed backend's (the service's default)

    def __post_init__(self) -> None:
        unknown = sorted((set(self.runtimes) | set(self.memory_runtimes)) - set(RUNTIMES))
        if unknown:
            raise ValueError(f"unknown runtimes {unknown}; known: {list(RUNTIMES)}")
        if "torch-fp32" not in self.runtimes:
            raise ValueError("torch-fp32 is the reference every output and ratio is checked against")
        if not set(self.backends) <= set(BACKENDS):
            raise ValueError(f"unknown backends {sorted(set(self.backends) - set(BACKENDS))}; known: {BACKENDS}")
        if self.attention_precision not in ATTENTION_PRECISIONS:
            raise ValueError(f"unknown attention precision {self.attention_precision!r}; known: {ATTENTION_PRECISIONS}")
        if self.rounds < 1 or self.sample_seconds <= 0 or self.threads < 1:
            raise ValueError("rounds ≥ 1, sample_seconds > 0 and threads ≥ 1 are required")
        if not self.models or not self.shapes:
            raise ValueError("at least one model and one shape")


FULL_SHAPES = (Shape(1, 32), Shape(1, 128), Shape(1, 384), Shape(8, 128))
# Our backends that serve (the eager reference is checked against, not timed): aot (the default), packed, compiled,
# openvino
FULL = BenchPlan(
    models=(BERT_BASE, "sst2", "ner", "qa"), shapes=FULL_SHAPES, backends=("aot", "packed", "compiled", "openvino")
)
QUICK = BenchPlan(  # the goal's shapes on bert-base and one served model
    models=(BERT_BASE, "sst2"),
    shapes=(Shape(1, 128), Shape(8, 128)),
    precisions=("w8", "w4g128", "w2g128"),
    runtimes=("torch-fp32", "ort-int8", "ov-int8", "qbert"),
    # the default only: the packed backend (the same kernels under torch.compile) compiles each model once more per
    # process, which a cold quick run cannot afford; the full plan times it
    backends=("aot",),
    rounds=4,
    sample_seconds=0.15,
    memory_after_run=False,
    memory_runtimes=("ov-int8", "qbert"),  # the goal's comparison: our RSS against OpenVINO INT8's
)


@dataclass(frozen=True)
class Candidate:
    model: str  # display name: checkpoint folder name, or bert-base-random
    task: str
    runtime: str
    precision: str  # fp32 for torch-fp32 / ort-fp32, int8 for the peers' int8, ours by catalog name
    path: Path  # what loading reads: checkpoint folder, .onnx file or artifact folder
    artifact_bytes: int
    vocab_size: int
    backend: str = ""  # ours: one of BACKENDS

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.model, self.runtime, self.precision, self.backend)


@dataclass
class Row:
    model: str
    runtime: str
    precision: str
    backend: str
    batch: int
    seq: int
    median_ms: float
    min_ms: float
    max_ms: float
    rss_mb: float | None = None  # the memory readings: absent when the run takes none
    rss_model_mb: float | None = None
    rss_after_run_mb: float | None = None  # compiled: includes what compiling the first shape kept
    rss_model_after_run_mb: float | None = None  # the model's own growth, its first call included
    runtime_mb: float | None = None  # ours: the weight bytes the model reports (qbert_model_weight_bytes runtime)
    load_s: float | None = None
    artifact_bytes: int = 0
    max_abs_diff: float = 0.0
    vs_torch_fp32: float | None = None
    vs_ort_int8: float | None = None
    vs_ov_int8: float | None = None
    samples_ms: list[float] = field(default_factory=list)


# ----- loading ---------------------------------------------------------------------------------------


def load_runner(
    candidate: Candidate, threads: int, attention_precision: str = ATTENTION_PRECISIONS[0], warm_up: bool = True
) -> tuple[peers.Runner, int | None]:
    """The candidate's runner, and for ours the runtime weight bytes the model reports (None for peers).
    `attention_precision`: our packed backend's (`ATTENTION_PRECISIONS`). `warm_up`: a compiled backend's model
    compiles its variants now, as the service's does before it serves (False: on its first calls)."""
    from quantization.artifact import read_artifact
    from quantization.build import load_checkpoint
    from quantization.runtime import build_for_backend, warm_up_compiled

    if candidate.runtime in ("torch-fp32", "torch-dynamic-int8"):
        model = load_checkpoint(str(candidate.path), candidate.task).model
        if candidate.runtime == "torch-dynamic-int8":
            model = peers.torch_dynamic_int8(model)
        return peers.torch_runner(model), None
    if candidate.runtime in ("ort-fp32", "ort-int8"):
        return peers.ort_runner(candidate.path, threads), None
    if candidate.runtime == "ov-fp32":
        return peers.ov_runner(candidate.path, threads, inference_precision="f32"), None
    if candidate.runtime == "ov-int8":
        return peers.ov_runner(candidate.path, threads), None
    # the model only: peers load no tokenizer either
    model, runtime_bytes, backend = build_for_backend(
        read_artifact(candidate.path), candidate.backend, attention_precision=attention_precision
    )
    if backend != candidate.backend:
        raise RuntimeError(f"{candidate.path} fell back from {candidate.backend} to {backend}; see the log")
    if warm_up and backend in COMPILED_BACKENDS and not warm_up_compiled(model):
        raise RuntimeError(f"torch.compile did not compile every frame of {candidate.path}; see the log")
    if backend == "aot":  # compiled (or loaded from the package cache) now, warm-up or not: it has no lazy path
        from quantization.runtime.ahead_of_time import AheadOfTimeOptions, compile_ahead

        ahead: Any = compile_ahead(model, AheadOfTimeOptions.from_environment())  # called as the module is
        return peers.torch_runner(ahead), runtime_bytes
    return peers.torch_runner(model), runtime_bytes


def _compile_package(candidate: Candidate, attention_precision: str) -> None:
    """Compile (or find cached) the aot package of one of our candidates, in a worker process; what it loads is
    dropped. A refusal or fallback is left for the run's own load to report."""
    torch.set_num_threads(1)  # its neighbour compiles on the other core
    load_runner(candidate, threads=1, attention_precision=attention_precision, warm_up=False)


def compile_aot_packages(candidates: Sequence[Candidate], threads: int, attention_precision: str) -> None:
    """The aot candidates' packages compiled into the cache before the run loads them, `threads` at a time in fresh
    processes: one compile is one core's work (Python, then a single C++ compiler run), so on two cores two compile
    in the time of one. Cached ones cost a load each."""
    from concurrent.futures import ProcessPoolExecutor

    aot = [c for c in candidates if c.runtime == "qbert" and c.backend == "aot"]
    workers = min(threads, len(aot))
    if workers < 2:  # nothing to overlap: the run's own load compiles them
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = {pool.submit(_compile_package, c, attention_precision): c for c in aot}
        for future, candidate in futures.items():
            try:
                future.result()
            except Exception as exc:  # reported again, and handled, when the run loads it
                key = "/".join(candidate.key)
                logger.info("compiling %s ahead of time failed: %s: %s", key, type(exc).__name__, exc)


def make_inputs(shape: Shape, vocab_size: int, seed: int = 0) -> peers.Inputs:
    """Random ordinary word pieces (ids past the specials), no padding: every runtime sees the same tokens."""
    from quantization.runtime import random_inputs

    generator = torch.Generator().manual_seed(seed + 1000 * shape.batch + shape.seq)
    inputs = random_inputs(shape.batch, shape.seq, vocab_size, generator)
    inputs["input_ids"][:, 0], inputs["input_ids"][:, -1] = 101, 102  # [CLS] … [SEP]
    return inputs


# ----- timing ----------------------------------------------------------------------------------------


def sample_ms(call: Callable[[], Any], seconds: float, min_calls: int = 3) -> float:
    """Median milliseconds per call over a window of at least `seconds` and `min_calls` calls."""
    times: list[float] = []
    window_end = time.perf_counter() + seconds
    while len(times) < min_calls or time.perf_counter() < window_end:
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def interleaved_samples(
    calls: dict[Any, Callable[[], Any]], rounds: int, seconds: float, warmup: int = 2
) -> dict[Any, list[float]]:
    """`rounds` samples per key, taken A B C … A B C … after `warmup` unrecorded calls each."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    samples: dict[Any, list[float]] = {key: [] for key in calls}
    for _ in range(rounds):
        for key, call in calls.items():
            samples[key].append(sample_ms(call, seconds))
    return samples


# ----- memory in a fresh process ---------------------------------------------------------------------


def _load_in_child(candidate: Candidate, threads: int, run: bool, results: Any) -> None:
    torch.set_num_threads(threads)
    # The code of every runtime is imported before the baseline reading, so the increase is the model's own
    # (importing transformers' BERT modelling alone costs ~87 MB, once per process however many models).
    import onnxruntime  # noqa: F401
    from transformers.models.bert import modeling_bert  # noqa: F401

    import quantization.build  # noqa: F401
    import quantization.runtime  # noqa: F401

    if candidate.runtime.startswith("ov-") or candidate.backend == "openvino":
        _load_openvino_libraries()
    if candidate.backend in PACKED_KERNEL_BACKENDS:
        from quantization.runtime.packed_kernels import unavailable_reason

        unavailable_reason()  # our kernels' library, loaded once per process whatever the model
    if candidate.backend in WARMED_BACKENDS:
        _load_torch_compiler()
    before = resident_bytes()
    started = time.perf_counter()
    try:
        runner, _ = load_runner(candidate, threads, warm_up=False)  # a compiled graph's memory counts after a run
    except RefusedError as exc:
        results.put({"refused": f"{type(exc).__name__}: {exc}"})
        return
    load_s = time.perf_counter() - started
    after_load = resident_bytes()
    reading = {"rss_before": before, "rss_after_load": after_load}
    if run:
        runner(make_inputs(Shape(1, 16), candidate.vocab_size))
        reading["rss_after_run"] = resident_bytes()
    results.put(reading | {"load_s": load_s})


def _load_openvino_libraries() -> None:
    """Import OpenVINO and load its PyTorch frontend and CPU plugin (once per process, whatever the model) by
    converting and compiling a one-layer model, so that a reading after it is the model's own."""
    import openvino as ov

    converted = ov.convert_model(torch.nn.Linear(4, 4).eval(), example_input=torch.ones(1, 4))
    ov.Core().compile_model(converted, "CPU").create_infer_request().infer({0: np.ones((1, 4), np.float32)})


def _load_torch_compiler() -> None:
    """Load Dynamo, Inductor and their generated-code runtime (once per process, whatever the model) by compiling
    and running a LayerNorm-Linear-GELU block with the compiled backends' settings: the counterpart of
    `_load_openvino_libraries`, so that a reading after it is the model's own compiled graph, not torch's compiler."""
    from quantization.runtime.compiling import compile_model

    block = compile_model(torch.nn.Sequential(torch.nn.LayerNorm(4), torch.nn.Linear(4, 4), torch.nn.GELU()).eval())
    with torch.inference_mode():
        for batch in (1, 2):
            block(torch.ones(batch, 3, 4))


def _reading_of(process: BaseProcess, results: Any, timeout_s: float) -> dict:
    """The child's reading; a child that dies first (a crash in a native library) is reported with its exit code
    at once, not after the whole timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return results.get(timeout=1.0)
        except queue.Empty:
            if not process.is_alive():
                process.join(5)
                raise RuntimeError(
                    f"the fresh process measuring memory died with exit code {process.exitcode}"
                ) from None
    raise TimeoutError(f"no memory reading from the fresh process in {timeout_s:.0f} s")


def memory_in_fresh_process(candidate: Candidate, threads: int, run: bool = True) -> dict[str, float | None]:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=_load_in_child, args=(candidate, threads, run, results))
    process.start()
    try:
        reading = _reading_of(process, results, timeout_s=600)
    finally:
        process.join(60)
    if "refused" in reading:
        return {"refused": reading["refused"]}
    mb = 1e6  # MB, as every size in this project
    return {
        "rss_mb": round(reading["rss_after_load"] / mb, 1),
        "rss_model_mb": round((reading["rss_after_load"] - reading["rss_before"]) / mb, 1),
        "rss_after_run_mb": round(reading["rss_after_run"] / mb, 1) if run else None,
        "rss_model_after_run_mb": round((reading["rss_after_run"] - reading["rss_before"]) / mb, 1) if run else None,
        "load_s": round(reading["load_s"], 3),
    }


# ----- preparing the candidates (files in a cache folder) --------------------------------------------


def bert_base_checkpoint(cache: Path, catalog: Catalog) -> Path:
    """A random bert-base-shaped sequence classifier saved as a normal Hugging Face folder (seeded)."""
    out = cache / BERT_BASE
    if (out / "model.safetensors").exists():
        return out
    torch.manual_seed(0)
    config = transformers.BertConfig()
    config.num_labels = 2
    model = transformers.BertForSequenceClassification(config).eval()
    model.config.id2label, model.config.label2id = {0: "negative", 1: "positive"}, {"negative": 0, "positive": 1}
    model.save_pretrained(out)
    vocab_source = Path(catalog.task(VOCAB_SOURCE_TASK).checkpoint_location())
    for name in TOKENIZER_FILES:
        if (vocab_source / name).exists():
            shutil.copyfile(vocab_source / name, out / name)
    return out


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size + (path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else 0)
    return sum(p.stat().st_size for p in path.iterdir() if p.suffix in {".safetensors", ".onnx", ".data"})


def prepare_candidates(plan: BenchPlan, catalog: Catalog, cache: Path) -> list[Candidate]:
    """Checkpoints, ONNX exports and our artifacts for every candidate of the plan (reused when present)."""
    from quantization.build import inputs_sha256, is_up_to_date, load_checkpoint, quantize_checkpoint

    candidates: list[Candidate] = []
    for name in plan.models:
        if name == BERT_BASE:
            task, directory = "sst2", bert_base_checkpoint(cache, catalog)
        else:
            task, directory = name, Path(catalog.task(name).checkpoint_location())
        checkpoint = load_checkpoint(str(directory), task)
        model_name = directory.name
        vocab: int = checkpoint.model.config.vocab_size  # type: ignore[union-attr, assignment]
        work = cache / model_name / checkpoint.sha256[:12]
        work.mkdir(parents=True, exist_ok=True)
        weights = _size(directory)
        add = candidates.append
        for runtime in ("torch-fp32", "torch-dynamic-int8"):
            if runtime in plan.runtimes:
                label = "fp32" if runtime == "torch-fp32" else "int8"
                add(Candidate(model_name, task, runtime, label, directory, weights, vocab))
        if {"ort-fp32", "ort-int8"} & set(plan.runtimes):
            fp32_file = work / "model.onnx"
            if not fp32_file.exists():
                logger.info("exporting %s to ONNX", model_name)
                peers.export_onnx(checkpoint.model, fp32_file, make_inputs(Shape(2, 16), vocab))
            int8_file = work / "model.int8.onnx"
            if "ort-int8" in plan.runtimes and not int8_file.exists():
                logger.info("quantizing %s with onnxruntime", model_name)
                peers.quantize_onnx_int8(fp32_file, int8_file)
            if "ort-fp32" in plan.runtimes:
                add(Candidate(model_name, task, "ort-fp32", "fp32", fp32_file, _size(fp32_file), vocab))
            if "ort-int8" in plan.runtimes:
                add(Candidate(model_name, task, "ort-int8", "int8", int8_file, _size(int8_file), vocab))
        if {"ov-fp32", "ov-int8"} & set(plan.runtimes):
            fp32_file, int8_file = work / "openvino.xml", work / "openvino.int8.xml"
            if not fp32_file.exists():
                logger.info("converting %s to OpenVINO", model_name)
                peers.export_openvino(checkpoint.model, fp32_file, make_inputs(Shape(2, 16), vocab))
            if "ov-int8" in plan.runtimes and not int8_file.exists():
                logger.info("quantizing %s with NNCF (%d calibration inputs)", model_name, peers.CALIBRATION_INPUTS)
                calibration = calibration_inputs(name, checkpoint, catalog, vocab)
                peers.quantize_openvino_int8(fp32_file, int8_file, calibration)
            if "ov-fp32" in plan.runtimes:
                add(Candidate(model_name, task, "ov-fp32", "fp32", fp32_file, _size(fp32_file), vocab))
            if "ov-int8" in plan.runtimes:
                add(Candidate(model_name, task, "ov-int8", "int8", int8_file, _size(int8_file), vocab))
        if "qbert" in plan.runtimes:
            for precision_name in plan.precisions:
                # The catalog's built artifact when it is of this very checkpoint and precision, else our own.
                built, own = artifacts_dir() / task / precision_name, work / precision_name
                artifact = own
                if name != BERT_BASE:
                    precision = catalog.precision_for(task, precision_name)
                    if is_up_to_date(built, inputs_sha256(checkpoint.sha256, precision, task)):
                        artifact = built
                if artifact is own:
                    precision = _own_copy(catalog, precision_name, task, checkpoint.model)
                    if not is_up_to_date(own, inputs_sha256(checkpoint.sha256, precision, task)):
                        logger.info("quantizing %s at %s", model_name, precision_name)
                        quantize_checkpoint(checkpoint, task, precision, own)
                packed = _size(artifact / WEIGHTS)
                for backend in plan.backends:
                    add(Candidate(model_name, task, "qbert", precision_name, artifact, packed, vocab, backend))
    return candidates


CALIBRATION_LENGTH = 128


def calibration_inputs(name: str, checkpoint: Any, catalog: Catalog, vocab_size: int) -> list[peers.Inputs]:
    """NNCF's calibration inputs: sequences of the task's training split (never its evaluation data), or random
    ordinary word pieces for the random bert-base model, which has no task data."""
    from quantization.build import training_set
    from quantization.feature_tensors import collate_training, model_inputs

    count = peers.CALIBRATION_INPUTS
    if name == BERT_BASE:
        return [make_inputs(Shape(1, CALIBRATION_LENGTH), vocab_size, seed=i) for i in range(count)]
    data = training_set(checkpoint, catalog.task(name), count, CALIBRATION_LENGTH)
    return [model_inputs(collate_training([feature], data.pad_token_id)) for feature in data.features[:count]]


def _own_copy(catalog: Catalog, name: str, task: str, model: torch.nn.Module) -> PrecisionConfig:
    """The bench's own copy of a catalog precision: post-training, codes rounded to nearest, since GPTQ and QAT
    need task data (a random bert-base has none) and speed does not depend on which codes a matrix holds.

    A mixed-precision plan keeps the task's plan's widths, the higher one on the first half of the model's
    blocks (where our baselines' Hessians found the most sensitive ones): the task's plan names another
    model's layers when the model is bert-base, and which blocks get which width does not change the speed.
    """
    precision = catalog.precision(name)
    if precision.weights is None:
        return precision
    changes: dict[str, Any] = {
        "weights": dataclasses.replace(precision.weights, rounding=Rounding.NEAREST),
        "qat": None,
    }
    plan = catalog.plans.get(name)
    if plan is not None:
        widths = sorted(set(read_plan(plans_dir() / task / f"{plan}.json").values()))
        blocks = [block.name for block in encoder_blocks(model)]
        favoured = set(blocks[: len(blocks) // 2])
        block_bits = {block: widths[-1] if block in favoured else widths[0] for block in blocks}
        changes["layer_bits"] = block_bits_to_layer_bits(model, block_bits)
    return dataclasses.replace(precision, **changes)


# ----- the run -----------------------------------------------------------------------------------------


def run_bench(plan: BenchPlan, candidates: Sequence[Candidate], progress: Callable[[str], None] = logger.info) -> dict:
    torch.set_num_threads(plan.threads)
    # Every candidate is loaded here before the fresh processes' readings: an aot model's package is then in the
    # cache (compiled by `compile_aot_packages`' workers), and a reading's process loads it as a served worker does
    # (compiling it there would count the compiler's memory as the model's).
    progress("compiling the aot packages")
    compile_aot_packages(candidates, plan.threads, plan.attention_precision)
    progress("loading every candidate")
    refused: dict[tuple[str, str, str, str], str] = {}
    loaded = {}
    for candidate in candidates:
        try:
            loaded[candidate.key] = load_runner(candidate, plan.threads, plan.attention_precision)
        except RefusedError as exc:  # a backend's load-time check against the reference failed: not timed
            refused[candidate.key] = f"{type(exc).__name__}: {exc}"
    memory = {}
    if plan.memory:
        for candidate in (c for c in candidates if c.runtime in plan.memory_runtimes and c.key not in refused):
            progress(f"memory: {'/'.join(candidate.key)} in a fresh process")
            run = plan.memory_after_run or candidate.backend not in COMPILED_BACKENDS
            reading = memory_in_fresh_process(candidate, plan.threads, run)
            if "refused" in reading:
                refused[candidate.key] = str(reading["refused"])
                loaded.pop(candidate.key, None)
            else:
                memory[candidate.key] = reading
    for key, reason in refused.items():
        progress(f"not timed: {'/'.join(key)}: {reason}")
    runners = {key: runner for key, (runner, _) in loaded.items()}
    runtime_mb = {key: round(size / 1e6, 2) for key, (_, size) in loaded.items() if size is not None}
    by_key = {c.key: c for c in candidates}
    diffs, calls = {}, {}
    vocab = {c.model: c.vocab_size for c in candidates}
    for shape in plan.shapes:
        for model in vocab:
            inputs = make_inputs(shape, vocab[model])
            reference = runners[(model, "torch-fp32", "fp32", "")](inputs)
            for key, runner in runners.items():
                if key[0] == model:
                    diffs[(key, shape)] = float(np.max(np.abs(runner(inputs) - reference)))
                    calls[(key, shape)] = _bind(runner, inputs)
    progress(f"timing {len(calls)} configurations × {plan.rounds} interleaved rounds")
    samples = interleaved_samples(calls, plan.rounds, plan.sample_seconds)
    rows = []
    for (key, shape), values in samples.items():
        candidate = by_key[key]
        rows.append(
            Row(
                model=candidate.model,
                runtime=candidate.runtime,
                precision=candidate.precision,
                backend=candidate.backend,
                batch=shape.batch,
                seq=shape.seq,
                median_ms=round(statistics.median(values), 3),
                min_ms=round(min(values), 3),
                max_ms=round(max(values), 3),
                **memory.get(key, {}),  # rss_mb, rss_model_mb, rss_after_run_mb, load_s
                artifact_bytes=candidate.artifact_bytes,
                runtime_mb=runtime_mb.get(key),
                max_abs_diff=round(diffs[(key, shape)], 6),
                samples_ms=[round(v, 3) for v in values],
            )
        )
    add_ratios(rows)
    return {
        "plan": _plan_dict(plan),
        "torch": torch.__version__,
        "openvino": _version("openvino"),
        "onnxruntime": _version("onnxruntime"),
        # ov-int8 runs its unquantized ops in this (OpenVINO's default: bf16 where the CPU has it); ov-fp32 in f32
        "openvino_int8_float_precision": peers.openvino_default_inference_precision(),
        # the packed backend's attention products as run (bf16 asked on a CPU without it runs float32)
        "packed_attention_precision": _attention_precision_run(plan.attention_precision),
        "cpu": {
            "model": cpu_model_name(),
            "identity": cpu_identity(),
            "flags": cpu_kernel_flags(),
            "oneDNN int8 usable": _onednn_usable(),
        },
        "rows": [asdict(r) for r in rows],
        "refused": [{"candidate": "/".join(key), "reason": reason} for key, reason in refused.items()],
    }


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _onednn_usable() -> bool:
    from quantization.runtime import onednn_int8_is_usable

    return onednn_int8_is_usable()


def _attention_precision_run(asked: str) -> str:
    from quantization.runtime.loading import attention_products

    return attention_products(asked)


def _bind(runner: peers.Runner, inputs: peers.Inputs) -> Callable[[], Any]:
    return lambda: runner(inputs)


RATIO_BASES = (("vs_ov_int8", "ov-int8"), ("vs_ort_int8", "ort-int8"), ("vs_torch_fp32", "torch-fp32"))
RATIO_LABELS = {"vs_ov_int8": "× OV int8", "vs_ort_int8": "× ORT int8", "vs_torch_fp32": "× torch fp32"}


def add_ratios(rows: Iterable[Row]) -> None:
    """Speed-ups (throughput ratios) against PyTorch FP32, ONNX Runtime int8 and OpenVINO INT8 at the same model
    and shape."""
    rows = list(rows)
    median = {(r.model, r.runtime, r.batch, r.seq): r.median_ms for r in rows if r.runtime in PEERS}
    for row in rows:
        for attribute, runtime in RATIO_BASES:
            base = median.get((row.model, runtime, row.batch, row.seq))
            setattr(row, attribute, round(base / row.median_ms, 3) if base else None)


def _plan_dict(plan: BenchPlan) -> dict:
    out = asdict(plan)
    out["shapes"] = [s.label for s in plan.shapes]
    return out


def _ratio_columns(rows: list[dict]) -> list[str]:
    """The ratio columns whose base runtime was measured in this run."""
    measured = {r["runtime"] for r in rows}
    return [attribute for attribute, runtime in RATIO_BASES if runtime in measured]


def format_table(result: dict) -> str:
    """Markdown: one table per model; a column group per shape (median ms and the throughput ratios)."""
    rows = result["rows"]
    shapes = list(dict.fromkeys((r["batch"], r["seq"]) for r in rows))
    ratios = _ratio_columns(rows)
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        header = ["runtime", "precision"]
        for batch, seq in shapes:
            header += [f"b{batch}×{seq} ms", *(RATIO_LABELS[a] for a in ratios)]
        header += [
            "RSS MB after load (model's own)",
            "RSS MB after 1st run (model's own)",
            "runtime weights MB",
            "load s",
            "file MB",
            "max |Δ| vs fp32",
        ]
        lines += [f"**{model}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for runtime, precision, backend in dict.fromkeys((r["runtime"], r["precision"], r["backend"]) for r in mine):
            cells = [f"{runtime} ({backend})" if backend else runtime, precision]
            same = [r for r in mine if (r["runtime"], r["precision"], r["backend"]) == (runtime, precision, backend)]
            for batch, seq in shapes:
                row = next((r for r in same if (r["batch"], r["seq"]) == (batch, seq)), None)
                if row is None:
                    cells += [""] * (1 + len(ratios))
                    continue
                cells.append(f"{row['median_ms']:.1f} ({row['min_ms']:.1f}–{row['max_ms']:.1f})")
                cells += [_ratio(row.get(a)) for a in ratios]
            first = same[0]
            rss = f"{first['rss_mb']:.0f} ({first['rss_model_mb']:.0f})" if first["rss_mb"] is not None else ""
            after_run, own_after_run = first.get("rss_after_run_mb"), first.get("rss_model_after_run_mb")
            runtime_mb = first.get("runtime_mb")
            cells += [
                rss,
                f"{after_run:.0f} ({own_after_run:.0f})" if after_run is not None and own_after_run is not None else "",
                f"{runtime_mb:.1f}" if runtime_mb is not None else "",
                f"{first['load_s']:.2f}" if first["load_s"] is not None else "",
                f"{first['artifact_bytes'] / 1e6:.1f}",
                f"{max(r['max_abs_diff'] for r in same):.2g}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    for refused in result.get("refused", []):  # a backend's load-time check against the reference failed
        lines.append(f"Not timed: {refused['candidate']}: {refused['reason']}")
    return "\n".join(lines)


def headline(result: dict, model: str = BERT_BASE) -> list[str]:
    """The issue's goals on one model: each backend of ours (slowest to fastest precision) against the peers,
    and the RSS of a loaded model per precision against OpenVINO INT8's and ONNX Runtime int8's."""
    rows = [r for r in result["rows"] if r["model"] == model]
    names = {"vs_ov_int8": "OpenVINO INT8", "vs_ort_int8": "ONNX Runtime int8", "vs_torch_fp32": "PyTorch FP32"}
    lines = []
    for batch, seq in dict.fromkeys((r["batch"], r["seq"]) for r in rows):
        at_shape = [r for r in rows if (r["batch"], r["seq"]) == (batch, seq)]
        for backend in dict.fromkeys(r["backend"] for r in at_shape if r["runtime"] == "qbert"):
            ours = [r for r in at_shape if r["runtime"] == "qbert" and r["backend"] == backend]
            parts = []
            for attribute in _ratio_columns(at_shape):
                values = [r[attribute] for r in ours if r.get(attribute)]
                if values:
                    parts.append(f"{min(values):.2f}–{max(values):.2f}× {names[attribute]}")
            ms = [r["median_ms"] for r in ours]
            lines.append(
                f"{model} b{batch}×{seq}: qbert {backend} ({', '.join(r['precision'] for r in ours)}) "
                f"{min(ms):.1f}–{max(ms):.1f} ms = " + ", ".join(parts)
            )
    for reading, what in (("rss_model_mb", "a loaded model"), ("rss_model_after_run_mb", "a model after a first call")):
        readings: dict[tuple[str, str], dict[str, float]] = {}
        for r in rows:
            if r.get(reading) is not None:
                readings.setdefault((r["runtime"], r["backend"]), {})[r["precision"]] = r[reading]
        for (runtime, backend), by_precision in readings.items():
            label = f"qbert {backend}" if runtime == "qbert" else runtime
            sizes = ", ".join(f"{p} {mb:.0f}" for p, mb in by_precision.items())
            lines.append(f"{model} RSS growth of {what}, MB: {label}: {sizes}")
    return lines


def bench_markdown(result: dict) -> str:
    """The speed section of models/RESULTS.md."""
    plan = result["plan"]
    cpu = result.get("cpu", {})
    identity = f" ({cpu['identity']})" if cpu.get("identity") else ""  # absent in JSON from before it was recorded
    intro = [
        "## Speed and memory beside PyTorch, ONNX Runtime and OpenVINO (`make bench`)",
        "",
        f"One run, {plan['rounds']} interleaved rounds, {plan['threads']} threads, torch {result['torch']}, "
        f"OpenVINO {result.get('openvino')}, ONNX Runtime {result.get('onnxruntime')}; CPU {cpu.get('model', '?')}"
        f"{identity} with {', '.join(cpu.get('flags', [])) or 'none of the int8/bf16 kernel flags'}"
        f" (oneDNN int8 GEMM usable: {cpu.get('oneDNN int8 usable', cpu.get('oneDNN int8 exact'))}; the packed "
        f"backend's attention products in {result.get('packed_attention_precision', 'float32')}). "
        "Median ms (min–max over rounds) and throughput ratios against OpenVINO INT8 (NNCF, `ModelType.TRANSFORMER`, "
        "64 calibration inputs from the training split; its unquantized ops in OpenVINO's default precision here, "
        f"{result.get('openvino_int8_float_precision', '?')}), ONNX Runtime's dynamic int8 and PyTorch FP32 at the "
        "same model and shape. RSS: a fresh process per runtime, after load (in brackets: the increase over the same "
        "process with every runtime's code, OpenVINO's plugin included, loaded) and after one forward pass. "
        '`runtime weights MB`: the loaded model\'s weight bytes as `qbert_model_weight_bytes{kind="runtime"}` '
        "reports them. `max |Δ|`: largest logit difference from PyTorch FP32 on the timed inputs. The bert-base "
        "model has random weights (speed does not depend on them).",
        "",
        *[f"- {line}" for line in headline(result)],
        "",
    ]
    return "\n".join(intro) + "\n" + format_table(result)


def _ratio(value: float | None) -> str:
    return f"{value:.2f}×" if value else ""
