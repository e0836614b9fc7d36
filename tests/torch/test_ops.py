#!/usr/bin/env python3
"""lowbit_torch's operators against the frameworks' own. Affine: against
PyTorch's, on seeded random inputs, outputs and input gradients bit for bit
(float bits compared as integers), per tensor and per channel on every
axis, signed and unsigned grids of 2..8 bits, with exact ties and values
beyond the grid. Range: against TensorFlow's golden vectors, outputs and
dx, d_min, d_max bit for bit. LSQ: its forward against PyTorch's
learnable fake quant, and outputs and gradients against PyTorch's golden
vectors. Usage: test_ops.py LIBRARY."""

import json
import os
import sys
import unittest

import numpy
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "host",
                                "torch"))
import lowbit_torch  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data")
GRIDS = [(0, (1 << b) - 1) for b in (2, 4, 8)] + [(-(1 << (b - 1)), (1 << (b - 1)) - 1)
                                                   for b in (3, 4, 8)]


def same_bits(a, b):
    return a.shape == b.shape and torch.equal(a.contiguous().view(torch.int32),
                                              b.contiguous().view(torch.int32))


def inputs(shape, scale, generator):
    """Normal values spread over about twice the grid, and a quarter of them
    on exact ties (k + 0.5)·scale."""
    x = torch.randn(shape, generator=generator) * scale * 12
    ties = torch.rand(shape, generator=generator) < 0.25
    k = torch.randint(-20, 20, shape, generator=generator).float()
    return torch.where(ties, (k + 0.5) * scale, x)


def forward_backward(op, x, grad, *args):
    x = x.clone().requires_grad_()
    y = op(x, *args)
    y.backward(grad)
    return y.detach(), x.grad


class Affine(unittest.TestCase):
    def test_per_tensor_equals_torch(self):
        g = torch.Generator().manual_seed(1)
        for quant_min, quant_max in GRIDS:
            for shape in [(1,), (33,), (5, 7, 3), (2, 3, 4, 5)]:
                scale = float(torch.rand(1, generator=g)) * 0.2 + 1e-3
                zero_point = int(torch.randint(quant_min, quant_max + 1, (1,), generator=g))
                x = inputs(shape, scale, g)
                grad = torch.randn(shape, generator=g)
                ours = forward_backward(lowbit_torch.fake_quant_per_tensor_affine, x, grad, scale,
                                        zero_point, quant_min, quant_max)
                theirs = forward_backward(torch.fake_quantize_per_tensor_affine, x, grad, scale,
                                          zero_point, quant_min, quant_max)
                what = f"grid [{quant_min}, {quant_max}], shape {shape}"
                self.assertTrue(same_bits(ours[0], theirs[0]), "output, " + what)
                self.assertTrue(same_bits(ours[1], theirs[1]), "gradient, " + what)

    def test_per_channel_equals_torch_on_every_axis(self):
        g = torch.Generator().manual_seed(2)
        shape = (3, 5, 4, 6)
        for quant_min, quant_max in GRIDS:
            for axis in range(len(shape)):
                channels = shape[axis]
                scale = torch.rand(channels, generator=g) * 0.2 + 1e-3
                zero_point = torch.randint(quant_min, quant_max + 1, (channels,), generator=g,
                                           dtype=torch.int32)
                x = inputs(shape, float(scale.mean()), g)
                grad = torch.randn(shape, generator=g)
                ours = forward_backward(lowbit_torch.fake_quant_per_channel_affine, x, grad, scale,
                                        zero_point, axis, quant_min, quant_max)
                theirs = forward_backward(torch.fake_quantize_per_channel_affine, x, grad, scale,
                                          zero_point, axis, quant_min, quant_max)
                what = f"grid [{quant_min}, {quant_max}], axis {axis}"
                self.assertTrue(same_bits(ours[0], theirs[0]), "output, " + what)
                self.assertTrue(same_bits(ours[1], theirs[1]), "gradient, " + what)

    def test_non_contiguous_input(self):
        g = torch.Generator().manual_seed(3)
        x = inputs((6, 8), 0.05, g).t()  # a transposed view
        ours = lowbit_torch.fake_quant_per_tensor_affine(x, 0.05, 3, 0, 15)
        self.assertTrue(same_bits(ours, torch.fake_quantize_per_tensor_affine(x, 0.05, 3, 0, 15)))

    def test_bad_arguments_raise_clear_errors(self):
        x = torch.zeros(4, 3)
        with self.assertRaisesRegex(RuntimeError, "scale of channel 0 must be positive"):
            lowbit_torch.fake_quant_per_tensor_affine(x, -1.0, 0, 0, 15)
        with self.assertRaisesRegex(RuntimeError, "must be below qmax"):
            lowbit_torch.fake_quant_per_tensor_affine(x, 0.1, 0, 15, 0)
        with self.assertRaisesRegex(RuntimeError, "axis 2 is outside 0..1"):
            lowbit_torch.fake_quant_per_channel_affine(x, torch.ones(3), torch.zeros(3), 2, 0, 15)
        with self.assertRaisesRegex(RuntimeError, "scale must hold 3 values"):
            lowbit_torch.fake_quant_per_channel_affine(x, torch.ones(4), torch.zeros(3), 1, 0, 15)
        with self.assertRaisesRegex(RuntimeError, "must be float32"):
            lowbit_torch.fake_quant_per_tensor_affine(x.double(), 0.1, 0, 0, 15)
        with self.assertRaisesRegex(RuntimeError, "zero_point must be an integer tensor"):
            lowbit_torch.fake_quant_per_channel_affine(x, torch.ones(3), torch.zeros(3), 1, 0, 15)


