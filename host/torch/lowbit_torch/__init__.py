"""lowbit's quantizers as PyTorch operators.

    import lowbit_torch                      # host/torch on sys.path
    lowbit_torch.load("build/host/torch/liblowbit_torch.so")
    y = lowbit_torch.fake_quant_per_channel_affine(w, scale, zero_point, 0, -8, 7)

Each function has the arguments and the results of the PyTorch or
TensorFlow op it names, bit for bit, outputs and gradients; the backward
reads a 1-bit mask saved by the forward (PyTorch keeps one byte per
element). Built with -DLOWBIT_TORCH=ON (CPU tensors of float32 so far).
"""

import os

import torch

__all__ = ["load", "fake_quant_per_tensor_affine", "fake_quant_per_channel_affine",
           "fake_quant_range", "lsq_fake_quant"]

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


def fake_quant_range(x, min, max, num_bits=8, narrow_range=False, axis=None):
    """TensorFlow's tf.quantization.fake_quant_with_min_max_vars (axis None:
    min and max hold one value) or ..._per_channel (a range per index of
    `axis`; TensorFlow's is the last), bit for bit, with the gradients of its
    ..._gradient ops for x, min and max."""
    if axis is None:
        return torch.ops.lowbit.fake_quant_range(x, min, max, num_bits, narrow_range)
    return torch.ops.lowbit.fake_quant_range_per_channel(x, min, max, axis % x.dim(), num_bits,
                                                         narrow_range)


def lsq_fake_quant(x, scale, quant_min, quant_max, axis=None):
    """The learned step size quantizer: the forward of
    torch._fake_quantize_learnable_per_tensor_affine (axis None) or
    ..._per_channel_affine with zero point 0, bit for bit; the backward of
    Esser et al. (2019), d_scale scaled by 1/sqrt(elements per scale · quant_max)."""
    if axis is None:
        return torch.ops.lowbit.lsq_fake_quant(x, scale, quant_min, quant_max)
    return torch.ops.lowbit.lsq_fake_quant_per_channel(x, scale, axis % x.dim(), quant_min,
                                                       quant_max)
