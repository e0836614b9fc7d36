"""lowbit's quantizers as PyTorch operators.

    import lowbit_torch                      # host/torch on sys.path
    lowbit_torch.load("build/host/torch/liblowbit_torch.so")
    y = lowbit_torch.fake_quant_per_channel_affine(w, scale, zero_point, 0, -8, 7)

Each function has the arguments and the results of the torch op it names,
bit for bit, outputs and gradients; the backward reads a 1-bit mask saved by
the forward (PyTorch keeps one byte per element). Built with
-DLOWBIT_TORCH=ON (CPU tensors of float32 so far).
"""

import os

import torch

__all__ = ["load", "fake_quant_per_tensor_affine", "fake_quant_per_channel_affine"]

_DEFAULT_LIBRARY = os.path.join(os.path.dirname(__file__), "..", "..", "..", "build", "host",
                                "torch", "liblowbit_torch.so")


def load(path=None):
    """Loads the operators: `path`, else $LOWBIT_TORCH_LIBRARY, else the
    library of a build in build/ beside this source tree."""
    path = path or os.environ.get("LOWBIT_TORCH_LIBRARY") or os.path.normpath(_DEFAULT_LIBRARY)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no lowbit_torch library at {path} "
                                "(build with -DLOWBIT_TORCH=ON, or pass its path)")
    torch.ops.load_library(path)


def fake_quant_per_tensor_affine(x, scale, zero_point, quant_min, quant_max):
    """torch.fake_quantize_per_tensor_affine(x, scale, zero_point, quant_min,
    quant_max), bit for bit."""
    return torch.ops.lowbit.fake_quant_per_tensor_affine(x, float(scale), int(zero_point),
                                                         quant_min, quant_max)


def fake_quant_per_channel_affine(x, scale, zero_point, axis, quant_min, quant_max):
    """torch.fake_quantize_per_channel_affine(x, scale, zero_point, axis,
    quant_min, quant_max), bit for bit."""
    return torch.ops.lowbit.fake_quant_per_channel_affine(x, scale, zero_point, axis, quant_min,
                                                          quant_max)
