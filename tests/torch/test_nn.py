#!/usr/bin/env python3
"""lowbit_torch.nn's modules and the ops behind them.

- Gradients where the maths is smooth. The forwards are step functions of
  x, so dx is a definition (the straight-through estimator), not a
  derivative: it is checked against that definition computed here. What
  has a true derivative: the output of an element clipped at a range end
  that the nudging leaves where it is (a range with one end at 0, as after a
  ReLU), as a function of that end, and LSQ's output at the grid ends as a
  function of the scale. There, finite differences in float32 must equal
  the analytic gradients (TensorFlow's d_min/d_max; LSQ's d_scale over its
  gradient scale g).
- ema_fake_quant: the state against an independent float32 numpy model of
  the EMA step, bit for bit, over batches with a quant delay, a NaN and an
  Inf batch and a freeze; y bit for bit equal to fake_quant_range with the
  range after (exact) or before (lagged) the update.
- The modules: training and eval numerics, quant delays, state_dict round
  trips, prepare_qat on LeNet-5.
- A short training run (examples/torch/lenet.py's model and quantizers)
  against `lowbit train` from the same initial weights and batches.

Usage: test_nn.py LIBRARY [--lowbit-cli PATH] [unittest args]."""

import importlib.util
import json
import os
import struct
import subprocess
import sys
import tempfile
import unittest
import warnings
import zlib

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
sys.path.insert(0, os.path.join(ROOT, "host", "torch"))
import lowbit_torch  # noqa: E402
import lowbit_torch.nn as lnn  # noqa: E402

CLI = None  # the lowbit binary, from the command line
DATA = os.environ.get("LOWBIT_DATA_DIR", "/usr/share/datasets/fashion-mnist")
F32 = np.float32


def same_bits(a, b):
    """Bitwise equality, any NaN equal to any NaN."""
    a, b = a.contiguous(), b.contiguous()
    both_nan = torch.isnan(a) & torch.isnan(b)
    return a.shape == b.shape and bool(((a.view(torch.int32) == b.view(torch.int32)) |
                                        both_nan).all())


def nudge(lo, hi, bits, narrow):
    """TensorFlow's nudged range in float32 (numpy), written from the
    contract in docs: scale, zero point rounded half away from zero."""
    qmin, qmax = F32(1 if narrow else 0), F32((1 << bits) - 1)
    lo, hi = F32(lo), F32(hi)
    scale = (hi - lo) / (qmax - qmin)
    if scale == 0:
        return F32(0), F32(0)
    zp = qmin - lo / scale
    zp = qmin if zp < qmin else qmax if zp > qmax else F32(np.floor(abs(zp) + F32(0.5)) *
                                                         np.sign(zp))
    return (qmin - zp) * scale, (qmax - zp) * scale


class EmaModel:
    """include/lowbit/element.hpp's ema_range_step, in numpy float32."""

    def __init__(self):
        self.min, self.max, self.decay_pow = F32(0), F32(0), F32(1)
        self.skipped = self.steps = self.updates = 0

    def step(self, x, decay, freeze_step=None):
        call = self.steps
        self.steps += 1
        if freeze_step is not None and call >= freeze_step:
            return
        lo, hi = x.min(), x.max()
        if not (np.isfinite(lo) and np.isfinite(hi)):
            self.skipped += 1
            return
        v_min, v_max = min(lo, F32(0)), max(hi, F32(0))
        d = F32(decay)
        self.decay_pow = F32(self.decay_pow * d)
        weight = F32((F32(1) - d) / (F32(1) - self.decay_pow))
        self.min = F32(self.min + F32(F32(v_min - self.min) * weight))
        self.max = F32(self.max + F32(F32(v_max - self.max) * weight))
        self.updates += 1

    def matches(self, state):
        raw = state.numpy().tobytes()
        lo, hi, decay_pow, skipped, steps, updates = struct.unpack("<fffIqq", raw[:32])
        return (F32(lo).tobytes() == self.min.tobytes() and
                F32(hi).tobytes() == self.max.tobytes() and
                F32(decay_pow).tobytes() == self.decay_pow.tobytes() and
                (skipped, steps, updates) == (self.skipped, self.steps, self.updates))


