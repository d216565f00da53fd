"""Latency as these networks are deployed: exported to ONNX and run by ONNX Runtime on the CPU."""

from __future__ import annotations

import copy
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lnrepro.profiling.context import InputSize, input_shape, percentile
from lnrepro.profiling.timing import _timed


@dataclass
class OnnxLatency:
    median_ms: float  # batch 1, ONNX Runtime's CPU execution provider
    p90_ms: float
    max_abs_diff: float  # ONNX Runtime's logits against PyTorch's on the same image
    onnx_bytes: int
    runtime_version: str
    threads: int


def onnx_latency(model: nn.Module, input_size: InputSize, runs: int = 50, warmup: int = 5,
                 save_to: str | Path | None = None, threads: int | None = None) -> OnnxLatency:
    """Export `model` (a float32 CPU copy, eval mode) to ONNX (opset 17) and time `runs` batch-1 inferences of
    ONNX Runtime after `warmup`; the model itself is left untouched. `save_to` keeps the .onnx file."""
    import onnxruntime

    exported = copy.deepcopy(model).float().cpu().eval()
    image = torch.randn(1, *input_shape(input_size))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript-based exporter (dynamo=False): the torch.export-based default needs onnxscript and gives
        # nothing more for these static convolutional networks. It warns that it is the legacy path.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(exported, (image,), buffer, dynamo=False, input_names=["images"],
                          output_names=["logits"], opset_version=17)
    model_bytes = buffer.getvalue()
    if save_to is not None:
        Path(save_to).write_bytes(model_bytes)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    session = onnxruntime.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    feed = {"images": image.numpy()}
    ms = [1000 * s for s in _timed(lambda: session.run(None, feed), torch.device("cpu"), runs, warmup)]
    with torch.no_grad():
        expected = exported(image).numpy()
    difference = float(abs(session.run(None, feed)[0] - expected).max())
    return OnnxLatency(percentile(ms, 50), percentile(ms, 90), difference, len(model_bytes),
                       onnxruntime.__version__, options.intra_op_num_threads)
