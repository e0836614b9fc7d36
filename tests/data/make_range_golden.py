"""Golden vectors for lowbit's range (TensorFlow) fake-quantization family.

Writes tests/data/range_golden.json from TensorFlow's own CPU kernels:

  vars              tf.quantization.fake_quant_with_min_max_vars (per tensor)
                    and fake_quant_with_min_max_vars_gradient
  vars_per_channel  fake_quant_with_min_max_vars_per_channel and its gradient
                    (input [rows, d], one range per column)
  args              fake_quant_with_min_max_args and its gradient

for bits 2..16, narrow_range both ways, and ranges that straddle, touch or
exclude 0, with nudged zero points near .5, symmetric ranges, zero-width and
subnormal bounds. Inputs concentrate where implementations disagree: exact
ties of the grid and their ulp neighbours, the nudged ends and their
neighbours, signed zeros and subnormals, NaN and ±Inf. tests/test_range_golden.cpp
checks lowbit against this data bit for bit (docs/numerics.md, "Range mode").

Gradients use integer dy in [-8, 8], so d_min and d_max are exact in any
summation order and can be compared bit for bit too. A few cases use
non-finite dy. Every float is stored as its IEEE-754 binary32 bit pattern.

`deviations` holds the cases where lowbit differs on purpose (min == max != 0,
where TensorFlow divides by a zero scale); the test checks that TensorFlow
still does what docs/numerics.md says it does there.

Regenerate (deterministic, fixed seed) with a Python that has TensorFlow, e.g.
after `pip install tensorflow-cpu`:

    python3 tests/data/make_range_golden.py
"""

import os
import platform

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from golden_common import bits_of, f32, write_golden  # noqa: E402

SEED = 20261130
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "range_golden.json")
INF = f32(np.inf)


def nudge(lo, hi, qmin, qmax):
    """TensorFlow's Nudge() in float32, used only to place interesting inputs."""
    lo, hi = f32(lo), f32(hi)
    scale = (hi - lo) / (f32(qmax) - f32(qmin))
    zp = f32(qmin) - lo / scale
    away = np.copysign(np.floor(abs(float(zp)) + 0.5), float(zp))  # std::round
    nzp = f32(qmin) if zp < qmin else f32(qmax) if zp > qmax else f32(away)
    return (f32(qmin) - nzp) * scale, (f32(qmax) - nzp) * scale, scale


def neighbours(v, ulps):
    """v and its float32 neighbours up to `ulps` steps either way."""
    out = [f32(v)]
    up = down = f32(v)
    for _ in range(ulps):
        up = np.nextafter(up, INF)
        down = np.nextafter(down, -INF)
        out += [up, down]
    return out