def fq_range(x, lo, hi, bits, narrow=False):
    return lowbit_torch.fake_quant_range(x, torch.tensor([lo], dtype=torch.float32),
                                         torch.tensor([hi], dtype=torch.float32), bits, narrow)


class Gradients(unittest.TestCase):
    def test_range_ends_against_finite_differences(self):
        """y of an element clipped at a range end is that end when the other
        end is 0 (no nudging), so its derivative is 1 there: gradcheck of
        (x, max) on [0, max] with x above, and of (x, min) on [min, 0] with
        x below, per tensor and per channel. float32, so eps and the
        tolerances are float32's (the ops take no float64)."""
        g = torch.Generator().manual_seed(10)
        warnings.filterwarnings("ignore", "Input #", UserWarning)  # float32 on purpose
        for bits in (2, 4, 8):
            x = 2.0 + torch.rand(3, 4, generator=g)
            hi = torch.tensor([1.3], requires_grad=True)
            zero = torch.zeros(1)
            check = dict(eps=1e-2, atol=2e-3, rtol=2e-3, raise_exception=True)
            self.assertTrue(torch.autograd.gradcheck(
                lambda x, hi: lowbit_torch.fake_quant_range(x, zero, hi, bits),
                (x.requires_grad_(), hi), **check))
            lo = torch.tensor([-0.7, -1.1, -0.4], requires_grad=True)
            self.assertTrue(torch.autograd.gradcheck(
                lambda x, lo: lowbit_torch.fake_quant_range(x, lo, torch.zeros(3), bits, False,
                                                             axis=0),
                ((-x.detach() - 1).requires_grad_(), lo), **check))

    def test_range_gradients_are_tensorflows_ste(self):
        """Inside the range no true derivative exists (a step function):
        dx = dy inside [nudged_min, nudged_max] (inclusive), d_min and d_max
        sum dy below and above it, as computed here from the contract."""
        g = torch.Generator().manual_seed(11)
        for bits, narrow, lo, hi in [(4, False, -1.0, 3.0), (2, True, -0.3, 0.9),
                                     (8, False, 0.2, 5.0)]:
            x = torch.randn(200, generator=g) * 3
            dy = torch.randn(200, generator=g)
            lo_t = torch.tensor([lo], requires_grad=True)
            hi_t = torch.tensor([hi], requires_grad=True)
            x.requires_grad_()
            lowbit_torch.fake_quant_range(x, lo_t, hi_t, bits, narrow).backward(dy)
            n_lo, n_hi = nudge(lo, hi, bits, narrow)
            xs = x.detach()
            inside = (xs >= float(n_lo)) & (xs <= float(n_hi))
            self.assertTrue(torch.equal(x.grad, torch.where(inside, dy, torch.zeros_like(dy))))
            self.assertAlmostEqual(lo_t.grad.item(), dy[xs < float(n_lo)].sum().item(), places=4)
            self.assertAlmostEqual(hi_t.grad.item(), dy[xs > float(n_hi)].sum().item(), places=4)

    def test_lsq_scale_gradient(self):
        """At the grid ends y = q_end·s, so dy/ds = q_end exactly, and
        d_scale = g·Σ dy·q_end with g = 1/sqrt(N·qmax): finite differences
        agree. Inside, d_scale is Esser et al.'s Σ dy·(round(x/s) - x/s)·g,
        checked against its formula."""
        g = torch.Generator().manual_seed(12)
        qmin, qmax = -8, 7
        s = torch.tensor([0.1])
        x = torch.cat([torch.rand(20, generator=g) + 1.0, -torch.rand(20, generator=g) - 1.0])
        dy = torch.randn(40, generator=g)
        scale = s.clone().requires_grad_()
        lowbit_torch.lsq_fake_quant(x, scale, qmin, qmax).backward(dy)
        grad_scale = 1.0 / np.sqrt(x.numel() * qmax)
        eps = 1e-3

        def loss(v):
            return (lowbit_torch.lsq_fake_quant(x, torch.tensor([v]), qmin, qmax) * dy).sum()
        fd = (loss(0.1 + eps) - loss(0.1 - eps)).item() / (2 * eps)
        self.assertAlmostEqual(scale.grad.item(), fd * grad_scale, places=3)

        x = (torch.rand(300, generator=g) - 0.5) * 1.2  # mostly inside [-0.8, 0.7]
        dy = torch.randn(300, generator=g)
        scale = s.clone().requires_grad_()
        lowbit_torch.lsq_fake_quant(x, scale, qmin, qmax).backward(dy)
        v = x.double() / 0.1
        q = torch.round(v)  # half to even, as torch.round
        term = torch.where(v < qmin, torch.tensor(float(qmin), dtype=torch.float64),
                           torch.where(v > qmax, torch.tensor(float(qmax), dtype=torch.float64),
                                       q - v))
        want = (dy.double() * term).sum().item() / np.sqrt(x.numel() * qmax)
        self.assertAlmostEqual(scale.grad.item(), want, places=4)


