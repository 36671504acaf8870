"""The runtime: loading an artifact and running it on real integer kernels, consumed by the service, evaluation
and the bench. The offline algorithms (`quantization/`) choose the codes; this package decides how they are stored
in memory and multiplied.

- `int8_linear`: `Int8Linear`, a quantized Linear on oneDNN's int8 GEMM (codes unpacked to int8), and the custom
  op that runs it;
- `packed_linear`, `packed_kernels`, `kernels/`: `PackedLinear`, whose codes stay packed at their own width,
  multiplied by our AVX-512 VNNI kernel, and our attention kernel (the `packed` backend);
- `modules`: 8-bit embeddings and BERT self-attention with Q, K and V stacked into one quantized Linear;
- `building`: an artifact's inference model (`build_model`);
- `ahead_of_time`: the packed model compiled ahead of time by AOTInductor and run from C++ (the `aot` backend, the
  default), one package per model structure, cached on disk;
- `compiling`: the compiled backend (torch.compile), warmed up at load; `guard_skipping`: its warmed-up calls
  without Dynamo's full guard check where that is the same call;
- `openvino_backend`: the openvino backend (the artifact's codes, packed, in OpenVINO's CPU plugin);
- `loading`: `load_model`, which picks the backend, checks it against the reference (eager) one at load and falls
  back where a backend cannot run;
- `torch_internals`, `transformers_internals`: every use of those libraries' private APIs, behind capability
  checks; where one changed, the runtime degrades to the reference path with the reason logged.
"""

from quantization.runtime.building import build_model
from quantization.runtime.compiling import CompiledModel, as_eager, compile_model, warm_up, warm_up_compiled
from quantization.runtime.int8_linear import Int8Linear, onednn_int8_is_usable
from quantization.runtime.loaded import LoadedModel, check_inputs, random_inputs
from quantization.runtime.loading import build_for_backend, load_model
from quantization.runtime.modules import QuantizedEmbedding, StackedQKVSelfAttention

__all__ = [
    "CompiledModel",
    "Int8Linear",
    "LoadedModel",
    "QuantizedEmbedding",
    "StackedQKVSelfAttention",
    "as_eager",
    "build_for_backend",
    "build_model",
    "check_inputs",
    "compile_model",
    "load_model",
    "onednn_int8_is_usable",
    "random_inputs",
    "warm_up",
    "warm_up_compiled",
]
