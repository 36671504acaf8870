"""Building artifacts from FP32 checkpoints, and evaluating them (the `qbert quantize/build/eval` work)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from quantization.artifact import (
    SCHEMA_VERSION,
    ArtifactError,
    ArtifactSource,
    precision_to_dict,
    read_manifest,
    record_evaluation,
    sha256_file,
    verify_files,
    write_artifact,
)
from quantization.catalog import TaskEntry
from quantization.config import PrecisionConfig, QATConfig
from quantization.evaluate import evaluate, latency_b1_ms
from quantization.quantize import quantize_model
from quantization.runtime import load_model, warm_up
from quantization.structure import embedding_targets, linear_targets
from quantization.tasks import Task, get_task

logger = logging.getLogger(__name__)

# Bump when a change to the quantizers changes what an artifact holds, so `qbert build` rebuilds.
QUANTIZER_VERSION = 1
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


@dataclass
class Checkpoint:
    model: nn.Module
    directory: Path
    location: str
    sha256: str

    @property
    def labels(self) -> list[str]:
        id2label: dict[int, str] = self.model.config.id2label  # type: ignore[union-attr, assignment]
        return [id2label[i] for i in sorted(id2label)]


def _task_model_class(directory: Path, task: str | Task) -> Any:
    """The checkpoint's own task-model class (`quantization.architectures`), once it has the task's head."""
    from quantization.architectures import check_architecture, model_class

    suffix = (get_task(task) if isinstance(task, str) else task).architecture_suffix
    config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
    return model_class(check_architecture(config, suffix))


def checkpoint_sha256(directory: Path) -> str:
    """sha256 over the checkpoint's weight files (one file: that file's own sha256)."""
    files = [directory / name for name in _WEIGHT_FILES if (directory / name).exists()]
    files += sorted(directory.glob("model-*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{directory}: no model.safetensors (pickled checkpoints are not loaded)")
    if len(files) == 1:
        return sha256_file(files[0])
    return hashlib.sha256("".join(sha256_file(f) for f in files).encode()).hexdigest()


def load_checkpoint(location: str, task: str | Task, attn_implementation: str | None = None) -> Checkpoint:
    """An FP32 task model (a built-in task by name, or any task by its kind) from a local folder or, where a hub is
    reachable, a hub id.

    `attn_implementation="eager"` for second-order work: SDPA's CPU kernels have no double backward.
    """
    directory = Path(location)
    if not directory.is_dir():
        from huggingface_hub import snapshot_download  # only for hub ids, never in tests here

        directory = Path(snapshot_download(location, allow_patterns=["*.json", "*.safetensors", "*.txt"]))
    options = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model_class = _task_model_class(directory, task)
    model = model_class.from_pretrained(directory, local_files_only=True, use_safetensors=True, **options)
    model = model.to(torch.float32).eval()
    return Checkpoint(model, directory, location, checkpoint_sha256(directory))


def inputs_sha256(
    checkpoint_sha: str, precision: PrecisionConfig, task: str, task_spec: dict[str, Any] | None = None
) -> str:
    key: dict[str, Any] = {
        "checkpoint": checkpoint_sha,
        "precision": precision_to_dict(precision),
        "task": task,
        "schema": SCHEMA_VERSION,
        "quantizer": QUANTIZER_VERSION,
    }
    if task_spec is not None:  # built-in tasks have none: their artifacts stay up to date
        key["task_spec"] = task_spec
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def is_up_to_date(out_dir: Path, expected_inputs: str) -> bool:
    try:
        manifest = read_manifest(out_dir)
        verify_files(out_dir, manifest)
    except ArtifactError:
        return False
    return manifest.get("inputs_sha256") == expected_inputs


@dataclass
class TrainingSet:
    features: list[Any]  # `tasks.Feature`s with training targets
    examples: int
    split: str
    pad_token_id: int


def training_set(
    checkpoint: Checkpoint, entry: TaskEntry, limit: int | None, max_length: int, seed: int = 0
) -> TrainingSet:
    """Encoded training features from a seeded sample of `limit` examples of the task's training split (all of
    them when None); never its evaluation data."""
    from quantization.train_data import encode_training_set, subsample

    task = entry.make_task()
    assert entry.train_data is not None, entry.train_split()
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint.directory, local_files_only=True)
    examples = subsample(task.read_training_examples(entry.train_data, **entry.train_options()), limit, seed)
    label2id = {label: i for i, label in enumerate(checkpoint.labels)}
    features = encode_training_set(task, tokenizer, examples, max_length, label2id)
    return TrainingSet(features, len(examples), entry.train_split(), tokenizer.pad_token_id or 0)


def qat_finetune(
    checkpoint: Checkpoint,
    entry: TaskEntry,
    precision: PrecisionConfig,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of the checkpoint fine-tuned with `precision`'s fake quantizers (QAT) on the task's training split,
    the FP32 checkpoint as distillation teacher; returns the trained FP32 model and the manifest's `qat` record."""
    import copy

    from quantization.qat import prepare_qat, train_qat, training_record
    from quantization.train_data import training_batches

    config = precision.qat
    if config is None:
        raise ValueError(f"precision {precision.name!r} has no QAT recipe")
    data = training_set(checkpoint, entry, config.max_examples, config.max_length, config.seed)
    student = copy.deepcopy(checkpoint.model)
    if config.start == "gptq":
        _start_from_gptq(checkpoint, entry, precision, student)
    prepared = prepare_qat(student, precision, config)
    batches = training_batches(data.features, config.batch_size, config.seed, data.pad_token_id)
    log = train_qat(prepared, batches, config, teacher=checkpoint.model, on_step=on_step)
    logger.info(
        "%s %s QAT: loss %.4f -> %.4f in %.0f s",
        entry.task,
        precision.name,
        log.first_loss,
        log.final_loss,
        log.seconds,
    )
    return prepared.strip(), training_record(config, log, data.split, data.examples)


