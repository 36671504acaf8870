"""Inference models built from artifacts, running real int8 kernels.

Quantized Linear layers become `Int8Linear`: the stored 2/3/4/8-bit codes are unpacked once at load
into an int8 matrix (code c stored as c, or c - 128 for 8-bit codes) with one scale and zero point
per output row, taken from the row's group, then packed once into oneDNN's blocked int8 layout. At run
time each token's activations are quantized to 8 bits with their own scale (dynamic, per token,
symmetric), multiplied by oneDNN's int8 GEMM (u8 x s8 -> int32, the activations shifted by 128 with that zero
point: VNNI/AMX; on CPUs where it is not exact or not fast, the int8 values in float32: see
`onednn_int8_is_usable`) and rescaled:

    y[t, r] = s_t * s_r * (sum_k xq[t, k] * c[r, k]  -  z_r * sum_k xq[t, k])  + bias[r]

which is exactly x_q @ (s_r * (c - z_r)).T: the weights see no second rounding. Per-token scales
make a sequence's result independent of what else is in its batch, which per-tensor dynamic
quantization (fbgemm `linear_dynamic`) is not. No FP32 copy of a quantized weight is kept;
sub-8-bit codes are a storage format (torch's 4-bit CPU kernels are slower than FP32 here).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.bert.modeling_bert import BertSelfAttention, eager_attention_forward

from quantization.artifact import Artifact, read_artifact
from quantization.config import BACKENDS
from quantization.primitives import token_scales
from quantization.qtensor import QDATA, SCALE, ZERO_POINT, QuantizedWeight
from quantization.system import release_free_heap

logger = logging.getLogger(__name__)
# Activations reach oneDNN as u8 (q + 128, with that zero point): its VNNI/AMX kernels multiply u8 × s8.
ACTIVATION_ZERO_POINT = 128
SLOW_INT8_FACTOR = 4.0  # an int8 GEMM this many times slower than float32 is a reference loop, not a kernel
_ARCHITECTURE = re.compile(r"^\w+For(SequenceClassification|TokenClassification|QuestionAnswering)$")


class Int8Linear(nn.Module):
    """A Linear layer running int8 x int8 -> int32 matmuls, per-row weight and per-token activation scales."""

    def __init__(
        self,
        weight_int8: torch.Tensor,
        row_scale: torch.Tensor,
        row_zero: torch.Tensor | None,
        bias: torch.Tensor | None,
        bits: int,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = weight_int8.shape
        self.bits = bits
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("row_scale", row_scale)
        self.register_buffer("row_zero", row_zero if row_zero is not None and bool(row_zero.any()) else None)
        self.register_buffer("bias", bias)
        self.runtime_nbytes = sum(b.numel() * b.element_size() for b in self.buffers())
        self.packed = False  # weight_int8 is row-major [out, in] until `pack`

    @classmethod
    def from_quantized(cls, qweight: QuantizedWeight, bias: torch.Tensor | None) -> Int8Linear:
        """Takes over `qweight.codes` (freshly unpacked, owned by nobody else) as the int8 weight matrix."""
        shift = 128 if qweight.bits == 8 else 0  # 8-bit codes [0, 255] -> int8 [-128, 127]
        return cls(
            _codes_as_int8(qweight.codes, shift),
            qweight.row_scale().to(torch.float32),
            qweight.row_zero_point().to(torch.int32) - shift,
            None if bias is None else bias.detach().to(torch.float32).clone(),  # a copy: not the file's memory
            qweight.bits,
        )

    @classmethod
    def stacked(cls, layers: list[Int8Linear]) -> Int8Linear:
        """One layer computing several that read the same input (rows stacked): exactly their outputs, joined.

        Each token is quantized once instead of once per layer, and one wide matmul replaces narrow ones.
        """
        if any(layer.packed for layer in layers):
            raise ValueError("stack layers before packing them")
        if len({(layer.in_features, layer.bits) for layer in layers}) != 1:
            raise ValueError("stacked layers need one input width and one bit width")
        zeros = [
            layer.row_zero if layer.row_zero is not None else torch.zeros(layer.out_features, dtype=torch.int32)
            for layer in layers
        ]
        biases = [
            layer.bias if layer.bias is not None else torch.zeros(layer.out_features, dtype=torch.float32)
            for layer in layers
        ]
        return cls(
            torch.cat([layer.weight_int8 for layer in layers]),
            torch.cat([layer.row_scale for layer in layers]),
            torch.cat(zeros),
            torch.cat(biases),
            layers[0].bits,
        )

    def pack(self) -> None:
        """Reorder the weights, once, into oneDNN's blocked int8 layout (replacing the row-major matrix).

        Packed, the products cost less than through a plain matrix reordered on every call. Where oneDNN's
        int8 GEMM is not exact (AVX2-only CPUs), slow or absent, the layer keeps its row-major matrix.
        """
        if self.packed or not onednn_int8_is_usable():
            return
        self.weight_int8 = torch.ops.onednn.qlinear_prepack(self.weight_int8, None)
        self.register_buffer("packed_zero_points", torch.zeros(self.out_features, dtype=torch.int64), persistent=False)
        self.packed = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        token_scale = token_scales(rows)
        xq = torch.round(rows / token_scale)  # integers in [-127, 127], held in float32
        if self.packed:
            xu = (xq + ACTIVATION_ZERO_POINT).to(torch.uint8)
            acc = packed_int8_matmul(xu, self.weight_int8, self.row_scale, self.packed_zero_points)  # times s_r
        else:
            # No usable int8 GEMM here (torch._int_mm on CPU is a reference loop, 20× slower than float32): the
            # int8 values multiply exactly in float32 and their sums round as float32 sums do.
            acc = torch.mm(xq, self.weight_int8.t().to(torch.float32)).mul_(self.row_scale)
        if self.row_zero is not None:
            acc -= xq.sum(1, keepdim=True) * (self.row_zero * self.row_scale)  # exact: |sum| < 2**24
        y = acc.mul_(token_scale)
        if self.bias is not None:
            y += self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits} (int8 kernel)"


@functools.cache
def onednn_int8_is_usable() -> bool:
    """Whether oneDNN's packed int8 GEMM is exact and fast on this CPU (checked once per process).

    Exact: without VNNI or AMX (AVX2 only) oneDNN multiplies through 16-bit pair sums that saturate; products
    came out wrong by up to a fifth of their size. Fast: for an input type its optimized kernels do not take,
    oneDNN runs its reference loop (`ref_int8`), hundreds of times slower than float32; seen for s8
    activations on AVX-512 VNNI, which is why activations go in as u8. Where either fails, the layers
    multiply the int8 values in float32.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    generator = torch.Generator().manual_seed(0)
    weight = torch.randint(-128, 128, (256, 256), dtype=torch.int8, generator=generator)
    xq = torch.randint(-127, 128, (64, 256), dtype=torch.int8, generator=generator)
    xu = (xq.to(torch.int16) + ACTIVATION_ZERO_POINT).to(torch.uint8)
    try:
        packed = torch.ops.onednn.qlinear_prepack(weight, None)
        arguments = _qlinear_arguments(xu, packed, torch.ones(256), torch.zeros(256, dtype=torch.int64))
        ours = torch.ops.onednn.qlinear_pointwise(*arguments)
    except RuntimeError as exc:
        logger.warning("oneDNN cannot run int8 GEMMs (%s); int8 values multiply in float32", exc)
        return False
    if not torch.equal(ours.to(torch.int32), torch._int_mm(xq, weight.t().contiguous())):
        logger.warning("oneDNN's int8 GEMM is not exact on this CPU (no VNNI/AMX); int8 values multiply in float32")
        return False
    int8_s = _best_of(lambda: torch.ops.onednn.qlinear_pointwise(*arguments))
    xf, wf = xq.float(), weight.float().t()
    float_s = _best_of(lambda: torch.mm(xf, wf))
    if int8_s > SLOW_INT8_FACTOR * float_s:  # a reference loop is 100× slower, the optimized kernels faster
        logger.warning(
            "oneDNN's int8 GEMM runs %.0f× slower than float32 on this CPU (a reference kernel); "
            "int8 values multiply in float32",
            int8_s / float_s,
        )
        return False
    return True


