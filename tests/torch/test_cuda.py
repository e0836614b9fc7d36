#!/usr/bin/env python3
"""lowbit_torch's CUDA path against its CPU path: every op on CUDA tensors
gives the outputs and gradients of the same op on CPU tensors bit for bit
(lowbit::cuda equals lowbit::ref, which the CPU path equals), and the EMA
op captured in a CUDA graph and replayed tracks the same ranges as eager
CPU calls. Needs a GPU and a libtorch with CUDA; scripts/gpu-check.sh phase
4 runs it. Usage: test_cuda.py LIBRARY."""

import os
import sys
import unittest

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "host",
                                "torch"))
import lowbit_torch  # noqa: E402

CUDA = torch.device("cuda")


def same_bits(a, b):
    a, b = a.detach().cpu().contiguous(), b.detach().cpu().contiguous()
    bits = torch.int16 if a.element_size() == 2 else torch.int32
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(bits), b.view(bits))


def on_both(op, x, dy, *args):
    """(y, dx) and any float tensor arguments' gradients, on the CPU and on
    CUDA; tensor args that require grad are copied to each device."""
    results = []
    for device in ("cpu", CUDA):
        xd = x.to(device).requires_grad_()
        argd = [a.detach().to(device).requires_grad_(a.requires_grad)
                if isinstance(a, torch.Tensor) else a for a in args]
        y = op(xd, *argd)
        y.backward(dy.to(device))
        grads = [a.grad for a in argd if isinstance(a, torch.Tensor) and a.requires_grad]
        results.append([y, xd.grad] + grads)
    return results


def inputs(shape, generator, spread=3.0):
    x = torch.randn(shape, generator=generator) * spread
    x.view(-1)[::97] = float("nan")
    x.view(-1)[::89] = float("inf")
    return x


