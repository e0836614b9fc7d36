"""lowbit's quantizers as torch.ao.quantization fake-quantize modules.

Each module derives from torch.ao.quantization.FakeQuantizeBase and has
with_args(), so it goes into a QConfig and through prepare_qat() in eager
mode where torch's FakeQuantize would:

    import lowbit_torch.nn as lnn
    model.qconfig = torch.ao.quantization.QConfig(
        activation=lnn.FakeQuantize.with_args(bits=4),
        weight=lnn.WeightFakeQuantize.with_args(bits=4))
    torch.ao.quantization.prepare_qat(model, inplace=True)

or it can be called directly, like any module. Call lowbit_torch.load()
first. The state (EMA observer, step counts, LSQ scales) lives in buffers
and parameters on the module's device: .to(device) and state_dict() carry
it, and training steps never synchronize with the host.

enable_fake_quant(False) passes x through; enable_observer(False) freezes
the ranges (as eval mode does). torch.ao.quantization.convert() cannot use
these modules: torch's quantized kernels take 8-bit quint8/qint8 tensors with
PyTorch's rounding, not TensorFlow's nudged grids at 2..16 bits.
calculate_qparams() still reports the grid as (scale, zero_point) on
[quant_min, quant_max].
"""

import torch
from torch.ao.quantization import FakeQuantizeBase

import lowbit_torch as _ops

__all__ = ["FakeQuantize", "WeightFakeQuantize", "LsqFakeQuantize"]


def _nudged_qparams(lo, hi, quant_min, quant_max):
    """TensorFlow's nudging of [lo, hi] onto [quant_min, quant_max]:
    scale = (hi - lo)/(quant_max - quant_min), zero point = the level of 0,
    rounded half away from zero and clamped to the grid (quant_min where the
    range is empty)."""
    scale = (hi - lo) / float(quant_max - quant_min)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    from_min = quant_min - lo / safe
    rounded = torch.sign(from_min) * torch.floor(from_min.abs() + 0.5)
    zero_point = torch.where(scale > 0, rounded.clamp(quant_min, quant_max),
                             torch.full_like(rounded, quant_min))
    return scale, zero_point.to(torch.int32)


class _Switchable(FakeQuantizeBase):
    """FakeQuantizeBase with its on/off switches mirrored in Python, so that
    forward() branches without reading a device tensor."""

    def __init__(self):
        super().__init__()
        self._quantize = True
        self._observe = True

    def enable_fake_quant(self, enabled=True):
        super().enable_fake_quant(enabled)
        self._quantize = bool(enabled)

    def enable_observer(self, enabled=True):
        super().enable_observer(enabled)
        self._observe = bool(enabled)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._quantize = bool(self.fake_quant_enabled[0])
        self._observe = bool(self.observer_enabled[0])


def _device(device, factory_kwargs):
    return device or (factory_kwargs or {}).get("device") or "cpu"