def from_bits(bits, shape=None):
    t = torch.from_numpy(numpy.array(bits, dtype=numpy.uint32).view(numpy.float32).copy())
    return t.reshape(shape) if shape is not None else t


def bits_of(t):
    """Each float's bits, every NaN as one value ("nan"): which NaN a sum
    keeps depends on operand order (docs/numerics.md)."""
    values = t.detach().reshape(-1)
    bits = values.view(torch.int32).numpy().view(numpy.uint32).tolist()
    return ["nan" if v != v else b for v, b in zip(values.tolist(), bits)]


def golden_bits(bits):
    return bits_of(from_bits(bits))


class Range(unittest.TestCase):
    """TensorFlow's own outputs and gradients (tests/data/range_golden.json,
    from TensorFlow 2.21's CPU kernels): FakeQuantWithMinMaxVars and
    ...PerChannel (one range per column), every width and range kind there,
    bit for bit (NaN payloads aside). (...Args multiplies by the inverse scale where ...Vars
    divides; no operator here follows it.)"""

    def test_tensorflow_golden_vectors(self):
        with open(os.path.join(DATA, "range_golden.json"), encoding="utf-8") as f:
            cases = [c for c in json.load(f)["cases"] if c["op"] != "args"]
        self.assertGreater(len(cases), 150)
        for case in cases:
            with self.subTest(case["name"]):
                x = from_bits(case["x_bits"], case["shape"]).requires_grad_()
                lo = from_bits(case["min_bits"]).requires_grad_()
                hi = from_bits(case["max_bits"]).requires_grad_()
                if case["op"] == "vars_per_channel":
                    y = torch.ops.lowbit.fake_quant_range_per_channel(
                        x, lo, hi, x.dim() - 1, case["bits"], case["narrow_range"])
                else:
                    y = torch.ops.lowbit.fake_quant_range(x, lo, hi, case["bits"],
                                                          case["narrow_range"])
                self.assertEqual(bits_of(y), golden_bits(case["y_bits"]), "output")
                if "dy_bits" not in case:
                    continue
                y.backward(from_bits(case["dy_bits"], case["shape"]))
                self.assertEqual(bits_of(x.grad), golden_bits(case["dx_bits"]), "dx")
                if "d_min_bits" in case:
                    self.assertEqual(bits_of(lo.grad), golden_bits(case["d_min_bits"]), "d_min")
                    self.assertEqual(bits_of(hi.grad), golden_bits(case["d_max_bits"]), "d_max")

    def test_bad_arguments_raise_clear_errors(self):
        x = torch.zeros(4, 3)
        one, two = torch.zeros(1), torch.ones(1)
        with self.assertRaisesRegex(RuntimeError, "bits must be in 2..16"):
            torch.ops.lowbit.fake_quant_range(x, one, two, 1, False)
        with self.assertRaisesRegex(RuntimeError, "min and max must hold 3 values"):
            torch.ops.lowbit.fake_quant_range_per_channel(x, one, two, 1, 8, False)
        with self.assertRaisesRegex(RuntimeError, "min and max must hold 1 value"):
            torch.ops.lowbit.fake_quant_range(x, torch.zeros(3), torch.ones(3), 8, False)


CANONICAL_NAN = {torch.bfloat16: 0x7FC0, torch.float16: 0x7E00}


def rounded(y, dtype):
    """The float32 tensor y rounded to dtype once, every NaN lowbit's
    canonical one (docs/numerics.md), as 16-bit patterns."""
    bits = y.detach().to(dtype).view(torch.int16).clone()
    bits[torch.isnan(y.detach())] = CANONICAL_NAN[dtype]
    return bits


def half_bits(t):
    return t.detach().contiguous().view(torch.int16)


