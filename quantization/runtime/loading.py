"""Loading an artifact: its inference model on the configured backend, with its tokenizer and what it costs; the
reference (eager) backend wherever another cannot run it."""

from __future__ import annotations

import dataclasses
import logging
import time
import typing
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from quantization.artifact import Artifact, read_artifact
from quantization.config import ATTENTION_PRECISIONS, BACKENDS, PACKED_KERNEL_BACKENDS, WARMED_BACKENDS
from quantization.runtime.building import build_model
from quantization.runtime.compiling import compile_model
from quantization.runtime.fused_encoder_layer import FusedEncoder, FusedEncoderLayer
from quantization.runtime.loaded import BackendMismatchError, LoadedModel, check_inputs
from quantization.runtime.modules import StackedQKVSelfAttention
from quantization.runtime.torch_internals import InternalsChangedError
from quantization.system import release_free_heap

logger = logging.getLogger(__name__)


def _build_openvino(artifact: Artifact, activation_group_size: int | None) -> tuple[Any, int] | None:
    """The openvino backend's model of an artifact, or None (logged why) where OpenVINO cannot build it.

    A model that builds but disagrees with its reference raises `BackendMismatchError`: it is refused, not served.
    """
    from quantization.runtime.openvino_backend import BackendUnavailableError, OpenVinoOptions, convert_artifact

    config = transformers.AutoConfig.from_pretrained(artifact.path, local_files_only=True)
    options = OpenVinoOptions(threads=torch.get_num_threads())
    if activation_group_size is not None:
        options = dataclasses.replace(options, dynamic_quantization_group_size=activation_group_size)
    try:
        converted = convert_artifact(artifact, options, check_inputs(config.vocab_size))
    except BackendUnavailableError as exc:
        logger.warning(
            "openvino backend cannot load %s (%s); it runs on the reference (eager) backend", artifact.path, exc
        )
        return None
    release_free_heap()  # the conversion's torch model and graph copies
    return converted.model, converted.runtime_bytes


# The packed model is checked layer by layer: each module it replaced (each quantized Linear, each attention block,
# each fused intermediate block) is run on the inputs its reference twin saw while the reference (eager) model ran
# the check input, and must give the reference's outputs within `rtol · max |reference| + atol`. Whole-model outputs
# are no test: where a float32 reordering moves one token's activation across an 8-bit rounding boundary, that
# change travels through the later blocks, on a 12-block model as far as activation rounding itself moves them.
# Layer by layer, the same formula with exact integer sums agrees to ~1e-6; a wrong code, zero point or scale
# moves a layer's outputs by percents. Whole encoder layers run as one kernel call (`FusedEncoderLayer`, `FusedEncoder`)
# are checked against their own parts run one by one, each of which the reference has checked before it: between the
# reference and a whole layer, activation rounding moves values as it does between whole models.
PACKED_RTOL, PACKED_ATOL = 1e-4, 1e-5
# An attention block whose products take bf16 or int16 operands is checked twice: with float32 operands at the
# tolerance above (its codes, scales and kernel), then as it will run, within its operands' rounding: bf16's 8 bits
# of mantissa (~3e-3 of the largest output on random inputs), int16's 12 to 15 bits of each row's or column's
# largest value (~6e-4).
LOW_PRECISION_ATTENTION_RTOL = {"bf16": 2e-2, "int16": 5e-3}


def _replaced_modules(reference: nn.Module, model: nn.Module) -> list[str]:
    """Names of the modules the packed model computes otherwise than the reference: those of another class at the
    same name, and the stacked attention blocks (the same class, our attention kernel inside). A replaced module's
    replaced descendants come before it, so that a check names the innermost module that differs."""
    ours = dict(model.named_modules())
    replaced = [
        name
        for name, module in reference.named_modules()
        if name in ours
        and name
        and (type(ours[name]) is not type(module) or isinstance(module, StackedQKVSelfAttention))
    ]
    children_first: list[str] = []
    open_ancestors: list[str] = []
    for name in replaced:  # in pre-order: an ancestor is closed once a name outside it comes
        while open_ancestors and not name.startswith(open_ancestors[-1] + "."):
            children_first.append(open_ancestors.pop())
        open_ancestors.append(name)
    return children_first + open_ancestors[::-1]


def _first_tensor(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, transformers.utils.ModelOutput)) else output


def check_layers(artifact: Artifact, reference: nn.Module, model: nn.Module, inputs: dict[str, torch.Tensor]) -> None:
    """Raise `BackendMismatchError` naming the first replaced module whose outputs, on the inputs its reference twin
    saw, differ from the twin's beyond `PACKED_RTOL`/`PACKED_ATOL`."""
    names = _replaced_modules(reference, model)
    seen: dict[str, tuple[tuple, dict, Any]] = {}
    modules = dict(reference.named_modules())
    hooks = [
        modules[name].register_forward_hook(
            lambda _m, args, kwargs, out, name=name: seen.__setitem__(name, (args, kwargs, out)), with_kwargs=True
        )
        for name in names
    ]
    try:
        with torch.inference_mode():
            reference(**inputs)
    finally:
        for hook in hooks:
            hook.remove()
    ours = dict(model.named_modules())
    with torch.inference_mode():
        for name in names:
            args, kwargs, out = seen[name]
            want, module = _first_tensor(out), ours[name]
            products = module.products if isinstance(module, StackedQKVSelfAttention) else "float32"
            checks = [("float32", PACKED_RTOL)]
            if products != "float32":
                checks.append((products, LOW_PRECISION_ATTENTION_RTOL[products]))
            twin = "reference"
            if isinstance(module, (FusedEncoderLayer, FusedEncoder)):  # float32 checks only: not an attention block
                want, twin = _first_tensor(module.step_by_step(*args, **kwargs)), "its parts"
            for checked, rtol in checks:
                if isinstance(module, StackedQKVSelfAttention):
                    module.products = checked
                got = _first_tensor(module(*args, **kwargs))
                diff = float((got - want).abs().max())
                limit = PACKED_ATOL + rtol * float(want.abs().max())
                if not diff <= limit:  # also refuses NaN
                    raise BackendMismatchError(
                        f"{artifact.path}: the packed model's {name}"
                        f"{f' ({checked} attention)' if checked != 'float32' else ''} differs from the {twin} by "
                        f"{diff:.3g} (limit {limit:.3g}); refused"
                    )