class Ema(unittest.TestCase):
    BATCHES = [(0.0, 1.0), (0.5, 2.0), (-1.0, 0.5), ("nan", 0), (0.2, 3.0), ("inf", 0),
               (0.0, 0.1), (1.0, 1.0), (-0.5, 4.0)]

    def batches(self, seed):
        g = torch.Generator().manual_seed(seed)
        for shift, spread in self.BATCHES:
            x = torch.randn(257, generator=g)
            if shift == "nan":
                x[100] = float("nan")
            elif shift == "inf":
                x[3] = float("inf")
            else:
                x = x * spread + shift
            yield x

    def test_state_and_output_against_numpy(self):
        for lagged in (False, True):
            for bits, decay, delay, freeze in [(4, 0.999, 0, None), (2, 0.9, 3, None),
                                               (8, 0.5, 1, 6), (16, 0.99, 0, 2)]:
                with self.subTest(lagged=lagged, bits=bits, decay=decay, delay=delay):
                    state = lowbit_torch.new_ema_state()
                    model = EmaModel()
                    for k, x in enumerate(self.batches(bits)):
                        before = (model.min, model.max, model.updates)
                        call = model.steps
                        y = lowbit_torch.ema_fake_quant(x, state, bits, False, decay, lagged,
                                                        delay, freeze)
                        model.step(x.numpy(), decay, freeze)
                        self.assertTrue(model.matches(state), f"state after batch {k}")
                        lo, hi, updates = before if lagged else (model.min, model.max,
                                                                 model.updates)
                        if call >= delay and updates > 0:
                            want = fq_range(x, float(lo), float(hi), bits)
                        else:
                            want = x
                        self.assertTrue(same_bits(y, want), f"y of batch {k}")

    def test_first_update_is_the_batch_range(self):
        x = torch.tensor([-0.25, 3.5, 1.0])
        state = lowbit_torch.new_ema_state()
        lowbit_torch.ema_fake_quant(x, state, 4)
        self.assertEqual(lowbit_torch.ema_range(state).tolist(), [-0.25, 3.5])

    def test_dx_is_the_ste_of_the_updated_range(self):
        g = torch.Generator().manual_seed(3)
        state = lowbit_torch.new_ema_state()
        for _ in range(3):
            lowbit_torch.ema_fake_quant(torch.randn(50, generator=g), state, 4, False, 0.9)
        x = (torch.randn(400, generator=g) * 3).requires_grad_()
        dy = torch.randn(400, generator=g)
        lowbit_torch.ema_fake_quant(x, state, 4, False, 0.9).backward(dy)
        n_lo, n_hi = nudge(*lowbit_torch.ema_range(state).tolist(), 4, False)
        inside = (x.detach() >= float(n_lo)) & (x.detach() <= float(n_hi))
        self.assertTrue(torch.equal(x.grad, torch.where(inside, dy, torch.zeros_like(dy))))


