"""The aot backend: the packed model exported whole (`torch.export`, batch and sequence dynamic) and compiled ahead
of time by AOTInductor into a package that runs from C++. A call then costs no Dynamo frame, guard or Python
module wrapper: the packed backend's kernels with the least around them.

One package serves every model of one structure: the package holds the graph and its kernels, not the weights
(`package_constants_in_so=False`), and each loaded copy is handed its model's own tensors (`user_managed`: no copy;
the weights stay packed at their width). Constants Inductor derives from weights (a float Linear's transposed
weight) are folded when a model's tensors are handed over (`use_runtime_constant_folding`), so they are that
model's. Packages are cached on disk by what decides their code (`package_key`), compiled once per machine.

Inputs the package was not compiled for (a shape outside its ranges, token ids outside the tables) run on the eager
packed model instead: the compiled kernels do not check them, and an index past a table stops the process.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
import transformers
from torch import nn

from quantization.architectures import INPUT_NAMES, longest_sequence
from quantization.runtime.loaded import BackendMismatchError, CalledLikeHuggingFace, OutputTuple, check_inputs
from quantization.runtime.packed_kernels import kernel_cache_dir
from quantization.runtime.torch_internals import InternalsChangedError, aot_inductor, aot_package_runner
from quantization.system import cpu_kernel_flags, release_free_heap

logger = logging.getLogger(__name__)

CACHE_ENV = "QBERT_AOT_CACHE"
SHORTEST_SEQUENCE = 2  # [CLS] [SEP]: every tokenized input has them
INDUCTOR_CONFIGS: Mapping[str, Any] = MappingProxyType(
    {
        "aot_inductor.package_constants_in_so": False,
        "aot_inductor.use_runtime_constant_folding": True,
        # as the packed backend under torch.compile: GELU's output is kept rather than computed again per pass
        "realize_opcount_threshold": 8,
    }
)


class AheadOfTimeUnavailableError(RuntimeError):
    """The model cannot run on the aot backend here (torch without AOTInductor packages, an export or compile
    failure); it runs on the packed backend instead."""


@dataclass(frozen=True)
class AheadOfTimeOptions:
    """Where packages are cached, and how far a loaded model may differ from its eager packed twin at load.

    The check compares whole-model outputs on the check input. The package runs the same kernels, with Inductor's
    fused elementwise code (LayerNorm, GELU, per-token quantization) summing in another float32 order: where a sum
    lands on the other side of an 8-bit rounding boundary, one token's code moves by one step and the change
    travels through the later blocks, by percents of the largest output on a 12-block model. How far it travels
    is measured on the model itself (`rounding_sensitivity`: the eager model's outputs when its embeddings move by
    `noise` of themselves, as float reordering moves them); the limit is `atol` + `rtol` of the largest output +
    `rounding_factor` times that. Weights that are not the model's move the outputs by their whole size.
    """

    cache_dir: Path
    rtol: float = 1e-3
    atol: float = 1e-5
    rounding_factor: float = 3.0
    noise: float = 1e-6
    noise_draws: int = 3

    def __post_init__(self) -> None:
        if min(self.rtol, self.atol, self.rounding_factor, self.noise) < 0:
            raise ValueError("tolerances must be >= 0")
        if self.noise_draws < 1:
            raise ValueError(f"noise_draws must be >= 1, got {self.noise_draws}")

    @classmethod
    def from_environment(cls) -> AheadOfTimeOptions:
        """Packages under `QBERT_AOT_CACHE`, else the user cache beside our kernels'."""
        return cls(Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "qbert" / "aot"))


def _config(model: nn.Module) -> transformers.PretrainedConfig:
    return typing.cast(transformers.PretrainedConfig, model.config)


def _export(model: nn.Module) -> torch.export.ExportedProgram:
    # the check input as the example: two rows, so that batch 1 is no special case; both dims then marked dynamic
    example = check_inputs(_config(model).vocab_size)
    longest = longest_sequence(_config(model))
    batch = torch.export.Dim("batch", min=1)
    seq = torch.export.Dim("seq", min=SHORTEST_SEQUENCE, max=longest)
    with torch.no_grad():
        return torch.export.export(
            OutputTuple(model).eval(),
            tuple(example[name] for name in INPUT_NAMES),
            dynamic_shapes=tuple({0: batch, 1: seq} for _ in INPUT_NAMES),
            strict=False,  # traced through Python as it runs: transformers' forward is not Dynamo-clean everywhere
        )


def _constants(exported: torch.export.ExportedProgram) -> dict[str, torch.Tensor]:
    return {**exported.state_dict, **exported.constants}


def package_key(exported: torch.export.ExportedProgram) -> str:
    """What decides a package's code: the exported graph (its ops and every literal the model's structure put in
    it: bit widths, group sizes, head counts), the shapes and types of its weights, our kernels' build, the CPU's
    instruction sets that Inductor compiles for, torch's release and the compile options."""
    constants = sorted(
        (name, tuple(t.shape), tuple(t.stride()), str(t.dtype)) for name, t in _constants(exported).items()
    )
    described = {
        "graph": exported.graph_module.code,
        "inputs": str(exported.range_constraints),
        "constants": constants,
        "kernels": kernel_cache_dir().name,
        "cpu": cpu_kernel_flags(),
        "torch": torch.__version__,
        "inductor": dict(INDUCTOR_CONFIGS),
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:24]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created): the workers of a pool compile a package once, not each."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached_package(exported: torch.export.ExportedProgram, cache_dir: Path) -> Path:
    """The package of `exported`'s structure, compiled now (once per machine) where the cache lacks it."""
    compile_and_package, _ = aot_inductor()
    cache_dir.mkdir(parents=True, exist_ok=True)
    package = cache_dir / f"{package_key(exported)}.pt2"
    with _locked(package.with_suffix(".lock")):
        if package.exists():
            return package
        started = time.perf_counter()
        # written beside its place and renamed into it: a reader never sees half a package
        handle, partial = tempfile.mkstemp(dir=cache_dir, prefix=f"{package.stem}.", suffix=".partial.pt2")
        os.close(handle)
        try:
            # a copy: the compiler adds its own options to the dict it is given
            compile_and_package(exported, package_path=partial, inductor_configs=dict(INDUCTOR_CONFIGS))
            os.replace(partial, package)
        finally:
            Path(partial).unlink(missing_ok=True)
        logger.info("compiled %s ahead of time in %.0f s", package.name, time.perf_counter() - started)
    return package


