"""The runtimes we are measured against: PyTorch FP32, PyTorch `quantize_dynamic` int8, ONNX Runtime FP32 and
dynamic int8 (`onnxruntime.quantization.quantize_dynamic` on the FP32 export: what users of that peer ship), and
OpenVINO FP32 and INT8 (NNCF post-training quantization with `ModelType.TRANSFORMER` on calibration inputs:
what OpenVINO's users ship for BERT).

Every runner takes the same inputs (`input_ids`, `attention_mask`, `token_type_ids` as int64 tensors) and
returns the first output (logits) as a NumPy array, so the benchmark can check they agree before it times them.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from quantization.architectures import INPUT_NAMES
from quantization.runtime.loaded import OutputTuple

Inputs = dict[str, torch.Tensor]
Runner = Callable[[Inputs], np.ndarray]
ONNX_OPSET = 17


class FirstOutput(OutputTuple):
    """A Hugging Face model as a function of positional tensors to its first output (what ONNX export needs)."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> Any:
        return super().forward(input_ids, attention_mask, token_type_ids)[0]


def torch_runner(model: nn.Module) -> Runner:
    wrapped = FirstOutput(model).eval()

    def run(inputs: Inputs) -> np.ndarray:
        with torch.inference_mode():
            return wrapped(*(inputs[name] for name in INPUT_NAMES)).numpy()

    return run


def torch_dynamic_int8(model: nn.Module) -> nn.Module:
    """PyTorch's own dynamic quantization: int8 Linear weights, per-tensor dynamic activations (fbgemm)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def export_onnx(model: nn.Module, out_file: Path, sample: Inputs) -> Path:
    """FP32 ONNX export with dynamic batch and sequence axes (TorchScript exporter: seconds, not minutes)."""
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            FirstOutput(model).eval(),
            tuple(sample[name] for name in INPUT_NAMES),
            str(out_file),
            input_names=list(INPUT_NAMES),
            output_names=["output"],
            dynamic_axes=axes,
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    return out_file


def quantize_onnx_int8(fp32_file: Path, out_file: Path) -> Path:
    """ONNX Runtime's dynamic int8 quantization with its defaults (int8 weights, dynamic uint8 activations)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger("root").setLevel(logging.ERROR)  # its "consider pre-processing" notice
    quantize_dynamic(str(fp32_file), str(out_file), weight_type=QuantType.QInt8)
    return out_file


def ort_runner(model_file: Path, threads: int) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])

    def run(inputs: Inputs) -> np.ndarray:
        return session.run(None, {name: inputs[name].numpy() for name in INPUT_NAMES})[0]

    return run


CALIBRATION_INPUTS = 64  # what the NNCF quickstart for BERT uses, and what a new user's run did


def export_openvino(model: nn.Module, out_file: Path, sample: Inputs) -> Path:
    """OpenVINO's own conversion of the PyTorch FP32 model (dynamic batch and sequence), saved without FP16."""
    import openvino as ov

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        converted = ov.convert_model(FirstOutput(model).eval(), example_input=tuple(sample[n] for n in INPUT_NAMES))
    ov.save_model(converted, str(out_file), compress_to_fp16=False)
    return out_file


def quantize_openvino_int8(fp32_file: Path, out_file: Path, calibration: list[Inputs]) -> Path:
    """NNCF's post-training INT8 quantization for transformers (static activation ranges from `calibration`)."""
    import nncf
    import openvino as ov

    dataset = nncf.Dataset([{name: item[name].numpy() for name in INPUT_NAMES} for item in calibration])
    quantized = nncf.quantize(
        ov.Core().read_model(str(fp32_file)),
        dataset,
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(calibration),
    )
    ov.save_model(quantized, str(out_file), compress_to_fp16=False)
    return out_file


def openvino_default_inference_precision() -> str | None:
    """The float precision OpenVINO's CPU plugin runs unquantized ops in by default here (None: not installed)."""
    try:
        import openvino as ov
    except ImportError:
        return None
    precision = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
    return precision.get_type_name() if hasattr(precision, "get_type_name") else str(precision)  # "bf16", "f32"


def ov_runner(model_file: Path, threads: int, inference_precision: str | None = None) -> Runner:
    """OpenVINO's CPU plugin as its users compile it. `inference_precision` None keeps the plugin's default,
    which is bf16 on CPUs with AVX512_BF16 or AMX; the FP32 peer asks for "f32" so that it is FP32."""
    import openvino as ov

    config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if inference_precision is not None:
        config["INFERENCE_PRECISION_HINT"] = inference_precision
    compiled = ov.Core().compile_model(str(model_file), "CPU", config)
    request = compiled.create_infer_request()

    def run(inputs: Inputs) -> np.ndarray:
        request.infer({name: inputs[name].numpy() for name in INPUT_NAMES})
        return request.get_output_tensor(0).data.copy()

    return run