class HalfTensors(unittest.TestCase):
    """bfloat16 and float16 tensors: each op computes in float32 and rounds
    its result once, so its output equals the float32 op on the widened
    input, rounded (NaN as the canonical NaN), and its gradients equal the
    float32 gradients, rounded. The float32 affine side is PyTorch's own op;
    the range, EMA, weight and LSQ sides are lowbit's float32 ops, which the
    tests above hold to TensorFlow and PyTorch."""

    DTYPES = (torch.bfloat16, torch.float16)

    def half_inputs(self, shape, dtype, generator, spread=3.0, finite=False):
        """Normal values, -0 and (unless finite) NaN and +-Inf. PyTorch's
        affine ops differ from lowbit's on non-finite inputs
        (docs/numerics.md), so the comparison with them takes finite ones."""
        x = (torch.randn(shape, generator=generator) * spread).to(dtype)
        flat = x.view(-1)
        flat[::47] = -0.0
        if not finite:
            flat[::41] = float("nan")
            flat[::43] = float("inf")
            flat[::45] = -float("inf")
        return x

    def check(self, op_half, op_float, x, dy, what, params=()):
        """op(x) forward and backward at x's dtype against the float32 op on
        x.float() with dy.float(); float32 params get equal gradients."""
        dtype = x.dtype
        xh = x.clone().requires_grad_()
        ph = [p.clone().requires_grad_() for p in params]
        yh = op_half(xh, *ph)
        yh.backward(dy)
        xf = x.float().requires_grad_()
        pf = [p.clone().requires_grad_() for p in params]
        yf = op_float(xf, *pf)
        yf.backward(dy.float())
        self.assertEqual(yh.dtype, dtype, what)
        self.assertTrue(torch.equal(half_bits(yh), rounded(yf, dtype)), "output, " + what)
        self.assertTrue(torch.equal(half_bits(xh.grad), rounded(xf.grad, dtype)),
                        "gradient, " + what)
        for a, b in zip(ph, pf):
            self.assertTrue(same_bits(torch.nan_to_num(a.grad, nan=7.0),
                                      torch.nan_to_num(b.grad, nan=7.0)), "parameter, " + what)

    def test_affine_equals_torch_rounded_once(self):
        g = torch.Generator().manual_seed(11)
        for dtype in self.DTYPES:
            x = self.half_inputs((8, 5, 7), dtype, g, finite=True)
            dy = torch.randn((8, 5, 7), generator=g).to(dtype)
            self.check(lambda t: lowbit_torch.fake_quant_per_tensor_affine(t, 0.25, 3, 0, 15),
                       lambda t: torch.fake_quantize_per_tensor_affine(t, 0.25, 3, 0, 15),
                       x, dy, f"per tensor, {dtype}")
            ours = lambda t: lowbit_torch.fake_quant_per_tensor_affine(t, 0.25, 3, 0, 15)
            self.check(ours, ours, self.half_inputs((8, 5, 7), dtype, g), dy,
                       f"per tensor, non-finite inputs, {dtype}")
            scale = torch.rand(5, generator=g) * 0.5 + 0.05
            zero_point = torch.randint(-8, 8, (5,), generator=g, dtype=torch.int32)
            self.check(
                lambda t: lowbit_torch.fake_quant_per_channel_affine(t, scale, zero_point, 1, -8,
                                                                     7),
                lambda t: torch.fake_quantize_per_channel_affine(t, scale, zero_point, 1, -8, 7),
                x, dy, f"per channel, {dtype}")

    def test_range_and_its_gradients(self):
        g = torch.Generator().manual_seed(12)
        for dtype in self.DTYPES:
            x = self.half_inputs((6, 40), dtype, g)
            dy = torch.randn((6, 40), generator=g).to(dtype)
            for axis, channels in ((None, 1), (1, 40)):
                lo = -torch.rand(channels, generator=g) * 2
                hi = torch.rand(channels, generator=g) * 2
                for bits, narrow in ((2, False), (4, True), (8, False)):
                    op = lambda t, a, b: lowbit_torch.fake_quant_range(t, a, b, bits, narrow, axis)
                    self.check(op, op, x, dy, f"range axis {axis}, {bits}-bit, {dtype}",
                               params=(lo, hi))

    def test_weights_and_lsq(self):
        g = torch.Generator().manual_seed(13)
        for dtype in self.DTYPES:
            w = (torch.randn(6, 30, generator=g) * 0.3).to(dtype)
            dy = torch.randn(6, 30, generator=g).to(dtype)
            for kw in (dict(), dict(group_size=10), dict(symmetric=False, narrow_range=False)):
                op = lambda t: lowbit_torch.fake_quant_weights(t, 4, **kw)
                self.check(op, op, w, dy, f"weights {kw}, {dtype}")
            scale = lowbit_torch.lsq_init_scale(w.float(), -8, 7, axis=0)
            self.assertTrue(same_bits(scale, lowbit_torch.lsq_init_scale(w, -8, 7, axis=0)))
            op = lambda t, s: lowbit_torch.lsq_fake_quant(t, s, -8, 7, axis=0)
            self.check(op, op, w, dy, f"lsq, {dtype}", params=(scale,))

    def test_ema_tracks_the_widened_batches(self):
        g = torch.Generator().manual_seed(14)
        for dtype in self.DTYPES:
            for lagged in (False, True):
                half_state, float_state = lowbit_torch.new_ema_state(), lowbit_torch.new_ema_state()
                for step in range(6):
                    x = self.half_inputs((3000,), dtype, g, spread=1.0 + step)
                    if step == 3:
                        x[7] = float("inf")  # a batch the EMA skips
                    dy = torch.randn(3000, generator=g).to(dtype)
                    op = lambda state: lambda t: lowbit_torch.ema_fake_quant(
                        t, state, 4, decay=0.9, lagged=lagged, quant_delay=1)
                    self.check(op(half_state), op(float_state), x, dy,
                               f"ema step {step}, lagged {lagged}, {dtype}")
                    self.assertTrue(torch.equal(half_state, float_state))

    def test_other_types_raise_clear_errors(self):
        with self.assertRaisesRegex(RuntimeError, "must be float32, bfloat16 or float16"):
            lowbit_torch.fake_quant_range(torch.zeros(3, dtype=torch.float64), torch.zeros(1),
                                          torch.ones(1))


