"""Our kernels (`kernels/`): the packed low-bit GEMM (`lowbit_linear.cpp`), BERT attention (`attention.cpp`), the
LayerNorm of a residual sum (`layer_norm.cpp`) and whole BERT encoder layers composed of them (`encoder_layer.cpp`),
built on first use by torch's C++ extension loader, cached on disk, and gated on the CPU (AVX-512 with VNNI) and on a
compiler being there.

`packed_kernels()` returns the ops (`torch.ops.qbert_kernels`) or raises `KernelsUnavailableError` saying why; the
runtime then falls back to its oneDNN int8 path for that model, logged.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from quantization.system import cpu_kernel_flags

logger = logging.getLogger(__name__)

KERNEL_DIR = Path(__file__).with_name("kernels")
KERNEL_SOURCES = tuple(
    KERNEL_DIR / name for name in ("lowbit_linear.cpp", "attention.cpp", "layer_norm.cpp", "encoder_layer.cpp")
)
KERNEL_HEADERS = (KERNEL_DIR / "vector_math.h", KERNEL_DIR / "row_norm.h", KERNEL_DIR / "ops.h")
# The instructions the kernels are compiled for; `cpu_supported` (compiled in) checks the CPU has them.
COMPILE_FLAGS = ("-O3", "-std=c++17", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni", "-mfma")
# at::parallel_for runs on torch's OpenMP threads only when compiled with OpenMP (else one thread); the libgomp it
# links is the one torch has loaded already (same soname)
OPENMP_FLAGS = ("-fopenmp",)
CACHE_ENV = "QBERT_KERNEL_CACHE"


class KernelsUnavailableError(RuntimeError):
    """The packed kernels cannot run here: no AVX-512 VNNI, no C++ compiler, or the build failed."""


def kernel_cache_dir() -> Path:
    """Where built kernels are kept: one folder per source and torch release (`QBERT_KERNEL_CACHE` overrides the
    user cache)."""
    flags = " ".join(COMPILE_FLAGS + OPENMP_FLAGS)
    code = b"".join(path.read_bytes() for path in (*KERNEL_SOURCES, *KERNEL_HEADERS))
    digest = hashlib.sha256(code + flags.encode()).hexdigest()[:12]
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "qbert" / "kernels")
    return root / f"torch-{torch.__version__.split('+')[0]}-{digest}"


def _load_built(library: Path) -> bool:
    """Load the library where it is built already (for exactly these sources, flags and torch release: the folder's
    name); False where it is not, or is still being written by another process (the build then waits for it)."""
    if not library.exists():
        return False
    try:
        torch.ops.load_library(str(library))
    except OSError:
        return False
    return True


def _build(build_dir: Path, name: str) -> None:
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        raise KernelsUnavailableError("no C++ compiler (c++ or $CXX) to build the packed kernels")
    from torch.utils import cpp_extension

    build_dir.mkdir(parents=True, exist_ok=True)
    logger.info("building the packed kernels in %s (once per machine)", build_dir)
    cpp_extension.load(
        name=name,
        sources=[str(p) for p in KERNEL_SOURCES],
        extra_cflags=[*COMPILE_FLAGS, *OPENMP_FLAGS],
        extra_ldflags=list(OPENMP_FLAGS),
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=False,
    )


def unavailable_reason() -> str | None:
    """Why the packed kernels cannot run here, or None (builds them, once per process, where they can)."""
    try:
        packed_kernels()
    except KernelsUnavailableError as exc:
        return str(exc)
    return None


@functools.cache
def packed_kernels() -> Any:
    """The ops, loaded from the cache (or built there first) once per process."""
    flags = cpu_kernel_flags()
    if "avx512_vnni" not in flags or "avx512f" not in flags:
        raise KernelsUnavailableError(f"the CPU has no AVX-512 VNNI (kernel flags: {', '.join(flags) or 'none'})")
    build_dir = kernel_cache_dir()
    name = f"qbert_kernels_{build_dir.name.replace('.', '_').replace('-', '_')}"
    library = build_dir / f"{name}.so"
    try:
        if not _load_built(library):
            _build(build_dir, name)
        ops = torch.ops.qbert_kernels
        supported = bool(ops.cpu_supported())
    except KernelsUnavailableError:
        raise
    except Exception as exc:  # the compiler, ninja and the loader raise many types; all mean the same here
        raise KernelsUnavailableError(f"the packed kernels did not build: {type(exc).__name__}: {exc}") from exc
    if not supported:
        raise KernelsUnavailableError("the CPU lacks an instruction set the packed kernels were compiled for")
    _register_fakes()
    _tag_compile_caches(build_dir.name)
    logger.info("packed low-bit kernels ready (%s)", build_dir)
    return ops


def _tag_compile_caches(kernels_version: str) -> None:
    """Make torch.compile's on-disk caches key on these kernels' build (sources, flags, torch release). The graphs
    Inductor caches call our ops by name, with their arguments as the schema was when compiled: a cached graph
    from before a schema change would call the new kernels with the old arguments (seen: a new trailing argument
    read as garbage). The kernels are loaded once per process, so the process's tag is theirs."""
    config = torch.compiler.config
    if not hasattr(config, "cache_key_tag"):  # torch before 2.6: no tag; compiled graphs then key on the graph only
        logger.warning("this torch cannot tag its compile caches: clear them after a qbert upgrade")
        return
    tag = f"qbert-kernels-{kernels_version}"
    if tag not in config.cache_key_tag.split(";"):
        config.cache_key_tag = ";".join(filter(None, (config.cache_key_tag, tag)))


def attention_bf16_supported() -> bool:
    """Whether the attention kernel can take bf16 operands here (AVX-512 BF16; the kernels must run at all)."""
    return unavailable_reason() is None and bool(packed_kernels().bf16_supported())


def _register_fakes() -> None:
    """The ops' output shapes, for torch.compile's tracing."""

    @torch.library.register_fake("qbert_kernels::linear")
    def _linear(x, packed, bits, rows, row_scale, row_zero, bias, gelu=False):  # noqa: ANN001, ANN202 (schema types)
        return x.new_empty((x.shape[0], rows))

    @torch.library.register_fake("qbert_kernels::linear_add_layer_norm")
    def _linear_add_layer_norm(x, packed, bits, rows, *_):  # noqa: ANN001, ANN002, ANN202
        return x.new_empty((x.shape[0], rows))

    @torch.library.register_fake("qbert_kernels::attention")
    def _attention(qkv, mask, scale, products):  # noqa: ANN001, ANN202
        batch, seq, _, heads, dim = qkv.shape
        return qkv.new_empty((batch, seq, heads * dim))

    @torch.library.register_fake("qbert_kernels::encoder_layers")
    def _encoder_layers(hidden, *_):  # noqa: ANN001, ANN002, ANN202
        return torch.empty_like(hidden)

    @torch.library.register_fake("qbert_kernels::add_layer_norm")
    def _add_layer_norm(x, residual, weight, bias, eps):  # noqa: ANN001, ANN202
        return torch.empty_like(x)