def _best_of(run: Callable[[], Any], repeats: int = 5) -> float:
    run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def _codes_as_int8(codes: torch.Tensor, shift: int) -> torch.Tensor:
    """Unsigned codes as int8, in place (no temporary: load-time peaks fragment the heap for good).

    c - 128 is c XOR 0x80 read as two's complement; codes below 128 are already the same bits.
    """
    codes = codes.contiguous()
    if shift:
        codes.bitwise_xor_(0x80)
    return codes.view(torch.int8)


# oneDNN's int8 GEMM on weights packed by `onednn.qlinear_prepack`, as an opaque op: called directly, Inductor
# would lower it only for weights frozen into one graph per model, and every model would compile on its own.
# Compiled graphs call the oneDNN kernel itself (`_lower_packed_matmul_to_onednn`), not this Python body.
@torch.library.custom_op("qbert::packed_int8_matmul", mutates_args=())
def packed_int8_matmul(
    xu: torch.Tensor, packed_weight: torch.Tensor, row_scale: torch.Tensor, zero_points: torch.Tensor
) -> torch.Tensor:
    """s_r · Σ_k (xu[t, k] − 128) · c[r, k] in float32 (the sum is exact: int32 accumulation) for u8 `xu`
    [tokens, in], the activations shifted by `ACTIVATION_ZERO_POINT`.

    `zero_points`: int64 zeros, one per row (oneDNN takes symmetric weights only; passed in, not allocated per call).
    """
    return torch.ops.onednn.qlinear_pointwise(*_qlinear_arguments(xu, packed_weight, row_scale, zero_points))