class Modules(unittest.TestCase):
    def test_fake_quantize_train_and_eval(self):
        g = torch.Generator().manual_seed(5)
        m = lnn.FakeQuantize(bits=4, decay=0.99, quant_delay=2)
        state = lowbit_torch.new_ema_state()
        x = torch.randn(64, generator=g)
        m.eval()
        self.assertTrue(torch.equal(m(x), x), "eval before any batch: identity")
        m.train()
        for k in range(5):
            x = torch.randn(3, 64, generator=g) * (k + 1)
            want = lowbit_torch.ema_fake_quant(x, state, 4, False, 0.99, False, 2)
            self.assertTrue(same_bits(m(x), want), f"training batch {k}")
            self.assertTrue(torch.equal(m.ema_state, state))
            if k == 0:
                m.eval()
                self.assertTrue(torch.equal(m(x), x), "eval within quant_delay: identity")
                m.train()
        m.eval()
        x = torch.randn(3, 64, generator=g) * 4
        frozen = state.clone()  # lowbit's own eval: exact mode on a copy that never updates
        want = lowbit_torch.ema_fake_quant(x, frozen, 4, False, 0.99, False, 2, 0)
        self.assertTrue(same_bits(m(x), want))
        self.assertTrue(torch.equal(m.ema_state, state), "eval leaves the state")
        self.assertFalse(torch.equal(want, x))

    def test_fake_quantize_switches(self):
        m = lnn.FakeQuantize(bits=4)
        x = torch.randn(100)
        m(x)
        before = m.ema_state.clone()
        m.disable_observer()
        y = m(2 * x)
        self.assertTrue(torch.equal(m.ema_state, before), "observer off: no update")
        self.assertTrue(same_bits(y, fq_range(2 * x, *m.range.tolist(), 4)))
        m.disable_fake_quant()
        self.assertTrue(torch.equal(m(x), x))

    def test_state_dict_round_trip(self):
        m = lnn.FakeQuantize(bits=3, decay=0.9)
        for k in range(4):
            m(torch.randn(30) * (k + 1))
        m.disable_observer()
        copy = lnn.FakeQuantize(bits=3, decay=0.9)
        copy.load_state_dict(m.state_dict())
        self.assertTrue(torch.equal(copy.ema_state, m.ema_state))
        self.assertFalse(copy._observe)
        x = torch.randn(30) * 2
        self.assertTrue(same_bits(copy(x), m(x)))
        w = lnn.WeightFakeQuantize(bits=4, quant_delay=5)
        for _ in range(3):
            w(torch.randn(4, 3))
        w2 = lnn.WeightFakeQuantize(bits=4, quant_delay=5)
        w2.load_state_dict(w.state_dict())
        self.assertEqual(int(w2.steps), 3)

    def test_weight_fake_quantize(self):
        g = torch.Generator().manual_seed(6)
        w = torch.randn(6, 3, 5, 5, generator=g)
        for kwargs in [{}, {"axis": None}, {"symmetric": False, "narrow_range": False},
                       {"group_size": 5}]:
            m = lnn.WeightFakeQuantize(bits=4, **kwargs)
            want = lowbit_torch.fake_quant_weights(w, 4, **kwargs)
            self.assertTrue(same_bits(m(w), want), str(kwargs))
        m = lnn.WeightFakeQuantize(bits=4, quant_delay=2)
        want = lowbit_torch.fake_quant_weights(w, 4)
        self.assertTrue(torch.equal(m(w), w))
        m.eval()
        self.assertTrue(torch.equal(m(w), w), "eval calls do not count")
        m.train()
        self.assertTrue(torch.equal(m(w), w))
        self.assertTrue(same_bits(m(w), want))
        scale, zero_point = m.calculate_qparams()
        self.assertTrue(torch.allclose(scale, w.flatten(1).abs().amax(1) * 2 / 14))
        self.assertTrue(torch.equal(zero_point, torch.full((6,), 8, dtype=torch.int32)))

    def test_lsq_fake_quantize(self):
        g = torch.Generator().manual_seed(7)
        x = torch.randn(8, 5, generator=g)
        for axis, channels in [(None, None), (1, 5)]:
            m = lnn.LsqFakeQuantize(bits=4, signed=True, axis=axis, channels=channels)
            y = m(x)
            init = lowbit_torch.lsq_init_scale(x, -8, 7, axis)
            self.assertTrue(torch.equal(m.scale.detach(), init.view_as(m.scale)))
            self.assertTrue(same_bits(y, lowbit_torch.lsq_fake_quant(x, init.view_as(m.scale),
                                                                     -8, 7, axis)))
            y.sum().backward()
            self.assertIsNotNone(m.scale.grad)
            m(x * 3)
            self.assertTrue(torch.equal(m.scale.detach(), init.view_as(m.scale)),
                            "initialised once")
            copy = lnn.LsqFakeQuantize(bits=4, signed=True, axis=axis, channels=channels)
            copy.load_state_dict(m.state_dict())
            self.assertTrue(copy._initialized)

    def test_prepare_qat_lenet(self):
        """torch's eager QAT flow takes the modules: the quantizers sit where
        lowbit's quantize() puts them, training moves the ranges, and a
        state_dict restores a model that evaluates bit for bit alike."""
        lenet = load_example()
        torch.manual_seed(0)
        model = lenet.quantize(lenet.LeNet5(), 4, 0)
        act = [model.conv1, model.conv2, model.fc1, model.fc2, model.fc3]
        self.assertTrue(all(isinstance(m.activation_post_process, lnn.FakeQuantize)
                            for m in act))
        self.assertTrue(all(isinstance(m.weight_fake_quant, lnn.WeightFakeQuantize)
                            for m in act))
        self.assertEqual([m.activation_post_process.bits for m in act], [4, 4, 4, 4, 8])
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        x = torch.randn(16, 1, 28, 28)
        for _ in range(2):
            loss = torch.nn.functional.cross_entropy(model(x), torch.arange(16) % 10)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        self.assertGreater(model.fc1.activation_post_process.range[1].item(), 0)
        fresh = lenet.quantize(lenet.LeNet5(), 4, 0)
        fresh.load_state_dict(model.state_dict())
        model.eval()
        fresh.eval()
        self.assertTrue(same_bits(model(x), fresh(x)))


