"""lowbit's quantizers as PyTorch operators.

    import lowbit_torch                      # host/torch on sys.path
    lowbit_torch.load("build/host/torch/liblowbit_torch.so")
    y = lowbit_torch.fake_quant_per_channel_affine(w, scale, zero_point, 0, -8, 7)

Each function has the arguments and the results of the PyTorch or
TensorFlow op it names, bit for bit, outputs and gradients; the backward
reads a 1-bit mask saved by the forward (PyTorch keeps one byte per
element). Built with -DLOWBIT_TORCH=ON; CPU tensors always, CUDA tensors
when the libtorch it was built against has CUDA (on the current stream, no
host sync). lowbit_torch.nn has the modules.
"""

import os

import torch

__all__ = ["load", "fake_quant_per_tensor_affine", "fake_quant_per_channel_affine",
           "fake_quant_range", "fake_quant_weights", "new_ema_state", "ema_fake_quant",
           "ema_range", "lsq_fake_quant", "lsq_init_scale"]

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


def fake_quant_weights(w, num_bits, narrow_range=True, symmetric=True, axis=0, group_size=0):
    """TensorFlow's weight quantization (tf.contrib.quantize; lowbit's weight
    quantizer): the range of w itself per index of `axis` (None: one for the
    tensor), symmetric [-max|w|, max|w|] or [min(w), max(w)] over the finite
    weights, then fake_quant_range with it. group_size > 0 gives every run of
    group_size consecutive elements along the last dimension (which it must
    divide) its own range instead. dx = dy inside the range."""
    axis = -1 if axis is None or group_size else axis % w.dim()
    return torch.ops.lowbit.fake_quant_weights(w, num_bits, narrow_range, symmetric, axis,
                                               group_size)


def new_ema_state(device="cpu"):
    """A fresh EMA range observer state (range [0, 0], no batches seen) on
    `device`: a small byte tensor that only ema_fake_quant writes."""
    return torch.ops.lowbit.new_ema_state(torch.device(device))


def ema_fake_quant(x, state, num_bits=8, narrow_range=False, decay=0.999, lagged=False,
                   quant_delay=0, freeze_step=None):
    """TensorFlow's activation quantization (tf.contrib.quantize's
    MovingAvgQuantize): folds min(min(x), 0) and max(max(x), 0) into the
    zero-debiased EMA in `state` (in place, on x's device, without a host
    sync, so it can be captured in a CUDA graph), then fake_quant_range(x)
    with the EMA range. lagged quantizes with the range from before this batch
    in the same pass. The first quant_delay calls, and calls before any finite
    batch, return x (ranges still track); calls from freeze_step on leave the
    EMA as it is. dx = dy inside the range."""
    return torch.ops.lowbit.ema_fake_quant(x, state, num_bits, narrow_range, decay, lagged,
                                           quant_delay, -1 if freeze_step is None else freeze_step)


def ema_range(state):
    """The EMA range in `state` as a float32 tensor [min, max] (a view)."""
    return state[:8].view(torch.float32)


def lsq_init_scale(x, quant_min, quant_max, axis=None):
    """LSQ's initial step size from data: 2·mean|x|/sqrt(quant_max), per index
    of `axis` (None: one)."""
    return torch.ops.lowbit.lsq_init_scale(x, -1 if axis is None else axis % x.dim(), quant_min,
                                           quant_max)


from . import nn  # noqa: E402,F401  (the modules; needs the functions above)