def _quantized_linear_values(
    checkpoint: Checkpoint, entry: TaskEntry, model: nn.Module, precision: PrecisionConfig
) -> dict[str, torch.Tensor]:
    """The float32 values `precision` gives `model`'s encoder Linear weights, calibrated as the build calibrates."""
    from quantization.plan import build_plan, needs_calibration

    calibrated = needs_calibration(build_plan(model, precision))
    hessians = calibrate(checkpoint, entry, model, calibrated)[0] if calibrated else None
    state = quantize_model(model, precision, hessians)
    linears = [target.name for target in linear_targets(model)]  # embeddings keep their FP32 values
    return {name: state.quantized[name].dequantize().to(torch.float32) for name in linears if name in state.quantized}


def _start_from_gptq(checkpoint: Checkpoint, entry: TaskEntry, precision: PrecisionConfig, student: nn.Module) -> None:
    """Set `student`'s quantized Linear weights to the values GPTQ rounds them to (`precision`'s widths and ranges,
    GPTQ rounding, calibrated on the training split as PTQ is): QAT's `start = "gptq"`."""
    from quantization.config import Rounding

    assert precision.weights is not None
    weights = dataclasses.replace(precision.weights, rounding=Rounding.GPTQ)
    gptq = dataclasses.replace(precision, weights=weights, embeddings=None, qat=None)
    modules = dict(student.named_modules())
    for name, values in _quantized_linear_values(checkpoint, entry, student, gptq).items():
        modules[name].weight.data = values