class FakeQuantize(_Switchable):
    """TensorFlow's activation quantizer (tf.contrib.quantize's
    MovingAvgQuantize: an EMA of the range, then FakeQuantWithMinMaxVars),
    per tensor, on the grid [narrow_range, 2^bits - 1].

    Training mode (observer on): lowbit_torch.ema_fake_quant. The batch range
    [min(min(x), 0), max(max(x), 0)] goes into the zero-debiased EMA of decay
    `decay` (a batch with a non-finite min or max is skipped and counted), and
    x is fake-quantized with the range after this update (lagged=False,
    TensorFlow's order) or before it (lagged=True, one pass). The first
    quant_delay training calls pass x through while the range already tracks;
    calls from freeze_step on leave the EMA as it is.

    Eval mode, or observer off: no update; y = fake_quant_range(x,
    ema_range(state)), which equals, bit for bit, what ema_fake_quant gives
    in exact mode after the update that produced this range (the same nudged
    range and the same kernel). x passes through while the calls so far are
    fewer than quant_delay or no finite batch has been seen, as in
    lowbit's own evaluation. dx = dy inside the nudged range, else 0.

    The state is the `ema_state` buffer (lowbit's EmaRangeState bytes);
    `range` returns its [min, max].
    """

    def __init__(self, bits=8, narrow_range=False, decay=0.999, lagged=False, quant_delay=0,
                 freeze_step=None, device=None, factory_kwargs=None):
        super().__init__()
        if not 2 <= bits <= 16:
            raise ValueError(f"bits must be 2..16, got {bits}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.bits, self.narrow_range, self.decay = bits, narrow_range, decay
        self.lagged, self.quant_delay, self.freeze_step = lagged, quant_delay, freeze_step
        self.quant_min, self.quant_max = int(narrow_range), (1 << bits) - 1
        self.register_buffer("ema_state", _ops.new_ema_state(_device(device, factory_kwargs)))

    @property
    def range(self):
        """The EMA range [min, max] (a float32 view of the state)."""
        return _ops.ema_range(self.ema_state)

    def _counter(self, offset):
        return self.ema_state[offset:offset + 8].view(torch.int64)

    def forward(self, x):
        if self.training and self._observe:
            y = _ops.ema_fake_quant(x, self.ema_state, self.bits, self.narrow_range, self.decay,
                                    self.lagged, self.quant_delay, self.freeze_step)
            return y if self._quantize else x
        if not self._quantize:
            return x
        lo_hi = self.range.clone()
        y = _ops.fake_quant_range(x, lo_hi[0:1], lo_hi[1:2], self.bits, self.narrow_range)
        steps, updates = self._counter(16), self._counter(24)
        return torch.where((steps >= self.quant_delay) & (updates > 0), y, x)

    @torch.jit.export
    def calculate_qparams(self):
        lo_hi = self.range.clone()
        return _nudged_qparams(lo_hi[0:1], lo_hi[1:2], self.quant_min, self.quant_max)

    def extra_repr(self):
        return (f"bits={self.bits}, narrow_range={self.narrow_range}, decay={self.decay}, "
                f"lagged={self.lagged}, quant_delay={self.quant_delay}, "
                f"freeze_step={self.freeze_step}")


class WeightFakeQuantize(_Switchable):
    """TensorFlow's weight quantizer (tf.contrib.quantize; lowbit's weight
    FakeQuant): lowbit_torch.fake_quant_weights, i.e.
    FakeQuantWithMinMaxVarsPerChannel on `axis` (axis=None: ...MinMaxVars,
    one range) with the range of the weights themselves, symmetric
    [-max|w|, max|w|] on the narrow grid [1, 2^bits - 1] by default, or
    [min(w), max(w)]. group_size > 0: a range for each run of group_size
    consecutive weights along the last dimension. dx = dy inside the range.

    The first quant_delay training calls (counted in the `steps` buffer) pass
    w through, as TensorFlow's quant_delay holds back weights too; eval calls
    do not count.
    """

    def __init__(self, bits=8, narrow_range=True, symmetric=True, axis=0, group_size=0,
                 quant_delay=0, device=None, factory_kwargs=None):
        super().__init__()
        if not 2 <= bits <= 16:
            raise ValueError(f"bits must be 2..16, got {bits}")
        self.bits, self.narrow_range, self.symmetric = bits, narrow_range, symmetric
        self.axis, self.group_size, self.quant_delay = axis, group_size, quant_delay
        self.ch_axis = axis  # torch's name, which prepare_qat and its utilities read
        self.quant_min, self.quant_max = int(narrow_range), (1 << bits) - 1
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64,
                                                  device=_device(device, factory_kwargs)))
        self._last = None

    def forward(self, w):
        if self._observe:
            self._last = w.detach()
        if not self._quantize:
            return w
        y = _ops.fake_quant_weights(w, self.bits, self.narrow_range, self.symmetric, self.axis,
                                    self.group_size)
        if self.quant_delay <= 0:
            return y
        quantizes = self.steps >= self.quant_delay
        if self.training:
            self.steps += 1
        return torch.where(quantizes, y, w)

    @torch.jit.export
    def calculate_qparams(self):
        """The grid of the last weights seen, per channel of `axis`."""
        if self._last is None:
            raise RuntimeError("WeightFakeQuantize has seen no weights yet")
        w = self._last
        flat = w.reshape(1, -1) if self.axis is None else w.movedim(self.axis, 0).flatten(1)
        finite = torch.isfinite(flat)
        if self.symmetric:
            hi = torch.where(finite, flat.abs(), torch.zeros_like(flat)).amax(1)
            lo = -hi
        else:
            lo = torch.where(finite, flat, torch.zeros_like(flat)).amin(1).clamp(max=0)
            hi = torch.where(finite, flat, torch.zeros_like(flat)).amax(1).clamp(min=0)
        return _nudged_qparams(lo, hi, self.quant_min, self.quant_max)

    def extra_repr(self):
        return (f"bits={self.bits}, narrow_range={self.narrow_range}, "
                f"symmetric={self.symmetric}, axis={self.axis}, group_size={self.group_size}, "
                f"quant_delay={self.quant_delay}")


class LsqFakeQuantize(_Switchable):
    """The learned step size quantizer (LSQ, Esser et al. 2019):
    lowbit_torch.lsq_fake_quant, y = clamp(round_half_even(x/s), quant_min,
    quant_max)·s, the forward of torch._fake_quantize_learnable_per_tensor_affine
    (axis None) or ..._per_channel_affine (`channels` scales on `axis`) at zero
    point 0, bit for bit. The grid is [0, 2^bits - 1], or
    [-2^(bits-1), 2^(bits-1) - 1] when signed (weights; activations that can
    be negative). The step size `scale` is an nn.Parameter with Esser et al.'s
    gradient, scaled by 1/sqrt(elements per scale · quant_max). The first
    forward with the observer on sets it from the data: lsq_init_scale,
    2·mean|x|/sqrt(quant_max) per scale. Per channel needs `channels` up
    front, so that the optimizer can hold the parameter from the start.
    """

    def __init__(self, bits=8, signed=False, axis=None, channels=None, device=None,
                 factory_kwargs=None):
        super().__init__()
        if not 2 <= bits <= 16:
            raise ValueError(f"bits must be 2..16, got {bits}")
        if axis is not None and channels is None:
            raise ValueError("per-channel LSQ (axis given) needs `channels`")
        self.bits, self.signed, self.axis = bits, signed, axis
        self.ch_axis = axis
        self.quant_min, self.quant_max = ((-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed
                                          else (0, (1 << bits) - 1))
        device = _device(device, factory_kwargs)
        self.scale = torch.nn.Parameter(torch.ones(1 if axis is None else channels,
                                                   device=device))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.uint8, device=device))
        self._initialized = False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._initialized = bool(self.initialized)

    def forward(self, x):
        if self._observe and not self._initialized:
            with torch.no_grad():
                self.scale.copy_(_ops.lsq_init_scale(x, self.quant_min, self.quant_max,
                                                     self.axis).view_as(self.scale))
                self.initialized.fill_(1)
            self._initialized = True
        if not self._quantize:
            return x
        return _ops.lsq_fake_quant(x, self.scale, self.quant_min, self.quant_max, self.axis)

    @torch.jit.export
    def calculate_qparams(self):
        s = self.scale.detach()
        return s, torch.zeros_like(s, dtype=torch.int32)

    def extra_repr(self):
        return f"bits={self.bits}, signed={self.signed}, axis={self.axis}"