def _qlinear_arguments(xu: Any, packed_weight: Any, row_scale: Any, zero_points: Any) -> tuple[Any, ...]:
    """`onednn::qlinear_pointwise`'s arguments for `packed_int8_matmul`, in eager and in compiled graphs alike:
    u8 activations with scale 1 and zero point 128 (the caller rescales per token), float32 out, no bias, no post-op."""
    return (
        xu,
        1.0,
        ACTIVATION_ZERO_POINT,
        packed_weight,
        row_scale,
        zero_points,
        None,
        1.0,
        0,
        torch.float32,
        "none",
        [],
        "",
    )


@packed_int8_matmul.register_fake
def _(
    xu: torch.Tensor, packed_weight: torch.Tensor, row_scale: torch.Tensor, zero_points: torch.Tensor
) -> torch.Tensor:
    return xu.new_empty((xu.shape[0], row_scale.shape[0]), dtype=torch.float32)


@functools.cache
def _lower_packed_matmul_to_onednn() -> None:
    """Teach Inductor to emit `packed_int8_matmul` as a direct call of oneDNN's kernel (once per process).

    Left to its default, Inductor calls a custom op through the dispatcher into Python, 40 to 140 µs a call
    (it grows with the state of the interpreter); bert-base makes 48 such calls per forward.
    """
    from torch._inductor.lowering import fallback_handler, register_lowering

    onednn_call = fallback_handler(torch.ops.onednn.qlinear_pointwise.default, add_to_fallback_set=False)

    @register_lowering(torch.ops.qbert.packed_int8_matmul.default, type_promotion_kind=None)
    def _(xu: Any, packed_weight: Any, row_scale: Any, zero_points: Any) -> Any:
        return onednn_call(*_qlinear_arguments(xu, packed_weight, row_scale, zero_points))