def preprocess(
    checkpoint: Checkpoint,
    entry: TaskEntry,
    precision: PrecisionConfig,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """PTQ1.61's preprocessing (`quantization.preprocessing`): the checkpoint quantized once at `precision`
    (calibrated as the build calibrates), low-rank corrections trained on the task's training split, merged; returns
    the model to quantize and the manifest's record of it."""
    import time

    from quantization.preprocessing import restore
    from quantization.train_data import training_batches

    config = precision.preprocessing
    if config is None:
        raise ValueError(f"precision {precision.name!r} has no preprocessing")
    started = time.perf_counter()
    plain = dataclasses.replace(precision, preprocessing=None)
    first_pass = _quantized_linear_values(checkpoint, entry, checkpoint.model, plain)
    training = entry.qat_recipe(QATConfig())
    data = training_set(checkpoint, entry, None, training.max_length, training.seed)
    batches = training_batches(data.features, training.batch_size, training.seed, data.pad_token_id)
    model, log = restore(checkpoint.model, first_pass, config, training, batches, on_step=on_step)
    logger.info("%s %s preprocessing: loss %.4f -> %.4f", entry.task, precision.name, log.first_loss, log.final_loss)
    return model, {
        "config": dataclasses.asdict(config),
        "split": data.split,
        "examples": data.examples,
        "seconds": round(time.perf_counter() - started, 1),
        **dataclasses.asdict(log),
    }


CALIBRATION_SEQUENCES = 128


def calibrate(
    checkpoint: Checkpoint, entry: TaskEntry, model: nn.Module, names: list[str], sequences: int = CALIBRATION_SEQUENCES
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Input Hessians of `names` in `model` on a seeded sample of the task's training split (never its evaluation
    data), and the manifest's record of it."""
    from quantization.calibration import input_hessians
    from quantization.train_data import fixed_batches

    max_length = entry.qat_recipe(QATConfig()).max_length  # the windows the task trains on
    data = training_set(checkpoint, entry, sequences, max_length)
    features = data.features[:sequences]
    hessians = input_hessians(model.eval(), fixed_batches(features, 16, data.pad_token_id), names)
    return hessians, {"split": data.split, "sequences": len(features), "max_length": max_length}


def quantize_checkpoint(
    checkpoint: Checkpoint,
    task: str,
    precision: PrecisionConfig,
    out_dir: Path,
    extra: dict | None = None,
    model: nn.Module | None = None,
    input_hessians: dict[str, torch.Tensor] | None = None,
    task_spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Quantize one checkpoint (or `model`, trained from it) at one precision and write the artifact."""
    model = checkpoint.model if model is None else model
    state = quantize_model(model, precision, input_hessians)
    source = ArtifactSource(
        task=task,
        labels=checkpoint.labels,
        checkpoint=checkpoint.location,
        checkpoint_sha256=checkpoint.sha256,
        checkpoint_dir=checkpoint.directory,
        inputs_sha256=inputs_sha256(checkpoint.sha256, precision, task, task_spec),
        task_spec=task_spec,
    )
    encoder = {f"{t.name}.weight" for t in linear_targets(model)}
    embeddings = {f"{t.name}.weight" for t in embedding_targets(model)}
    return write_artifact(out_dir, state, precision, source, encoder, embeddings, extra)


def evaluate_artifact(
    artifact_dir: Path,
    entry: TaskEntry,
    data: Path | None = None,
    latency_samples: int = 30,
    batch_size: int = 32,
    on_batch: Callable[[int, int], None] | None = None,
    backend: str = "eager",
    attention_precision: str = "float32",
) -> list[dict[str, Any]]:
    """Evaluate an artifact on `data` (default: the catalog's split) and record the results.

    Results are written into the manifest only for the catalog's default split on the reference (eager)
    backend; other backends are measured against it. `attention_precision`: the packed kernels' attention products
    (`ATTENTION_PRECISIONS`; the packed and aot backends).
    """
    task = entry.make_task()
    # compiled before it runs, as the service's models are
    loaded = warm_up(load_model(artifact_dir, backend, attention_precision=attention_precision))
    path = data or entry.data
    if path is None:
        raise ValueError(f"{entry.task}: no evaluation data in its catalog entry; give one (`qbert eval --data FILE`)")
    options = entry.read_options() if data is None else {}
    examples = task.read_examples(path, **options)
    result = evaluate(loaded, task, examples, batch_size=batch_size, on_batch=on_batch)
    latency = latency_b1_ms(loaded, task, [ex.input for ex in examples[:latency_samples]])
    articles = entry.articles
    split = f"{path.name}" + (f" articles [{articles[0]}, {articles[1]})" if options and articles else "")
    date = datetime.now(UTC).date().isoformat()
    rows: list[dict[str, Any]] = [
        {
            "metric": metric,
            "value": result.metrics[metric],
            "split": split,
            "n": result.n,
            "date": date,
            "latency_b1_ms": round(latency, 3),
            "eval_seconds": round(result.seconds, 2),
            "torch_threads": torch.get_num_threads(),
            "backend": loaded.backend,  # the one that ran: a backend that cannot build a model falls back
        }
        for metric in task.metrics
    ]
    if data is None and backend == loaded.backend == "eager":
        record_evaluation(artifact_dir, rows)
    logger.info("%s %s: %s", entry.task, loaded.precision, {r["metric"]: round(r["value"], 4) for r in rows})
    return rows


def build_artifact(
    checkpoint: Checkpoint,
    entry: TaskEntry,
    precision: PrecisionConfig,
    out_dir: Path,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """One artifact as its precision says: QAT first where it has a recipe, GPTQ calibration on the training split
    where its rounding needs it, then packing. Returns the manifest (not yet evaluated)."""
    from quantization.plan import build_plan, needs_calibration

    model, extra = checkpoint.model, {}
    if precision.qat is not None:
        model, record = qat_finetune(checkpoint, entry, precision, on_step=on_step)
        extra = {"qat": True, "training": record}
    if precision.preprocessing is not None:
        model, extra["preprocessing"] = preprocess(checkpoint, entry, precision, on_step=on_step)
    hessians = None
    calibrated = needs_calibration(build_plan(model, precision))
    if calibrated:
        hessians, extra["calibration"] = calibrate(checkpoint, entry, model, calibrated)
    return quantize_checkpoint(
        checkpoint, entry.task, precision, out_dir, extra, model=model, input_hessians=hessians, task_spec=entry.spec
    )
