"""Golden vectors for lowbit's affine_params_from_range (PyTorch qparams).

Writes tests/data/affine_params_golden.json from PyTorch 1.13's observers:
torch.ao.quantization.PerChannelMinMaxObserver._calculate_qparams on given
per-channel ranges, built the way FakeQuantize builds it (explicit
quant_min/quant_max). tests/test_nn_ops.cpp checks lowbit::ref against it bit
for bit (scale as float32 bits, zero point exactly).

Regenerate (deterministic, fixed seed) with a Python that has torch, e.g.
Debian's python3-torch:

    /usr/bin/python3 tests/data/make_affine_params_golden.py

Grids: unsigned [0, 2^bits - 1] use torch.quint8; signed
[-2^(bits-1), 2^(bits-1) - 1] use torch.qint8, or torch.qint32 at 16 bits
(qint8 rejects ranges wider than 256 levels). The observer's symmetric zero
point is 0 for the signed dtypes and (quant_min + quant_max) // 2 for quint8.
Ranges: random ones over many magnitudes, ranges not containing 0 (min > 0,
max < 0), zero-width ranges, tiny ranges where scale hits eps =
torch.finfo(torch.float32).eps, exact rounding ties of min/scale, and ranges
whose width overflows float32 (scale = inf).
"""

import os

import numpy as np
import torch
from torch.ao.quantization.observer import PerChannelMinMaxObserver

from golden_common import bits_of, f32, grid, write_golden

SEED = 20240917
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "affine_params_golden.json")


def dtype_for(bits, signed):
    if not signed:
        return torch.quint8
    return torch.qint32 if bits > 8 else torch.qint8


def ranges(rng, qmin, qmax):
    """Per-channel [min, max] pairs (float32) for one grid."""
    lo, hi = [], []

    def add(a, b):
        lo.append(f32(a))
        hi.append(f32(b))

    # Random ranges containing 0, over magnitudes 1e-4 .. 1e4.
    for _ in range(48):
        mag = 10.0 ** rng.uniform(-4, 4)
        add(-abs(rng.normal()) * mag, abs(rng.normal()) * mag)
    # Ranges on one side of 0.
    for _ in range(8):
        mag = 10.0 ** rng.uniform(-3, 3)
        a, b = sorted(abs(rng.normal(size=2)) * mag)
        add(a, b)
        add(-b, -a)
    # Zero-width ranges.
    for v in (0.0, 0.5, -2.0, 1e-30, -3.75):
        add(v, v)
    # Tiny ranges: scale = max(scale, eps) takes eps.
    for a, b in ((-1e-9, 1e-9), (0.0, 1e-8), (-3e-7, 0.0), (-1e-7, 2e-7), (1e-10, 5e-10),
                 (-5e-38, 5e-38)):
        add(a, b)
    # Exact ties of min/scale (dyadic scale): round half to even decides.
    levels = qmax - qmin
    for s in (0.25, 0.125, 2.0 ** -10):
        for k in (0.5, 1.5, 2.5, 3.5):
            if k < levels:
                add(-k * s, (levels - k) * s)
    # Symmetric ties and exact halves.
    add(-1.0, 0.5)
    add(-0.5, 1.0)
    add(-levels / 2.0, levels / 2.0)
    # Width overflowing float32: scale = inf.
    add(-3e38, 3e38)
    return np.array(lo, dtype=f32), np.array(hi, dtype=f32)


def main():
    rng = np.random.default_rng(SEED)
    cases = []
    for bits in (2, 3, 4, 8, 16):
        for signed in (False, True):
            qmin, qmax = grid(bits, signed)
            lo, hi = ranges(rng, qmin, qmax)
            for symmetric in (False, True):
                obs = PerChannelMinMaxObserver(
                    ch_axis=0,
                    dtype=dtype_for(bits, signed),
                    qscheme=torch.per_channel_symmetric if symmetric else torch.per_channel_affine,
                    quant_min=qmin,
                    quant_max=qmax,
                )
                scale, zero_point = obs._calculate_qparams(torch.from_numpy(lo), torch.from_numpy(hi))
                assert scale.dtype == torch.float32
                cases.append({
                    "name": "%s%d_%s" % ("s" if signed else "u", bits,
                                         "symmetric" if symmetric else "affine"),
                    "qmin": qmin,
                    "qmax": qmax,
                    "symmetric": symmetric,
                    "min_bits": bits_of(lo),
                    "max_bits": bits_of(hi),
                    "scale_bits": bits_of(scale.numpy()),
                    "zero_point": [int(z) for z in zero_point.tolist()],
                })
    write_golden(OUT, "tests/data/make_affine_params_golden.py, torch %s (CPU), numpy %s, seed %d"
                 % (torch.__version__, np.__version__, SEED), cases)

if __name__ == "__main__":
    main()
