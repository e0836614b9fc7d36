"""Golden vectors for lowbit's learned step size (LSQ) quantizer.

Writes tests/data/lsq_golden.json from PyTorch's CPU kernels of
torch._fake_quantize_learnable_per_tensor_affine and
torch._fake_quantize_learnable_per_channel_affine (zero point 0), forward and
backward: y, dx and d_scale. tests/test_lsq_golden.cpp checks lowbit against
them (docs/numerics.md, "Learned step size").

Cases:
  per_tensor   one scale for the tensor, grad_factor 1/sqrt(n·qmax) as lowbit's
               gradient scale g; inputs avoid the grid-end bands (below), so
               PyTorch's d_scale is the same sum lowbit computes.
  per_element  the per-channel op with every element its own channel, so
               PyTorch returns each element's d_scale term (grad_factor
               1/sqrt(qmax), lowbit's g for one element per channel). Inputs
               include the bands.
  per_channel  real per-channel layouts, inputs avoiding the bands.

The bands are where PyTorch and Esser et al.'s definition, which lowbit
follows, disagree: PyTorch decides by the rounded level q = round(x/s), lowbit
by v = x/s itself, so for v in [qmin - 0.5, qmin] and [qmax, qmax + 0.5]
PyTorch passes dx = dy with d_scale term round(v) - v, and lowbit blocks dx
with d_scale term qmin or qmax.

Not covered: NaN and ±Inf inputs (PyTorch casts them to int64; lowbit keeps
NaN and clamps ±Inf), and |x/s| >= 2^63.

Gradients use dy = ±(1..8) so that dx is exact. Every float is stored as its
IEEE-754 binary32 bit pattern. Regenerate (deterministic, fixed seed) with a
Python that has torch, e.g. Debian's python3-torch:

    /usr/bin/python3 tests/data/make_lsq_golden.py
"""

import os
import platform

import numpy as np
import torch

from golden_common import bits_of, f32, grid, write_golden

SEED = 20261201
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lsq_golden.json")


def in_band(x, s, qmin, qmax):
    """Elements where PyTorch's rounded-level rule and Esser et al.'s differ."""
    v = x * (f32(1) / f32(s))
    q = np.rint(v)
    pytorch_passes = (q >= qmin) & (q <= qmax)
    paper_passes = (v > qmin) & (v < qmax)
    return pytorch_passes & ~paper_passes