class Lsq(unittest.TestCase):
    def test_forward_equals_torch_learnable_fake_quant(self):
        g = torch.Generator().manual_seed(4)
        for quant_min, quant_max in GRIDS:
            x = inputs((4, 6, 5), 0.05, g)
            scale = torch.rand(1, generator=g) * 0.1 + 1e-3
            ours = torch.ops.lowbit.lsq_fake_quant(x, scale, quant_min, quant_max)
            theirs = torch._fake_quantize_learnable_per_tensor_affine(
                x, scale, torch.zeros(1), quant_min, quant_max, 1.0)
            self.assertTrue(same_bits(ours, theirs), f"per tensor [{quant_min}, {quant_max}]")
            for axis in range(3):
                scale = torch.rand(x.shape[axis], generator=g) * 0.1 + 1e-3
                ours = torch.ops.lowbit.lsq_fake_quant_per_channel(x, scale, axis, quant_min,
                                                                   quant_max)
                theirs = torch._fake_quantize_learnable_per_channel_affine(
                    x, scale, torch.zeros(x.shape[axis]), axis, quant_min, quant_max, 1.0)
                self.assertTrue(same_bits(ours, theirs), f"axis {axis} [{quant_min}, {quant_max}]")

    def test_pytorch_golden_vectors(self):
        """tests/data/lsq_golden.json (PyTorch 1.13's learnable fake quant,
        with lowbit's gradient scale as its grad_factor): y bit for bit;
        where the inputs avoid the bands at the grid ends, in which lowbit
        follows Esser et al. and PyTorch does not (docs/numerics.md), dx bit
        for bit too and d_scale to rounding (another summation order)."""
        with open(os.path.join(DATA, "lsq_golden.json"), encoding="utf-8") as f:
            cases = json.load(f)["cases"]
        for case in cases:
            with self.subTest(case["name"]):
                x = from_bits(case["x_bits"], case["shape"])
                scale = from_bits(case["scale_bits"]).requires_grad_()
                per_tensor = case["mode"] == "per_tensor"
                y = (torch.ops.lowbit.lsq_fake_quant(x, scale, case["qmin"], case["qmax"])
                     if per_tensor else torch.ops.lowbit.lsq_fake_quant_per_channel(
                         x, scale, case["axis"], case["qmin"], case["qmax"]))
                self.assertEqual(bits_of(y), golden_bits(case["y_bits"]), "output")
                if case["mode"] == "per_element":
                    continue
                x.requires_grad_()
                y = (torch.ops.lowbit.lsq_fake_quant(x, scale, case["qmin"], case["qmax"])
                     if per_tensor else torch.ops.lowbit.lsq_fake_quant_per_channel(
                         x, scale, case["axis"], case["qmin"], case["qmax"]))
                y.backward(from_bits(case["dy_bits"], case["shape"]))
                self.assertEqual(bits_of(x.grad), golden_bits(case["dx_bits"]), "dx")
                want = from_bits(case["d_scale_bits"])
                self.assertTrue(torch.allclose(scale.grad, want, rtol=1e-5, atol=1e-6),
                                f"d_scale {scale.grad} against PyTorch's {want}")


if __name__ == "__main__":
    lowbit_torch.load(sys.argv.pop(1) if len(sys.argv) > 1 else None)
    unittest.main()