class AheadOfTimeModel(CalledLikeHuggingFace):
    """Called like the Hugging Face model it runs: keyword tensors in, its ModelOutput out. The eager packed model
    (`eager`) keeps the tensors the package reads, and runs the inputs the package was not compiled for."""

    def __init__(self, run: Any, eager: nn.Module, output_type: type, output_fields: Sequence[str]) -> None:
        self._run = run
        self.eager = eager
        self.config = _config(eager)
        self._output_type = output_type
        self.output_fields = tuple(output_fields)
        self.longest_sequence = longest_sequence(self.config)

    def compiled_for(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> bool:
        """Whether the package may run these inputs: the shapes it was compiled for, ids within their tables."""
        if input_ids.dim() != 2 or not SHORTEST_SEQUENCE <= input_ids.shape[1] <= self.longest_sequence:
            return False
        if input_ids.numel() == 0:
            return False
        low, high = torch.aminmax(input_ids)
        types_low, types_high = torch.aminmax(token_type_ids)
        return bool(
            low >= 0
            and high < self.config.vocab_size
            and types_low >= 0
            and types_high < getattr(self.config, "type_vocab_size", 1)
        )

    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> Any:
        if not self.compiled_for(input_ids, token_type_ids) or attention_mask.shape != input_ids.shape:
            return self.eager(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        inputs = [t.to(torch.int64).contiguous() for t in (input_ids, attention_mask, token_type_ids)]
        outputs = self._run(inputs)
        return self._output_type(**dict(zip(self.output_fields, outputs, strict=True)))


def rounding_sensitivity(
    model: nn.Module, inputs: dict[str, torch.Tensor], reference: Any, options: AheadOfTimeOptions
) -> float:
    """How far the model's outputs on `inputs` move (the most of `options.noise_draws` draws) when its input
    embeddings move by a relative `options.noise`: how far float32 reordering travels through its 8-bit roundings.

    The embeddings are passed in (`inputs_embeds`), not changed by a hook: the model may be serving meanwhile."""
    lookup = typing.cast(Any, model).get_input_embeddings()
    if options.noise == 0:
        return 0.0
    generator = torch.Generator().manual_seed(0)
    moved = 0.0
    with torch.inference_mode():
        embedded = lookup(inputs["input_ids"])
        others = {name: t for name, t in inputs.items() if name != "input_ids"}
        for _ in range(options.noise_draws):
            nudged_embeddings = embedded * (1 + options.noise * torch.randn(embedded.shape, generator=generator))
            nudged = model(inputs_embeds=nudged_embeddings, **others)
            moved = max(moved, *(float((nudged[field] - want).abs().max()) for field, want in reference.items()))
    return moved


def compile_ahead(model: nn.Module, options: AheadOfTimeOptions) -> AheadOfTimeModel:
    """The eager packed `model` on a package of its structure (compiled now where none is cached), checked at load
    against the eager model on the check input within `options`' tolerance.

    Raises `AheadOfTimeUnavailableError` where it cannot be built here, `BackendMismatchError` past tolerance.
    """
    try:
        _, load_package = aot_inductor()
        model.eval()
        exported = _export(model)
        package = load_package(str(cached_package(exported, options.cache_dir)))
        names = package.get_constant_fqns()
        own = _constants(exported)
        # the folded ones (`_FOLDED_CONST_*`) are computed from these when they are handed over
        handed = {name: own[name] for name in names if name in own}
        package.load_constants(handed, check_full_update=False, user_managed=True)
    except InternalsChangedError as exc:
        raise AheadOfTimeUnavailableError(str(exc)) from exc
    except Exception as exc:  # export, Inductor and the package loader raise many types; all mean the same here
        reason = f"AOTInductor could not build the model: {type(exc).__name__}: {exc}"
        raise AheadOfTimeUnavailableError(reason) from exc
    del exported
    release_free_heap()  # the export's graph copies
    inputs = check_inputs(_config(model).vocab_size)
    with torch.inference_mode():
        reference = model(**inputs)
        ahead = AheadOfTimeModel(aot_package_runner(package), model, type(reference), list(reference.keys()))
        ours = ahead(**inputs)
    diff = max(float((ours[field] - want).abs().max()) for field, want in reference.items())
    limit = options.atol + options.rtol * max(float(want.abs().max()) for want in reference.values())
    limit += options.rounding_factor * rounding_sensitivity(model, inputs, reference, options)
    if not diff <= limit:  # also refuses NaN
        raise BackendMismatchError(
            f"the ahead-of-time compiled model differs from its eager packed model by {diff:.3g} (limit {limit:.3g})"
        )
    return ahead