def edge_inputs(s, qmin, qmax):
    """Ties, grid ends and their bands, ulp neighbours, signed zeros."""
    s = f32(s)
    vals = []
    levels = set(range(qmin - 2, qmin + 3)) | set(range(qmax - 2, qmax + 3))
    levels |= set(range(-2, 3)) | set(range(qmin, qmax + 1, max(1, (qmax - qmin) // 6)))
    for q in sorted(levels):
        for d in (-0.5, -0.3, 0.0, 0.3, 0.5):
            vals.append(f32(q + d) * s)
    vals += [f32(-0.4) * s, f32(-0.1) * s, f32(-1e-3) * s, f32(0.0), f32(-0.0),
             f32(1e-40), f32(-1e-40)]
    base = np.array(vals, dtype=f32)
    up = np.nextafter(base, f32(np.inf))
    down = np.nextafter(base, f32(-np.inf))
    return np.concatenate([base, up, down]).astype(f32)


def random_inputs(rng, n, s, qmin, qmax):
    lo, hi = (qmin - 3) * float(s), (qmax + 3) * float(s)
    return np.concatenate([rng.uniform(lo, hi, size=n // 2),
                           rng.standard_normal(n - n // 2) * (qmax - qmin) * float(s) / 4]
                          ).astype(f32)


def dy_for(rng, n):
    return (rng.integers(1, 9, size=n) * rng.choice([-1, 1], size=n)).astype(f32)


def learnable(x, scale, axis, qmin, qmax, grad_factor, dy):
    """PyTorch's forward and backward: y, dx and d_scale (per channel if axis is set)."""
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    st = torch.from_numpy(np.asarray(scale, dtype=f32).copy()).requires_grad_(True)
    zt = torch.zeros(st.numel(), dtype=torch.float32)
    if axis is None:
        y = torch._fake_quantize_learnable_per_tensor_affine(xt, st, zt, qmin, qmax, grad_factor)
    else:
        y = torch._fake_quantize_learnable_per_channel_affine(xt, st, zt, axis, qmin, qmax,
                                                              grad_factor)
    y.backward(torch.from_numpy(dy.copy()))
    return y.detach().numpy(), xt.grad.numpy(), st.grad.numpy()


def record(name, mode, shape, axis, qmin, qmax, scale, grad_factor, x, dy, y, dx, d_scale):
    return {"name": name, "mode": mode, "shape": list(shape), "axis": axis,
            "qmin": qmin, "qmax": qmax, "scale_bits": bits_of(scale),
            "grad_factor_bits": bits_of([grad_factor]), "x_bits": bits_of(x),
            "dy_bits": bits_of(dy), "y_bits": bits_of(y), "dx_bits": bits_of(dx),
            "d_scale_bits": bits_of(d_scale)}


def cases(rng):
    out = []
    for bits in (2, 3, 4, 8):
        for signed in (False, True):
            qmin, qmax = grid(bits, signed)
            tag = f"{'s' if signed else 'u'}{bits}"
            for s in (f32(rng.uniform(0.02, 0.5)), f32(0.125)):
                x = np.concatenate([random_inputs(rng, 160, s, qmin, qmax),
                                    edge_inputs(s, qmin, qmax)])
                x = x[~in_band(x, s, qmin, qmax)]
                g = float(f32(1.0 / np.sqrt(x.size * qmax)))
                dy = dy_for(rng, x.size)
                y, dx, ds = learnable(x, [s], None, qmin, qmax, g, dy)
                out.append(record(f"per_tensor_{tag}_scale{float(s):.4g}", "per_tensor",
                                  [x.size], 0, qmin, qmax, [s], g, x, dy, y, dx, ds))
            # Every element its own channel: per-element d_scale terms, bands included.
            s = f32(rng.uniform(0.02, 0.5))
            x = np.concatenate([random_inputs(rng, 64, s, qmin, qmax), edge_inputs(s, qmin, qmax)])
            scale = np.full(x.size, s, dtype=f32)
            g = float(f32(1.0 / np.sqrt(qmax)))
            dy = dy_for(rng, x.size)
            # (Shape [n, 1]: torch 1.13's backward fails on a 1-D per-channel input.)
            y, dx, ds = learnable(x.reshape(-1, 1), scale, 0, qmin, qmax, g, dy.reshape(-1, 1))
            out.append(record(f"per_element_{tag}", "per_element", [x.size, 1], 0, qmin, qmax,
                              scale, g, x, dy, y, dx, ds))
    for shape, axis, bits, signed in (((6, 5, 7, 9), 1, 4, False), ((9, 31), 0, 3, True),
                                      ((4, 3, 5), 2, 8, True)):
        qmin, qmax = grid(bits, signed)
        C = shape[axis]
        scale = rng.uniform(0.02, 0.5, size=C).astype(f32)
        chan = np.indices(shape)[axis].ravel()
        x = np.empty(chan.size, dtype=f32)
        for c in range(C):
            pos = np.nonzero(chan == c)[0]
            xc = random_inputs(rng, pos.size * 2, scale[c], qmin, qmax)
            xc = xc[~in_band(xc, scale[c], qmin, qmax)]
            x[pos] = xc[: pos.size]
        per_channel = int(np.prod(shape) // C)
        g = float(f32(1.0 / np.sqrt(per_channel * qmax)))
        dy = dy_for(rng, x.size)
        y, dx, ds = learnable(x.reshape(shape), scale, axis, qmin, qmax, g, dy.reshape(shape))
        dims = "x".join(str(d) for d in shape)
        out.append(record(f"per_channel_{dims}_axis{axis}_{'s' if signed else 'u'}{bits}",
                          "per_channel", shape, axis, qmin, qmax, scale, g, x, dy, y, dx, ds))
    return out


def main():
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    write_golden(OUT, f"tests/data/make_lsq_golden.py, torch {torch.__version__} (CPU), "
                      f"numpy {np.__version__}, python {platform.python_version()} "
                      f"({platform.machine()}), seed {SEED}", cases(rng))

if __name__ == "__main__":
    main()