class CudaEqualsCpu(unittest.TestCase):
    def assert_same(self, cpu, gpu, what):
        for i, (a, b) in enumerate(zip(cpu, gpu)):
            self.assertTrue(same_bits(a, b), f"{what}: result {i} differs")

    def test_affine(self):
        g = torch.Generator().manual_seed(1)
        for shape, axis in [((1000,), None), ((16, 3, 5, 7), 0), ((4, 33, 9), 1)]:
            x, dy = inputs(shape, g), torch.randn(shape, generator=g)
            if axis is None:
                cpu, gpu = on_both(lowbit_torch.fake_quant_per_tensor_affine, x, dy, 0.05, 3, 0, 15)
            else:
                c = shape[axis]
                scale = torch.rand(c, generator=g) * 0.1 + 0.01
                zp = torch.randint(-8, 8, (c,), generator=g, dtype=torch.int32)
                cpu, gpu = on_both(lowbit_torch.fake_quant_per_channel_affine, x, dy, scale, zp,
                                   axis, -8, 7)
            self.assert_same(cpu, gpu, f"affine {shape}")

    def test_range_with_gradients(self):
        g = torch.Generator().manual_seed(2)
        for shape, axis in [((5000,), None), ((64, 300), -1), ((6, 1, 5, 5), 0)]:
            x, dy = inputs(shape, g), torch.randn(shape, generator=g)
            c = 1 if axis is None else shape[axis]
            lo = -torch.rand(c, generator=g) * 2
            hi = torch.rand(c, generator=g) * 2
            for bits, narrow in [(2, False), (4, True), (8, False)]:
                cpu, gpu = on_both(
                    lambda x_, a, b: lowbit_torch.fake_quant_range(x_, a, b, bits, narrow, axis),
                    x, dy, lo.requires_grad_(), hi.requires_grad_())
                self.assert_same(cpu, gpu, f"range {shape} {bits}-bit")

    def test_weights_and_lsq(self):
        g = torch.Generator().manual_seed(3)
        w, dy = torch.randn(16, 150, generator=g), torch.randn(16, 150, generator=g)
        for kw in [dict(axis=0), dict(axis=None), dict(group_size=30), dict(symmetric=False)]:
            cpu, gpu = on_both(lambda x_: lowbit_torch.fake_quant_weights(x_, 4, **kw), w, dy)
            self.assert_same(cpu, gpu, f"weights {kw}")
        for axis in (None, 0):
            scale = lowbit_torch.lsq_init_scale(w, -2, 1, axis=axis)
            self.assertTrue(same_bits(scale, lowbit_torch.lsq_init_scale(w.to(CUDA), -2, 1,
                                                                          axis=axis)))
            cpu, gpu = on_both(lambda x_, s: lowbit_torch.lsq_fake_quant(x_, s, -2, 1, axis=axis),
                               w, dy, scale.requires_grad_())
            self.assert_same(cpu, gpu, f"lsq axis {axis}")

    def test_ema_sequence(self):
        g = torch.Generator().manual_seed(4)
        batches = [inputs((4096,), g, spread=1.0 + i) for i in range(6)]
        batches[2] = batches[2].clone().fill_(float("nan"))  # a skipped batch
        for lagged in (False, True):
            states = [lowbit_torch.new_ema_state("cpu"), lowbit_torch.new_ema_state(CUDA)]
            for x in batches:
                ys = [lowbit_torch.ema_fake_quant(x.to(s.device), s, 4, decay=0.9, lagged=lagged,
                                                  quant_delay=1) for s in states]
                self.assertTrue(same_bits(*ys), f"lagged={lagged}")
                self.assertTrue(torch.equal(states[0], states[1].cpu()), f"lagged={lagged}")

    def test_bf16_and_fp16(self):
        g = torch.Generator().manual_seed(6)
        for dtype in (torch.bfloat16, torch.float16):
            x, dy = inputs((64, 300), g).to(dtype), torch.randn(64, 300, generator=g).to(dtype)
            lo, hi = -torch.rand(300, generator=g), torch.rand(300, generator=g)
            cpu, gpu = on_both(lambda x_, a, b: lowbit_torch.fake_quant_range(x_, a, b, 4, False, 1),
                               x, dy, lo.requires_grad_(), hi.requires_grad_())
            self.assert_same(cpu[:2], gpu[:2], f"range {dtype}")  # dx, y: 16-bit patterns
            for a, b in zip(cpu[2:], gpu[2:]):
                self.assertTrue(torch.equal(a.nan_to_num(7.0), b.cpu().nan_to_num(7.0)))
            cpu, gpu = on_both(
                lambda x_: lowbit_torch.fake_quant_per_tensor_affine(x_, 0.1, 2, 0, 15), x, dy)
            self.assert_same(cpu, gpu, f"affine {dtype}")
            states = [lowbit_torch.new_ema_state("cpu"), lowbit_torch.new_ema_state(CUDA)]
            for step in range(3):
                ys = [lowbit_torch.ema_fake_quant((x * (step + 1)).to(s.device), s, 4)
                      for s in states]
                self.assertTrue(same_bits(*ys), f"ema {dtype}")
                self.assertTrue(torch.equal(states[0], states[1].cpu()), f"ema {dtype}")

    def test_ema_in_a_cuda_graph(self):
        g = torch.Generator().manual_seed(5)
        batches = [inputs((1 << 16,), g, spread=1.0 + i) for i in range(5)]
        static_x = batches[0].to(CUDA)
        state = lowbit_torch.new_ema_state(CUDA)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up call outside the capture, as torch requires
            lowbit_torch.ema_fake_quant(static_x, lowbit_torch.new_ema_state(CUDA), 4)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_y = lowbit_torch.ema_fake_quant(static_x, state, 4, decay=0.9)
        reference = lowbit_torch.new_ema_state("cpu")
        for x in batches:
            static_x.copy_(x)
            graph.replay()
            y = lowbit_torch.ema_fake_quant(x, reference, 4, decay=0.9)
            self.assertTrue(same_bits(y, static_y))
            self.assertTrue(torch.equal(reference, state.cpu()))


if __name__ == "__main__":
    lowbit_torch.load(sys.argv.pop(1))
    assert torch.cuda.is_available(), "test_cuda.py needs a CUDA device"
    unittest.main()