def inputs_for(rng, lo, hi, qmin, qmax, n_random):
    """Ties, ends, zeros and specials around the nudged range, then random values."""
    nmin, nmax, scale = nudge(lo, hi, qmin, qmax)
    levels = qmax - qmin
    ks = {0, 1, levels - 2, levels - 1}
    ks |= set(int(k) for k in rng.integers(0, levels, size=min(levels, 10)))
    vals = []
    for k in sorted(k for k in ks if 0 <= k < levels):
        vals += neighbours(nmin + (f32(k) + f32(0.5)) * scale, 2)
    for end in (nmin, nmax):
        vals += neighbours(end, 1)
        vals += [end - scale, end + scale, end - f32(0.01) * scale, end + f32(0.01) * scale]
    tiny = np.nextafter(f32(0), INF)
    vals += [f32(0.0), f32(-0.0), tiny, -tiny, f32(1e-40), f32(-1e-40),
             np.finfo(f32).tiny, -np.finfo(f32).tiny, f32(np.nan), INF, -INF, f32(1e30), f32(-1e30)]
    width = float(nmax - nmin)
    vals += list(rng.uniform(float(nmin) - 2 * float(scale), float(nmax) + 2 * float(scale),
                             size=n_random).astype(f32))
    vals += list((rng.standard_normal(n_random // 4) * width / 4).astype(f32))
    x = np.array(vals, dtype=f32)
    return x[rng.permutation(x.size)]


def integer_dy(rng, n):
    """Non-zero integers in [-8, 8]: sums are exact in any order."""
    return (rng.integers(1, 9, size=n) * rng.choice([-1, 1], size=n)).astype(f32)


def ranges_for(rng, bits, narrow, variant):
    """(name, min, max) of the range kinds for one grid."""
    qmin, qmax = (1 if narrow else 0), (1 << bits) - 1
    step = f32(rng.uniform(0.01, 0.5))
    j = int(rng.integers(qmin, qmax))
    span = step * f32(qmax - qmin)
    half_lo = -(f32(j - qmin) + f32(0.5)) * step  # zero point from min lands on j + 0.5
    m = f32(rng.uniform(0.1, 5))
    kinds = [
        ("straddle", -f32(rng.uniform(0.1, 5)), f32(rng.uniform(0.1, 5))),
        ("touch", f32(0), m) if variant % 2 == 0 else ("touch", -m, f32(0)),
        ("exclude", f32(0.25) * m, m) if variant % 2 == 0 else ("exclude", -m, -f32(0.25) * m),
        ("zp_tie", half_lo, half_lo + span),
        ("symmetric", -m, m),
    ]
    return [(name, f32(lo), f32(hi)) for name, lo, hi in kinds]


def tf_case(name, op, bits, narrow, lo, hi, x, y, dy=None, dx=None, d_min=None, d_max=None):
    """One case: the inputs, and what TensorFlow gave for them."""
    case = {"name": name, "op": op, "bits": bits, "narrow_range": narrow,
            "shape": [int(d) for d in np.shape(x)]}
    fields = {"min_bits": np.atleast_1d(lo), "max_bits": np.atleast_1d(hi), "x_bits": x,
              "dy_bits": dy, "y_bits": y, "dx_bits": dx, "d_min_bits": d_min, "d_max_bits": d_max}
    for key, values in fields.items():
        if values is not None:
            case[key] = bits_of(np.atleast_1d(np.asarray(values, dtype=f32)))
    return case


def vars_case(name, bits, narrow, lo, hi, x, dy):
    y = tf.quantization.fake_quant_with_min_max_vars(
        x, lo, hi, num_bits=bits, narrow_range=narrow).numpy()
    dx, dmin, dmax = tf.quantization.fake_quant_with_min_max_vars_gradient(
        dy, x, lo, hi, num_bits=bits, narrow_range=narrow)
    return tf_case(name, "vars", bits, narrow, lo, hi, x, y, dy, dx.numpy(), dmin.numpy(),
                   dmax.numpy())


def per_channel_case(name, bits, narrow, los, his, x, dy):
    y = tf.quantization.fake_quant_with_min_max_vars_per_channel(
        x, los, his, num_bits=bits, narrow_range=narrow).numpy()
    dx, dmin, dmax = tf.quantization.fake_quant_with_min_max_vars_per_channel_gradient(
        dy, x, los, his, num_bits=bits, narrow_range=narrow)
    return tf_case(name, "vars_per_channel", bits, narrow, los, his, x, y, dy, dx.numpy(),
                   dmin.numpy(), dmax.numpy())


def args_case(name, bits, narrow, lo, hi, x, dy):
    y = tf.quantization.fake_quant_with_min_max_args(
        x, min=float(lo), max=float(hi), num_bits=bits, narrow_range=narrow).numpy()
    dx = tf.quantization.fake_quant_with_min_max_args_gradient(
        dy, x, min=float(lo), max=float(hi), num_bits=bits, narrow_range=narrow).numpy()
    return tf_case(name, "args", bits, narrow, lo, hi, x, y, dy, dx)


def grid_cases(rng, cases):
    for bits in range(2, 17):
        for narrow in (False, True):
            qmin, qmax = (1 if narrow else 0), (1 << bits) - 1
            tag = f"{bits}bit{'_narrow' if narrow else ''}"
            ranges = ranges_for(rng, bits, narrow, bits)
            for kind, lo, hi in ranges:
                x = inputs_for(rng, lo, hi, qmin, qmax, 48)
                cases.append(vars_case(f"vars_{tag}_{kind}", bits, narrow, lo, hi, x,
                                       integer_dy(rng, x.size)))
            # One column per range kind, plus a zero-width [0, 0] column.
            los = np.array([lo for _, lo, _ in ranges] + [0.0], dtype=f32)
            his = np.array([hi for _, _, hi in ranges] + [0.0], dtype=f32)
            columns = [inputs_for(rng, lo, hi, qmin, qmax, 40) for lo, hi in zip(los, his)
                       if lo < hi]
            rows = max(c.size for c in columns)
            x = np.empty((rows, los.size), dtype=f32)
            for d in range(los.size):
                src = columns[d] if d < len(columns) else inputs_for(rng, -1, 1, qmin, qmax, 40)
                x[:, d] = np.resize(src, rows)
            cases.append(per_channel_case(f"vars_per_channel_{tag}", bits, narrow, los, his,
                                          x, integer_dy(rng, x.size).reshape(x.shape)))
            for kind, lo, hi in (ranges[0], ranges[2]):
                x = inputs_for(rng, lo, hi, qmin, qmax, 32)
                cases.append(args_case(f"args_{tag}_{kind}", bits, narrow, lo, hi, x,
                                       integer_dy(rng, x.size)))


def special_cases(rng, cases):
    """Zero-width and subnormal ranges, and non-finite gradients."""
    x = inputs_for(rng, -1.0, 1.0, 0, 255, 24)
    dy = integer_dy(rng, x.size)
    for name, lo, hi in [("zero_width", 0.0, 0.0), ("zero_width_negative_zero", -0.0, 0.0),
                         ("subnormal_bounds", -1e-40, 1e-40), ("subnormal_max", 0.0, 1e-40),
                         ("subnormal_max_negative_min", -1.0, 1e-40),
                         ("subnormal_min", -1e-40, 2.0)]:
        cases.append(vars_case(f"vars_8bit_{name}", 8, False, f32(lo), f32(hi), x, dy))
    # Steps below 2·FLT_MIN: here TensorFlow's flushing of subnormal inputs and
    # of x - nudged_min decides levels, not only masks.
    for bits, lo, hi in [(2, -3e-38, 2e-38), (3, -1.2e-37, 1e-37)]:
        qmax = (1 << bits) - 1
        nmin, nmax, scale = nudge(lo, hi, 0, qmax)
        near = [v for k in range(-1, qmax + 2) for v in neighbours(nmin + f32(k) * scale, 3)]
        near += [nmin + f32(d) for d in (1.1e-38, 9e-39, 6e-39)]
        sub = [f32(v) for v in (1.1e-38, -1.1e-38, 9e-39, -9e-39, 5e-39, -5e-39, 1e-45, -1e-45,
                                0.0, -0.0)]
        xt = np.array(near + sub + list(rng.uniform(lo, hi, size=24).astype(f32)), dtype=f32)
        cases.append(vars_case(f"vars_{bits}bit_tiny_range", bits, False, f32(lo), f32(hi),
                               xt, integer_dy(rng, xt.size)))
    cols = np.stack([x, x[::-1]], axis=1)
    cases.append(per_channel_case("vars_per_channel_8bit_subnormal_bounds", 8, False,
                                  np.array([-1e-40, 0.0], dtype=f32),
                                  np.array([1e-40, 1e-40], dtype=f32), cols,
                                  integer_dy(rng, cols.size).reshape(cols.shape)))
    nonfinite = dy.copy()
    nonfinite[::7] = np.inf
    nonfinite[3::11] = -np.inf
    nonfinite[5::13] = np.nan
    cases.append(vars_case("vars_4bit_nonfinite_dy", 4, False, f32(-1.5), f32(2.0), x,
                           nonfinite))


def deviations():
    """min == max != 0: TensorFlow divides by a zero scale; lowbit gives 0."""
    x = np.array([-2.0, -1.0, -0.0, 0.0, 0.5, 1.0, 3.0], dtype=f32)
    out = []
    for v in (f32(1.0), f32(-0.5)):
        y = tf.quantization.fake_quant_with_min_max_vars(x, v, v, num_bits=8).numpy()
        out.append(tf_case(f"vars_min_equals_max_{v}", "vars", 8, False, v, v, x, y))
    return out


def main():
    rng = np.random.default_rng(SEED)
    cases = []
    grid_cases(rng, cases)
    special_cases(rng, cases)
    write_golden(OUT, f"tests/data/make_range_golden.py, tensorflow {tf.__version__} (CPU), "
                      f"numpy {np.__version__}, python {platform.python_version()} "
                      f"({platform.machine()}), seed {SEED}", cases, deviations=deviations())

if __name__ == "__main__":
    main()