class QuantizedEmbedding(nn.Module):
    """An embedding table of unsigned codes with one (scale, zero point) per row, dequantized on lookup."""

    def __init__(self, qweight: QuantizedWeight, padding_idx: int | None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = qweight.shape
        self.padding_idx = padding_idx
        self.bits = qweight.bits
        self.register_buffer("codes", qweight.codes.contiguous())  # freshly unpacked: not the weights file's memory
        self.register_buffer("row_scale", qweight.row_scale().to(torch.float32))
        self.register_buffer("row_zero", qweight.row_zero_point().to(torch.float32))
        self.runtime_nbytes = self.codes.numel() + self.num_embeddings * 8

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        codes = self.codes[ids].to(torch.float32)
        return (codes - self.row_zero[ids].unsqueeze(-1)) * self.row_scale[ids].unsqueeze(-1)


class StackedQKVSelfAttention(nn.Module):
    """BERT self-attention whose quantized Q, K and V projections run as one stacked `Int8Linear`.

    Same inputs, outputs and attention kernel as the module it replaces (transformers' BertSelfAttention,
    encoder use), so results are unchanged; the hidden states are quantized once, not three times.
    """

    def __init__(self, original: nn.Module) -> None:
        super().__init__()
        self.config = original.config
        self.num_attention_heads = original.num_attention_heads
        self.attention_head_size = original.attention_head_size
        self.scaling = original.scaling
        self.is_causal = original.is_causal
        self.is_decoder = original.is_decoder
        self.layer_idx = original.layer_idx
        self.qkv = Int8Linear.stacked([original.query, original.key, original.value])

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if past_key_values is not None:
            raise ValueError("StackedQKVSelfAttention serves encoders: no key/value cache")
        input_shape = hidden_states.shape[:-1]
        qkv = self.qkv(hidden_states).view(*input_shape, 3, self.num_attention_heads, self.attention_head_size)
        query, key, value = (qkv.select(-3, i).transpose(1, 2) for i in range(3))
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        output, weights = attention(
            self, query, key, value, attention_mask, dropout=0.0, scaling=self.scaling, **kwargs
        )
        return output.reshape(*input_shape, -1).contiguous(), weights


def _stack_attention_projections(model: nn.Module) -> None:
    """Replace every encoder BertSelfAttention whose Q, K and V are all `Int8Linear` by the stacked form."""
    for name, module in list(model.named_modules()):
        if (
            type(module) is BertSelfAttention
            and not module.is_decoder
            and all(isinstance(getattr(module, p), Int8Linear) for p in ("query", "key", "value"))
            and module.query.bits == module.key.bits == module.value.bits
        ):
            _set_submodule(model, name, StackedQKVSelfAttention(module))


@dataclass
class LoadedModel:
    """An inference-ready model with its tokenizer and what it costs."""

    model: nn.Module
    tokenizer: Any
    manifest: dict[str, Any]
    path: Path
    load_seconds: float
    packed_bytes: int
    runtime_bytes: int
    backend: str = "eager"

    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def precision(self) -> str:
        return self.manifest["precision"]["name"]

    @property
    def labels(self) -> list[str]:
        return self.manifest["labels"]


def _model_class(config: transformers.PretrainedConfig) -> type[nn.Module]:
    architectures = config.architectures or []
    if len(architectures) != 1 or not _ARCHITECTURE.match(architectures[0]):
        raise ValueError(f"unsupported architecture {architectures!r}; expected one *For<Task> class")
    return getattr(transformers, architectures[0])


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, leaf, module)


def _materialize_buffers(model: nn.Module) -> None:
    """Non-persistent index buffers (not stored in checkpoints) that were created on `meta`."""
    for module_name, module in model.named_modules():
        for name, buffer in list(module.named_buffers(recurse=False)):
            if not buffer.is_meta:
                continue
            if name == "position_ids":
                value = torch.arange(buffer.shape[-1]).expand(buffer.shape).contiguous()
            elif name == "token_type_ids":
                value = torch.zeros(buffer.shape, dtype=buffer.dtype)
            else:
                raise ValueError(f"don't know how to build buffer {module_name}.{name}")
            module.register_buffer(name, value, persistent=False)