def splitmix64(z):
    mask = (1 << 64) - 1
    z = (z + 0x9e3779b97f4a7c15) & mask
    z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & mask
    z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & mask
    return z ^ (z >> 31)


def lowbit_order(seed, epoch, n):
    """lowbit's shuffle (nn_element.hpp): examples stable-sorted by
    shuffle_key(seed, epoch, index)."""
    stream = splitmix64(seed ^ splitmix64(epoch))
    keys = [splitmix64(stream ^ i) for i in range(n)]
    return sorted(range(n), key=lambda i: keys[i])


def write_checkpoint(path, tensors, seed):
    """`tensors` as a lowbit checkpoint that `lowbit train --init` reads:
    safetensors with lowbit's metadata and its CRC-32 (io/safetensors.cpp:
    first in the metadata, over the whole file with its own digits as 0s)."""
    options = {"model": "lenet5", "input_shape": [1, 28, 28], "weight_bits": 0,
               "activation_bits": 0, "output_bits": 8, "ema_decay": 0.999, "quant_delay": 0,
               "freeze_ranges_step": 2**63 - 1, "range": "ema", "rounding": "tensorflow",
               "per_channel": True, "symmetric_weights": True, "layer_bits": {}, "epochs": 1,
               "batch": 64, "learning_rate": 0.05, "momentum": 0.9, "weight_decay": 0.0,
               "lr_schedule": {"kind": "constant", "milestones": [], "factor": 0.1},
               "seed": seed, "limit_train": 0, "limit_test": 0, "normalization_mean": 0.286,
               "normalization_std": 0.353, "data_dir": DATA}
    tensors = dict(tensors, **{"trainer.progress": np.array([0, 0, seed], np.int64)})
    header = {"__metadata__": {"lowbit.crc32": "0" * 8, "format": "lowbit-checkpoint-1",
                               "lowbit.options": json.dumps(options)}}
    offset, blobs = 0, []
    for name, value in tensors.items():
        blob = np.ascontiguousarray(value).tobytes()
        header[name] = {"dtype": {np.float32: "F32", np.int64: "I64"}[value.dtype.type],
                        "shape": list(value.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)
    data = bytearray(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    at = data.index(b'"lowbit.crc32":"') + len(b'"lowbit.crc32":"')
    data[at:at + 8] = b"%08x" % zlib.crc32(data)
    with open(path, "wb") as f:
        f.write(data)


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        dtype = {"F32": np.float32, "I64": np.int64}[entry["dtype"]]
        out[name] = np.frombuffer(data[8 + n + begin:8 + n + end], dtype).reshape(entry["shape"])
    return out


LAYERS = ["conv1", "conv2", "fc1", "fc2", "fc3"]
EMA_NAMES = ["relu1", "relu2", "relu3", "relu4", "fc3"]  # lowbit's quantizer of each layer


def quantize_variant(model, bits, quant_delay, decay=0.999, after_relu=True, logit_bits=8):
    """examples/torch/lenet.py's quantize(), with the knobs the control runs
    turn: unfused layers put torch's activation quantizer before the ReLU."""
    from torch.ao.quantization import QConfig, fuse_modules, prepare_qat
    if after_relu:
        fuse_modules(model, [["conv1", "relu1"], ["conv2", "relu2"], ["fc1", "relu3"],
                             ["fc2", "relu4"]], inplace=True)
    weights = lnn.WeightFakeQuantize.with_args(bits=bits, quant_delay=quant_delay)
    model.qconfig = QConfig(activation=lnn.FakeQuantize.with_args(
        bits=bits, decay=decay, quant_delay=quant_delay), weight=weights)
    model.fc3.qconfig = QConfig(activation=lnn.FakeQuantize.with_args(
        bits=logit_bits, decay=decay, quant_delay=quant_delay), weight=weights)
    return prepare_qat(model.train(), inplace=True)


class MatchesLowbitTrain(unittest.TestCase):
    """A short 4-bit run in PyTorch (the example's model and quantizers,
    plain SGD as sgd_update writes it) against `lowbit train --device cpu`
    from the same initial weights, on the same batches.

    Not bitwise: the convolutions and GEMMs sum in another order than
    lowbit's CPU backend (about 1e-7 relative per op), and after that a
    quantizer may put an element one level apart, which the backward then
    carries on. The quantizers themselves are bit-exact given equal inputs
    (the tests above). Each tolerance sits about 100x from both sides: the
    matching run measured weights 6e-6 (largest difference over largest
    update), EMA ranges 1.2e-7 (relative), loss 7e-9 (relative); the
    closest control, the logits at 4 bits instead of 8, gave 0.03, 5e-4 and
    3e-5; a decay of 0.99 gave 0.06, 7e-3 and 5e-5; the activation
    quantizers before the ReLUs gave 0.37, 1.1 and 2e-4. Every metric alone
    tells each control apart."""

    SEED, BATCH, LIMIT, DELAY, BITS, STEPS = 7, 64, 512, 2, 4, 8
    lowbit = None

    @classmethod
    def setUpClass(cls):
        if CLI is None:
            raise unittest.SkipTest("no lowbit CLI given (--lowbit-cli PATH)")
        # Given the CLI, a missing dataset fails: the comparison was asked for.
        assert os.path.isdir(DATA), f"no dataset at {DATA} (set LOWBIT_DATA_DIR)"
        cls.example = load_example()
        torch.manual_seed(cls.SEED)
        cls.init = {k: v.detach().clone() for k, v in cls.example.LeNet5().state_dict().items()}
        cls.tmp = tempfile.TemporaryDirectory()
        init_path = os.path.join(cls.tmp.name, "init.safetensors")
        out_path = os.path.join(cls.tmp.name, "out.safetensors")
        metrics_path = os.path.join(cls.tmp.name, "metrics.json")
        write_checkpoint(init_path, {k: v.numpy() for k, v in cls.init.items()}, cls.SEED)
        subprocess.run([CLI, "train", "--device", "cpu", "--data", DATA, "--init", init_path,
                        "--epochs", "1", "--limit-train", str(cls.LIMIT), "--limit-test", "64",
                        "--batch", str(cls.BATCH), "--seed", str(cls.SEED), "--weight-bits",
                        str(cls.BITS), "--act-bits", str(cls.BITS), "--quant-delay",
                        str(cls.DELAY), "--save", out_path, "--metrics-json", metrics_path],
                       check=True, stdout=subprocess.DEVNULL)
        cls.lowbit = read_safetensors(out_path)
        with open(metrics_path, encoding="utf-8") as f:
            cls.lowbit_loss = json.load(f)["epochs"][0]["loss"]
        cls.x, cls.y = cls.example.load_split(DATA, "train", cls.LIMIT)

    @classmethod
    def tearDownClass(cls):
        if cls.lowbit is not None:
            cls.tmp.cleanup()

    def train_torch(self, **variant):
        model = self.example.LeNet5()
        model.load_state_dict(self.init)
        if variant:
            model = quantize_variant(model, self.BITS, self.DELAY, **variant)
        else:
            model = self.example.quantize(model, self.BITS, self.DELAY)
        velocity = [torch.zeros_like(p) for p in model.parameters()]
        order = torch.tensor(lowbit_order(self.SEED, 0, self.LIMIT))
        losses = []
        for step in range(self.STEPS):
            batch = order[step * self.BATCH:(step + 1) * self.BATCH]
            loss = torch.nn.functional.cross_entropy(model(self.x[batch]), self.y[batch])
            model.zero_grad()
            loss.backward()
            with torch.no_grad():
                for p, v in zip(model.parameters(), velocity):
                    v.mul_(0.9).add_(p.grad)  # sgd_update: v = momentum·v + g
                    p.sub_(v * 0.05)          # p = p - lr·v, no fused multiply-add
            losses.append(loss.item())
        return model, float(np.mean(losses))

    def discrepancy(self, model, loss):
        """The largest weight difference over the largest update, per layer;
        the largest relative EMA range difference; the relative loss
        difference; whether the EMA counters agree."""
        weights = 0.0
        for layer in LAYERS:
            for kind in ("weight", "bias"):
                name = f"{layer}.{kind}"
                ours = getattr(model, layer).state_dict()[kind].numpy()
                moved = np.abs(self.lowbit[name] - self.init[name].numpy()).max()
                weights = max(weights, np.abs(ours - self.lowbit[name]).max() / moved)
        ranges, counters = 0.0, True
        for layer, name in zip(LAYERS, EMA_NAMES):
            state = getattr(model, layer).activation_post_process.ema_state
            ours = lowbit_torch.ema_range(state).numpy()
            theirs = self.lowbit[f"{name}/act_quant.ema.range"]
            ranges = max(ranges, np.abs(ours - theirs).max() / np.abs(theirs).max())
            steps, updates = state[16:32].view(torch.int64).tolist()
            saved = self.lowbit[f"{name}/act_quant.ema.counters"].tolist()
            counters &= [steps, updates, 0] == saved
        return weights, ranges, abs(loss - self.lowbit_loss) / self.lowbit_loss, counters

    WEIGHTS_TOL, RANGES_TOL, LOSS_TOL = 1e-3, 1e-5, 1e-6

    def test_same_run_matches(self):
        weights, ranges, loss, counters = self.discrepancy(*self.train_torch())
        self.assertTrue(counters, "EMA steps and updates")
        self.assertLess(weights, self.WEIGHTS_TOL, "weights (relative to the largest update)")
        self.assertLess(ranges, self.RANGES_TOL, "EMA ranges (relative)")
        self.assertLess(loss, self.LOSS_TOL, "mean training loss (relative)")

    def test_changed_quantization_does_not_match(self):
        for variant in [{"decay": 0.99}, {"after_relu": False}, {"logit_bits": 4}]:
            with self.subTest(**variant):
                weights, ranges, loss, _ = self.discrepancy(*self.train_torch(**variant))
                self.assertGreater(weights, self.WEIGHTS_TOL, "weights")
                self.assertGreater(ranges, self.RANGES_TOL, "EMA ranges")
                self.assertGreater(loss, self.LOSS_TOL, "loss")


def load_example():
    spec = importlib.util.spec_from_file_location(
        "lenet_example", os.path.join(ROOT, "examples", "torch", "lenet.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    if "--lowbit-cli" in sys.argv:
        at = sys.argv.index("--lowbit-cli")
        CLI = sys.argv[at + 1]
        del sys.argv[at:at + 2]
    lowbit_torch.load(sys.argv.pop(1) if len(sys.argv) > 1 else None)
    unittest.main()
