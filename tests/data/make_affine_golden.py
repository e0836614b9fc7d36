"""Golden vectors for lowbit's affine (PyTorch) fake-quantization mode.

Writes tests/data/affine_golden.json from PyTorch's CPU kernels:
torch.fake_quantize_per_tensor_affine / torch.fake_quantize_per_channel_affine
for the outputs, and aten::fake_quantize_per_{tensor,channel}_affine_cachemask
for the STE masks. tests/test_affine_golden.cpp checks lowbit against it bit
for bit (DESIGN.md §2, "Affine mode").

Regenerate (deterministic, fixed seed) with a Python that has torch, e.g.
Debian's python3-torch:

    /usr/bin/python3 tests/data/make_affine_golden.py

Every float is stored as its IEEE-754 binary32 bit pattern (uint32), so the
data is exact. Scales are float32 values (the per-tensor op takes a double and
casts it to float; we pass float32-representable doubles so nothing is lost).

Not covered on purpose: NaN and ±Inf (lowbit maps NaN to NaN, which differs
from PyTorch by design; PyTorch casts inf to int64, which is undefined), and
inputs with |x / scale| >= 2^63 (PyTorch's static_cast<int64_t> overflows and
on x86 yields INT64_MIN, i.e. the *low* clamp even for huge positive x).
16-bit grids are accepted by torch 1.13 for both per-tensor and per-channel,
so both unsigned [0, 65535] and signed [-32768, 32767] are included.
"""

import os

import numpy as np
import torch

from golden_common import bits_of, f32, grid, write_golden

SEED = 20240611
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "affine_golden.json")


def edge_inputs(s, zp, qmin, qmax):
    """Edge inputs for one (scale, zero point): ties, grid ends, huge, zeros."""
    s64 = float(f32(s))
    vals = []
    # Ties at ±0.5, ±1.5, ±2.5 steps: exact when s is a power of two, near
    # ties (where x*(1/s) rounding matters) otherwise.
    for k in (-3, -2, -1, 0, 1, 2):
        vals.append((k + 0.5) * s64)
    # Ties and steps around both grid ends (in units of q - zp).
    for q in (qmin, qmax):
        for d in (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5):
            vals.append((q - zp + d) * s64)
    base = np.array(vals, dtype=f32)
    near = np.concatenate([np.nextafter(base, f32(np.inf)), np.nextafter(base, f32(-np.inf))])
    # Large magnitudes (|x/s| stays far below 2^63), zeros, tiny and subnormal.
    special = np.array([1e6, -1e6, 1e12, -1e12, 0.0, -0.0, 1e-30, -1e-30, 1e-40, -1e-40],
                       dtype=f32)
    return np.concatenate([base, near, special]).astype(f32)


def random_inputs(rng, n, s, zp, qmin, qmax):
    """Normal values at a few spreads: fine (around 0), and covering the grid."""
    span = (qmax - qmin) * s
    center = ((qmin + qmax) / 2 - zp) * s
    sig = rng.choice([s, 4 * s, span / 6, span / 2], size=n)
    ctr = np.where(rng.random(n) < 0.5, 0.0, center)
    return (ctr + rng.standard_normal(n) * sig).astype(f32)


def record(cases, name, mode, x, y, mask, shape, axis, qmin, qmax, scale, zp):
    cases.append({
        "name": name,
        "mode": mode,
        "shape": list(shape),
        "axis": axis,
        "qmin": qmin,
        "qmax": qmax,
        "scale_bits": bits_of(np.asarray(scale, dtype=f32)),
        "zero_point": [int(z) for z in zp],
        "x_bits": bits_of(x),
        "y_bits": bits_of(y),
        "mask": [int(m) for m in np.asarray(mask).ravel()],
    })