LinearFactory = Callable[[QuantizedWeight, torch.Tensor | None], nn.Module]


def build_model(
    artifact: Artifact, stack_qkv: bool = True, linear_factory: LinearFactory | None = None
) -> tuple[nn.Module, int]:
    """The inference model of an artifact and its runtime weight bytes.

    `stack_qkv`: run each attention block's quantized Q, K and V as one matmul (same results, faster).
    `linear_factory(qweight, bias)`: the module a quantized Linear becomes (default `Int8Linear`); it reports its
    resident bytes as `runtime_nbytes`.
    """
    linear_factory = linear_factory or Int8Linear.from_quantized
    config = transformers.AutoConfig.from_pretrained(artifact.path, local_files_only=True)
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = _model_class(config)(config)
    tensors = dict(artifact.tensors)
    runtime_bytes = 0
    for entry in artifact.manifest["tensors"]:
        if entry["bits"] == 32:
            continue
        module_name = entry["module"]
        qweight = artifact.quantized_weight(entry)
        for suffix in (QDATA, SCALE, ZERO_POINT):
            del tensors[f"{entry['name']}.{suffix}"]
        original = model.get_submodule(module_name)
        if isinstance(original, nn.Embedding):
            replacement: nn.Module = QuantizedEmbedding(qweight, original.padding_idx)
        elif isinstance(original, nn.Linear):
            bias = tensors.pop(f"{module_name}.bias", None)
            replacement = linear_factory(qweight, bias)
        else:
            raise ValueError(f"{module_name} is a {type(original).__name__}; only Linear/Embedding quantize")
        runtime_bytes += replacement.runtime_nbytes
        _set_submodule(model, module_name, replacement)
    # Copies, so that no model tensor keeps the memory-mapped weights file (and its pages) alive.
    result = model.load_state_dict({k: v.clone() for k, v in tensors.items()}, strict=False, assign=True)
    if result.unexpected_keys:
        raise ValueError(f"artifact has tensors the model does not: {result.unexpected_keys[:5]}")
    _materialize_buffers(model)
    still_meta = [n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta]
    if still_meta:
        raise ValueError(f"artifact lacks tensors the model needs: {still_meta[:5]}")
    runtime_bytes += sum(p.numel() * p.element_size() for p in model.parameters())
    if stack_qkv:
        _stack_attention_projections(model)
    for module in model.modules():
        if isinstance(module, Int8Linear):
            module.pack()
    model.eval()
    release_free_heap()  # the load's freed temporaries, so that RSS is the model's size, not its load's peak
    return model, runtime_bytes


# Every BERT model shares transformers' forward wrapper, so Dynamo keeps all their compiled variants (one
# per architecture and per batch of 1 or more) on that one code object; past its default limit of 8 it
# would run the rest eager. The 18 served models need about 12.
COMPILED_VARIANTS_LIMIT = 64


def compile_model(model: nn.Module) -> nn.Module:
    """The model under torch.compile with dynamic shapes (batch and sequence vary from call to call).

    The graph's wrapper is generated as C++ (`cpp_wrapper`): the ~130 kernel and library calls of a bert-base
    forward then cost no Python each (b1×128: 24.6 instead of 27.1 ms; the first compile of an architecture
    takes ~8 s longer, later processes load it from Inductor's cache). A lower `realize_opcount_threshold`
    (default 30) has Inductor keep GELU's output instead of computing its erf again in each pass of the next
    layer's per-token quantization: the same numbers, 7 % faster at b1×128.
    """
    dynamo = torch._dynamo.config
    dynamo.recompile_limit = max(dynamo.recompile_limit, COMPILED_VARIANTS_LIMIT)
    if onednn_int8_is_usable():
        _lower_packed_matmul_to_onednn()
    return torch.compile(model, dynamic=True, options={"cpp_wrapper": True, "realize_opcount_threshold": 8})


