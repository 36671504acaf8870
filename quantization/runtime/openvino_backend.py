"""The `openvino` backend: an artifact's recorded codes run by OpenVINO's CPU plugin, packed in memory.

Each quantized Linear is handed to OpenVINO in its weight-decompression form, `y = x·(s·(c − z))ᵀ + b`: the
codes `c` as a constant of a packed width (`u2`, `u3`, `u4` or `u8`), the per-row zero point `z` as a `u8`
constant and the per-row scale `s` as float32. OpenVINO's CPU plugin recognises that pattern and multiplies with
the codes still packed, unpacking tiles inside its GEMM; no requantization: the weights the artifact records are
the weights that run. PTQ1.61's layers run as two such Linears (`BinarizedLinear`); the plugin folds `u1`
constants into float weights, so their sign codes are stored as `u2` (twice their width). The 8-bit embedding
tables are gathered as `u8` codes and dequantized per looked-up row.

Activations, two ways (`OpenVinoOptions.dynamic_quantization_group_size`):
- int8 kernels (the default, N > 0): the plugin's dynamic quantization rounds each token's input to a
  quantized Linear to 8 bits with one scale per group of N input channels, at run time, and multiplies with
  int8 dot products (VNNI, AMX). Finer than the artifact's one scale per token, so no less accurate, but not its
  formula: the load-time check against that formula allows for it (`int8_rounding_factor`). The plugin's int8
  kernels take `u4` and `u8` weights only, so 2- and 3-bit codes are stored as `u4` here (still packed, twice
  their own width).
- exact (0): each token's input is rounded as the artifact's precision says and as the eager runtime does
  (`round(x / s_t)`, s_t = max|x| / 127) inside the graph and multiplied in float32, where the integer-valued
  products are exact; 2- and 3-bit codes stay at their own width (see `kept_widths`). Several times slower.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import transformers
from torch import nn

from quantization.architectures import INPUT_NAMES
from quantization.artifact import Artifact
from quantization.qtensor import QuantizedWeight
from quantization.runtime.building import build_model
from quantization.runtime.loaded import BackendMismatchError, CalledLikeHuggingFace, OutputTuple
from quantization.runtime.modules import CodesLinear

logger = logging.getLogger(__name__)

MIN_OPENVINO = (2025, 1)  # u2/u3 element types and FullyConnected weight decompression on CPU
_WIDTHS = (1, 2, 3, 4, 8)


class BackendUnavailableError(RuntimeError):
    """The openvino backend cannot build this model here (package missing or too old, a conversion failed)."""


@dataclass(frozen=True)
class OpenVinoOptions:
    """How the CPU plugin runs a model.

    `dynamic_quantization_group_size`: N > 0 lets the plugin quantize activations to int8 per token in groups of N
    input channels and run int8 kernels (the load-time check widens: `int8_rounding_factor`); 0 runs the artifact's
    per-token formula exactly in float32 (module docstring). N must be a multiple of 16 (the plugin's SIMD width).
    """

    threads: int = 1
    # 128: the largest group that divides the hidden widths of BERT-family encoders (384, 768, 1024, 3072) and
    # the group at which the plugin's kernels ran fastest on bert-base (64 to 768 tried: models/RESULTS.md)
    dynamic_quantization_group_size: int = 128
    rtol: float = 1e-3  # float32 activations: the same formula in another summation order
    # 8-bit activations: a sum that lands on the other side of a rounding boundary moves one code of one token
    # by one step, and the change travels through the later blocks
    rtol_quantized: float = 1e-2
    # the plugin's u8-weight kernels for wide matrices (MiniLM, bert-base) differ from the formula by 1-3 % of
    # the largest logit on an AVX2 CPU (its 2/4-bit ones by 1e-6): models with 8-bit Linear codes get this
    rtol_u8: float = 5e-2
    # The plugin's int8 kernels round activations with scales of their own: their outputs may differ from the
    # formula's by up to this many times what the formula's own rounding moves them (against float activations),
    # plus `rtol` (`rtol_u8` with 8-bit codes) of the largest output. A wrong code moves them far more.
    int8_rounding_factor: float = 2.0
    atol: float = 1e-3

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.dynamic_quantization_group_size < 0 or self.dynamic_quantization_group_size % 16:
            raise ValueError(
                "dynamic_quantization_group_size must be 0 (exact float32 activations) or a positive multiple of 16, "
                f"got {self.dynamic_quantization_group_size}"
            )
        if min(self.rtol, self.rtol_quantized, self.rtol_u8, self.int8_rounding_factor, self.atol) < 0:
            raise ValueError("tolerances must be >= 0")

    def plugin_quantizes(self, quantized_activations: bool) -> bool:
        """Whether the plugin's int8 kernels quantize this model's activations (never a float-activation model's)."""
        return quantized_activations and self.dynamic_quantization_group_size > 0

    def compile_config(self, quantized_activations: bool = True) -> dict[str, Any]:
        return {
            "INFERENCE_NUM_THREADS": self.threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            # f32, not bf16 where the CPU has it: the exact formula is float32, and the plugin's dynamic
            # quantization applies to float32 inputs only
            "INFERENCE_PRECISION_HINT": "f32",
            "DYNAMIC_QUANTIZATION_GROUP_SIZE": (
                self.dynamic_quantization_group_size if self.plugin_quantizes(quantized_activations) else 0
            ),
            # The service sizes and places its own processes (workers × threads); pinned OpenVINO threads of two
            # workers could land on one core.
            "ENABLE_CPU_PINNING": False,
        }

    def tolerance(self, quantized_activations: bool, has_8bit_codes: bool = False) -> float:
        """Of the largest reference output (with int8 kernels, `int8_rounding_factor` adds to it)."""
        if not quantized_activations:
            return self.rtol
        if self.plugin_quantizes(quantized_activations):
            return self.rtol_u8 if has_8bit_codes else self.rtol
        return self.rtol_u8 if has_8bit_codes else self.rtol_quantized


def _openvino() -> Any:
    """The openvino module, gated on its version (the decompression patterns and u2/u3 types this relies on)."""
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailableError(f"the openvino package is not installed ({exc})") from exc
    version = tuple(int(part) for part in openvino.__version__.split(".")[:2] if part.isdigit())
    if version < MIN_OPENVINO:
        raise BackendUnavailableError(
            f"openvino {openvino.__version__} is older than {'.'.join(map(str, MIN_OPENVINO))}"
        )
    return openvino


def unavailable_reason() -> str | None:
    """Why the backend cannot run here, or None."""
    try:
        _openvino()
    except BackendUnavailableError as exc:
        return str(exc)
    return None


# ----- the model in decompression form ------------------------------------------------------------------


def _digest(array: np.ndarray) -> tuple[tuple[int, ...], str]:
    return tuple(array.shape), hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=16).hexdigest()


# ----- what the CPU plugin keeps packed ----------------------------------------------------------------


def _element_type(ov: Any, bits: int) -> Any:
    return {1: ov.Type.u1, 2: ov.Type.u2, 3: ov.Type.u3, 4: ov.Type.u4, 8: ov.Type.u8}[bits]


@functools.cache
def kept_widths() -> dict[int, int]:
    """For each code width, the width its codes are stored at so that the CPU plugin keeps them packed.

    A small FullyConnected is compiled per width and its runtime graph read: a width whose codes the plugin folds
    into float32 weights (u3 on CPUs without AVX-512, in OpenVINO 2026.4) is stored at the next width it keeps.
    """
    ov = _openvino()
    from openvino import opset13 as ops

    core = ov.Core()
    kept = []
    for bits in _WIDTHS:
        rows, cols = 64, 64
        x = ops.parameter([-1, cols], ov.Type.f32)
        codes = ops.constant(np.ones((rows, cols), np.uint8), dtype=_element_type(ov, bits))
        weight = ops.multiply(ops.convert(codes, ov.Type.f32), ops.constant(np.ones((rows, 1), np.float32)))
        compiled = core.compile_model(ov.Model([ops.matmul(x, weight, False, True)], [x]), "CPU", {})
        name = _element_type(ov, bits).get_type_name()
        precisions = {
            str(op.get_rt_info()["runtimePrecision"].astype(str)) for op in compiled.get_runtime_model().get_ops()
        }
        if name in precisions:
            kept.append(bits)
    return {bits: min((k for k in kept if k >= bits), default=8) for bits in _WIDTHS}


# The plugin's int8 (dynamic quantization) kernels take u4 and u8 weights; narrower codes go in as u4.
INT8_KERNEL_WIDTHS = {1: 4, 2: 4, 3: 4, 4: 4, 8: 8}


def stored_widths(plugin_quantizes: bool) -> dict[int, int]:
    """For each code width, the width its codes are stored at for the kernels that will run them."""
    return INT8_KERNEL_WIDTHS if plugin_quantizes else kept_widths()


def _store_codes_packed(ov_model: Any, widths: dict[tuple[tuple[int, ...], str], int], stored: dict[int, int]) -> int:
    """Replace each traced u8 code constant by a constant of its stored width; the codes' packed bytes."""
    ov = _openvino()
    from openvino import opset13 as ops

    replaced, packed_bytes = 0, 0
    for node in ov_model.get_ordered_ops():
        if node.get_type_name() != "Constant" or node.get_element_type() != ov.Type.u8:
            continue
        data = node.get_data()
        bits = widths.get(_digest(data))
        if bits is None:
            continue
        width = stored[bits]
        if width != 8:
            packed = ops.constant(data, dtype=_element_type(ov, width))
            for target in list(node.output(0).get_target_inputs()):
                target.replace_source_output(packed.output(0))
        replaced += 1
        packed_bytes += data.size * width // 8
    if replaced != len(widths):
        raise BackendUnavailableError(f"found {replaced} of {len(widths)} quantized weights in the converted model")
    ov_model.validate_nodes_and_infer_types()
    return packed_bytes


# ----- the loaded model --------------------------------------------------------------------------------


_OUTPUT_TYPES = {
    "SequenceClassification": transformers.modeling_outputs.SequenceClassifierOutput,
    "TokenClassification": transformers.modeling_outputs.TokenClassifierOutput,
    "QuestionAnswering": transformers.modeling_outputs.QuestionAnsweringModelOutput,
}


class OpenVinoModel(CalledLikeHuggingFace):
    """Called like the Hugging Face model it replaces: keyword tensors in, its ModelOutput (torch tensors) out."""

    def __init__(self, compiled: Any, config: transformers.PretrainedConfig, output_fields: Sequence[str]) -> None:
        self.compiled = compiled
        self.config = config
        self.output_fields = tuple(output_fields)
        head = next(kind for kind in _OUTPUT_TYPES if (config.architectures or [""])[0].endswith(kind))
        self._output_type = _OUTPUT_TYPES[head]
        self._request = compiled.create_infer_request()  # one per model: a worker runs one batch at a time

    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> Any:
        feeds = {
            name: t.to(torch.int64).numpy()
            for name, t in zip(INPUT_NAMES, (input_ids, attention_mask, token_type_ids), strict=True)
        }
        self._request.infer(feeds)
        # copies: the request reuses its output buffers on the next call
        outputs = [
            torch.from_numpy(self._request.get_output_tensor(i).data.copy()) for i in range(len(self.output_fields))
        ]
        return self._output_type(**dict(zip(self.output_fields, outputs, strict=True)))


@dataclass
class ConvertedModel:
    model: OpenVinoModel
    runtime_bytes: int
    max_abs_diff: float  # on the check input, against the artifact's formula run by PyTorch


def convert_artifact(
    artifact: Artifact, options: OpenVinoOptions, check_inputs: dict[str, torch.Tensor]
) -> ConvertedModel:
    """Build, compile and check the OpenVINO model of an artifact.

    The check: the compiled model's outputs on `check_inputs` against the PyTorch model it was converted from
    (the same codes, scales and zero points, activations rounded per token as the artifact says, in float32),
    within `atol + tolerance · max |reference|`.
    Raises `BackendUnavailableError` when OpenVINO cannot build it and `BackendMismatchError` past tolerance.
    """
    ov = _openvino()
    activations = artifact.manifest["precision"].get("activations") or {}
    if activations and (activations.get("bits"), activations.get("granularity")) != (8, "per_token"):
        raise BackendUnavailableError(f"activations {activations} are not 8-bit per token, which this backend runs")
    quantize_activations = bool(activations)
    plugin_quantizes = options.plugin_quantizes(quantize_activations)

    def linear(qweight: QuantizedWeight, bias: torch.Tensor | None) -> CodesLinear:
        # where the plugin quantizes, the graph takes float inputs (its kernels must see them unrounded)
        return CodesLinear.from_quantized(qweight, bias, quantize_activations and not plugin_quantizes)

    torch_model, _ = build_model(artifact, stack_qkv=False, linear_factory=linear)
    traced = OutputTuple(torch_model).eval()
    widths = {}
    for module in torch_model.modules():
        if isinstance(module, CodesLinear):
            widths[_digest(module.codes.numpy())] = module.bits
    if len(widths) != sum(isinstance(m, CodesLinear) for m in torch_model.modules()):
        raise BackendUnavailableError("two quantized weights hold identical codes; cannot tell their widths apart")
    example = tuple(check_inputs[name] for name in INPUT_NAMES)
    try:
        with torch.no_grad():
            ov_model = ov.convert_model(traced, example_input=example)
        codes_bytes = _store_codes_packed(ov_model, widths, stored_widths(plugin_quantizes))
        compiled = ov.Core().compile_model(ov_model, "CPU", options.compile_config(quantize_activations))
    except BackendUnavailableError:
        raise
    except Exception as exc:  # the frontend and the plugin raise many types
        raise BackendUnavailableError(f"OpenVINO could not build the model: {type(exc).__name__}: {exc}") from exc
    runtime_bytes = codes_bytes + sum(
        t.numel() * t.element_size()
        for module in torch_model.modules()
        for name, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        if not (isinstance(module, CodesLinear) and name == "codes")  # counted packed, above
    )
    # The reference is the artifact's formula (per-token rounding) whichever way the plugin runs activations;
    # where the plugin quantizes, the same weights with float activations measure what 8-bit rounding moves.
    float_outputs = _outputs(torch_model, check_inputs) if plugin_quantizes else None
    for module in torch_model.modules():
        if isinstance(module, CodesLinear):
            module.quantize_activations = quantize_activations
    reference = _outputs(torch_model, check_inputs)
    fields = list(reference)
    del ov_model, traced, torch_model
    model = OpenVinoModel(compiled, artifact_config(artifact), fields)
    ours = model(**check_inputs)
    diff = max(float((ours[f] - ref).abs().max()) for f, ref in reference.items())
    scale = max(float(ref.abs().max()) for ref in reference.values())
    limit = options.atol + options.tolerance(quantize_activations, 8 in widths.values()) * scale
    if float_outputs is not None:
        rounding = max(float((float_outputs[f] - ref).abs().max()) for f, ref in reference.items())
        limit += options.int8_rounding_factor * rounding
    if not diff <= limit:  # also refuses NaN
        raise BackendMismatchError(
            f"{artifact.path}: the openvino model's outputs differ from the reference by {diff:.3g} "
            f"(limit {limit:.3g}); refused"
        )
    return ConvertedModel(model, runtime_bytes, diff)


def _outputs(model: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        return {name: t.clone() for name, t in model(**inputs).items()}


def artifact_config(artifact: Artifact) -> transformers.PretrainedConfig:
    return transformers.AutoConfig.from_pretrained(artifact.path, local_files_only=True)