def per_tensor_cases(rng, cases):
    fixed_scales = [("0.05", 0.05), ("0.1", 0.1), ("1/3", 1.0 / 3.0), ("2^-4", 2.0 ** -4)]
    for bits in (2, 4, 8, 16):
        for signed in (False, True):
            qmin, qmax = grid(bits, signed)
            scales = fixed_scales + [("rand", float(rng.uniform(0.01, 0.5)))]
            zps = [qmin, qmax, (qmin + qmax) // 2, int(rng.integers(qmin, qmax + 1)),
                   0 if signed else int(rng.integers(qmin, qmax + 1))]
            for i, (sname, s) in enumerate(scales):
                s = float(f32(s))  # exactly a float32
                zp = zps[i % len(zps)]
                x = np.concatenate([random_inputs(rng, 700 + 37 * i, s, zp, qmin, qmax),
                                    edge_inputs(s, zp, qmin, qmax)])
                xt = torch.from_numpy(x)
                y = torch.fake_quantize_per_tensor_affine(xt, s, zp, qmin, qmax)
                y2, mask = torch.ops.aten.fake_quantize_per_tensor_affine_cachemask(
                    xt, s, zp, qmin, qmax)
                assert torch.equal(y.view(torch.int32), y2.view(torch.int32))
                name = f"per_tensor_{'s' if signed else 'u'}{bits}_scale{sname}_zp{zp}"
                record(cases, name, "per_tensor", x, y.numpy(), mask.numpy(), [x.size], 0,
                       qmin, qmax, [s], [zp])


def per_channel_cases(rng, cases):
    fixed = np.array([0.05, 0.1, 1.0 / 3.0, 2.0 ** -4], dtype=f32)
    configs = [  # shape, axis (0, 1 and the last axis for every rank)
        ((37, 53), 0), ((37, 53), 1),
        ((5, 7, 41), 0), ((5, 7, 41), 1), ((5, 7, 41), 2),
        ((6, 5, 7, 9), 0), ((6, 5, 7, 9), 1), ((3, 4, 5, 13), 3),
    ]
    grids = [(2, False), (4, True), (8, False), (16, True),
             (2, True), (4, False), (8, True), (16, False)]
    for ci, (shape, axis) in enumerate(configs):
        for bits, signed in (grids[ci], grids[(ci + 3) % len(grids)]):
            qmin, qmax = grid(bits, signed)
            C = shape[axis]
            scale = rng.uniform(0.01, 0.5, size=C).astype(f32)
            scale[: min(C, len(fixed))] = fixed[: min(C, len(fixed))]  # a few fixed scales
            zp = rng.integers(qmin, qmax + 1, size=C)
            zp[0] = qmin
            zp[-1] = qmax
            if signed and C > 2:
                zp[1] = 0
            chan = np.indices(shape)[axis].ravel()
            n = chan.size
            x = np.empty(n, dtype=f32)
            for c in range(C):
                pos = np.nonzero(chan == c)[0]
                s = float(scale[c])
                xc = random_inputs(rng, pos.size, s, int(zp[c]), qmin, qmax)
                edges = edge_inputs(s, int(zp[c]), qmin, qmax)
                k = min(pos.size // 2, edges.size)
                xc[rng.permutation(pos.size)[:k]] = edges[rng.permutation(edges.size)[:k]]
                x[pos] = xc
            xt = torch.from_numpy(x.reshape(shape))
            st = torch.from_numpy(scale)
            zt = torch.from_numpy(zp.astype(np.int32))
            y = torch.fake_quantize_per_channel_affine(xt, st, zt, axis, qmin, qmax)
            y2, mask = torch.ops.aten.fake_quantize_per_channel_affine_cachemask(
                xt, st, zt, axis, qmin, qmax)
            assert torch.equal(y.view(torch.int32), y2.view(torch.int32))
            dims = "x".join(str(d) for d in shape)
            name = f"per_channel_{dims}_axis{axis}_{'s' if signed else 'u'}{bits}"
            record(cases, name, "per_channel", x, y.numpy(), mask.numpy(), shape, axis,
                   qmin, qmax, scale, zp)


def main():
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    cases = []
    per_tensor_cases(rng, cases)
    per_channel_cases(rng, cases)
    write_golden(OUT, f"tests/data/make_affine_golden.py, torch {torch.__version__} (CPU), "
                      f"numpy {np.__version__}, seed {SEED}", cases)

if __name__ == "__main__":
    main()