def random_inputs(
    batch: int, seq: int, vocab_size: int, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Unpadded model inputs of ordinary word pieces (ids past the special tokens) for warm-ups and benchmarks."""
    ids = torch.randint(min(1000, vocab_size // 2), vocab_size, (batch, seq), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def as_eager(loaded: LoadedModel) -> LoadedModel:
    """A compiled model's eager twin: the same module and weights, run without its compiled graphs."""
    if loaded.backend != "compiled":
        return loaded
    return dataclasses.replace(loaded, model=loaded.model._orig_mod, backend="eager")


def warm_up(loaded: LoadedModel) -> LoadedModel:
    """Compile now rather than on a request: one call at batch 1 and one above (Dynamo specializes 1).

    The inputs are made as callers make theirs, outside inference mode: Dynamo guards on that, and inputs
    made inside it would leave every first request to compile the graphs again.

    Where compiling fails (no C++ compiler, an unsupported op), the model falls back to eager, logged.
    """
    if loaded.backend != "compiled":
        return loaded
    vocab = loaded.model.config.vocab_size
    frames = torch._dynamo.utils.counters["frames"]
    seen, compiled = frames["total"], frames["ok"]
    try:
        for batch in (1, 2):
            inputs = random_inputs(batch, 8, vocab)
            with torch.inference_mode():
                loaded.model(**inputs)
    except Exception:  # Inductor raises many types; serving eager beats not serving
        logger.exception("compiling %s failed; it runs eager", loaded.path)
        return as_eager(loaded)
    if frames["total"] - seen > frames["ok"] - compiled:  # Dynamo gave up on a frame (it logged why): eager
        logger.error("torch.compile did not compile %s; it runs eager", loaded.path)
        return as_eager(loaded)
    return loaded


CHECK_SHAPE = (2, 16)  # the fixed input a backend's model is checked on at load, against the reference


def check_inputs(vocab_size: int) -> dict[str, torch.Tensor]:
    """The fixed (seeded) input every backend's model is checked on at load time."""
    return random_inputs(*CHECK_SHAPE, vocab_size, torch.Generator().manual_seed(0))


def _build_openvino(artifact: Artifact, activation_group_size: int | None) -> tuple[Any, int] | None:
    """The openvino backend's model of an artifact, or None (logged why) where OpenVINO cannot build it.

    A model that builds but disagrees with its reference raises `BackendMismatchError`: it is refused, not served.
    """
    from quantization.openvino_backend import BackendUnavailableError, OpenVinoOptions, convert_artifact

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


def build_for_backend(
    artifact: Artifact, backend: str, openvino_activation_group_size: int | None = None
) -> tuple[Any, int, str]:
    """The model of an artifact on `backend` (compiled lazily: `warm_up` compiles), its runtime weight bytes, and
    the backend it runs on: the reference (eager) where the openvino backend cannot build it (logged).

    `openvino_activation_group_size`: the openvino backend's activation groups (`OpenVinoOptions`; None: its
    default, 0: the exact float32 formula)."""
    built = _build_openvino(artifact, openvino_activation_group_size) if backend == "openvino" else None
    if built is not None:
        return (*built, backend)
    model, runtime_bytes = build_model(artifact)
    if backend == "compiled":
        return compile_model(model), runtime_bytes, backend
    return model, runtime_bytes, "eager"


def load_model(
    artifact_dir: Path, backend: str = "eager", openvino_activation_group_size: int | None = None
) -> LoadedModel:
    """Verify, load and build an artifact's inference model with its tokenizer.

    A backend that cannot build the model here (package missing, an op it cannot compile) falls back to the
    reference (eager) backend, logged; `LoadedModel.backend` says which one runs.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known: {list(BACKENDS)}")
    started = time.perf_counter()
    artifact = read_artifact(Path(artifact_dir))
    model, runtime_bytes, backend = build_for_backend(artifact, backend, openvino_activation_group_size)
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