def attention_products(precision: str) -> str:
    """The operands the packed backend's attention products take here when `precision` (`ATTENTION_PRECISIONS`) is
    asked: "bf16" only on a CPU with AVX-512 BF16 (else "float32"); "int16" and "float32" wherever the kernels run
    (they need AVX-512 VNNI)."""
    from quantization.runtime.packed_kernels import attention_bf16_supported

    if precision not in ATTENTION_PRECISIONS:
        raise ValueError(f"unknown attention precision {precision!r}; known: {list(ATTENTION_PRECISIONS)}")
    return "float32" if precision == "bf16" and not attention_bf16_supported() else precision


def set_attention_precision(model: nn.Module, precision: str) -> str:
    """Set the packed model's attention products to `precision` (`ATTENTION_PRECISIONS`); returns the operands they
    take (`attention_products`). "bf16" where the CPU lacks AVX-512 BF16 runs float32 (logged)."""
    products = attention_products(precision)
    if products != precision:
        logger.warning("the CPU has no AVX-512 BF16: attention runs in float32")
    for module in model.modules():
        if isinstance(module, StackedQKVSelfAttention):
            module.products = products
    return products


def _build_packed(artifact: Artifact, attention_precision: str, compile: bool = True) -> tuple[Any, int] | None:
    """The packed backend's model of an artifact (compiled lazily; `compile=False`: eager, as the aot backend
    compiles it at warm-up), or None (logged why) where the packed kernels cannot run here. Checked at load against
    the reference (eager) model, layer by layer (`check_layers`)."""
    from quantization.runtime.packed_kernels import KernelsUnavailableError
    from quantization.runtime.packed_linear import PackedLinear

    try:
        model, runtime_bytes = build_model(artifact, linear_factory=PackedLinear.from_quantized)
    except KernelsUnavailableError as exc:
        logger.warning("packed kernels cannot run %s (%s); it runs on the compiled backend", artifact.path, exc)
        return None
    set_attention_precision(model, attention_precision)
    reference, _ = build_model(artifact)
    # the reference's config, already read by build_model: not the artifact's config.json once more
    check_layers(artifact, reference, model, check_inputs(typing.cast(Any, reference).config.vocab_size))
    del reference
    release_free_heap()
    if not compile:
        return model, runtime_bytes
    try:
        return compile_model(model), runtime_bytes
    except InternalsChangedError as exc:  # the compiled backend will fail alike, and fall back to eager
        logger.error("cannot compile %s (%s)", artifact.path, exc)
        return None


def build_for_backend(
    artifact: Artifact,
    backend: str,
    openvino_activation_group_size: int | None = None,
    attention_precision: str = "float32",
) -> tuple[Any, int, str]:
    """The model of an artifact on `backend` (compiled lazily: `warm_up` compiles), its runtime weight bytes, and
    the backend it runs on: the reference (eager) where the openvino backend cannot build it, the compiled one
    (oneDNN int8) where the packed kernels cannot run here (logged). An aot model is the eager packed model until
    `warm_up` compiles it ahead of time.

    `openvino_activation_group_size`: the openvino backend's activation groups (`OpenVinoOptions`; None: its
    default, 0: the exact float32 formula). `attention_precision`: the packed backend's attention products
    (`ATTENTION_PRECISIONS`)."""
    built = _build_openvino(artifact, openvino_activation_group_size) if backend == "openvino" else None
    if built is not None:
        return (*built, backend)
    if backend in PACKED_KERNEL_BACKENDS:
        built = _build_packed(artifact, attention_precision, compile=backend == "packed")
        if built is not None:
            return (*built, backend)
    model, runtime_bytes = build_model(artifact)
    if backend in WARMED_BACKENDS:
        try:
            return compile_model(model), runtime_bytes, "compiled"
        except InternalsChangedError as exc:
            logger.error("cannot compile %s (%s); it runs on the reference (eager) backend", artifact.path, exc)
    return model, runtime_bytes, "eager"


def load_model(
    artifact_dir: Path,
    backend: str = "eager",
    openvino_activation_group_size: int | None = None,
    attention_precision: str = "float32",
) -> LoadedModel:
    """Verify, load and build an artifact's inference model with its tokenizer.

    A backend that cannot build the model here (package missing, an op it cannot compile) falls back to the
    reference (eager) backend, logged; `LoadedModel.backend` says which one runs.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known: {list(BACKENDS)}")
    started = time.perf_counter()
    artifact = read_artifact(Path(artifact_dir))
    model, runtime_bytes, backend = build_for_backend(
        artifact, backend, openvino_activation_group_size, attention_precision
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(artifact.path, local_files_only=True)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        manifest=artifact.manifest,
        path=artifact.path,
        load_seconds=time.perf_counter() - started,
        packed_bytes=artifact.manifest["summary"]["total_packed_bytes"],
        runtime_bytes=runtime_bytes,
        backend=backend,
    )
