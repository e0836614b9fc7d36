#!/usr/bin/env python3
"""Times PyTorch's equivalents of lowbit's kernels, LeNet-5 training and inference.

scripts/bench.sh runs lowbit's Google Benchmark suites, then this script at the
same sizes, so that every lowbit figure can be given a PyTorch ratio. Only
PyTorch's public API is used.

Kernels (inputs as bench/kernels_bench.cpp makes them: the same hashed values,
x in [-3, 3) and dy in [-1, 1), float32 on the device), for each bits and n:

  PyTorch op                                 pass              lowbit op
  fake_quantize_per_tensor_affine            forward           fake_quant_affine/per_tensor
                                             forward_backward  fake_quant_affine + ste_backward
  fake_quantize_per_channel_affine           forward           fake_quant_affine/per_channel
    (x as [64, 64, n/4096], axis 1)          forward_backward  fake_quant_affine + ste_backward
  fused_moving_avg_obs_fake_quant            forward           ema_fake_quant/exact
  fake_quantize_learnable_per_tensor_affine  forward           lsq_forward
    (torch._fake_quantize_learnable_...)     forward_backward  lsq_forward + lsq_backward

Each measurement makes one untimed warm-up call, then timed calls until both
--min-time seconds of timed calls and 3 calls are reached, and reports the mean
time per call. On CUDA, L2 is flushed (untimed) before every timed call and the
call is timed with CUDA events, as lowbit's kernel bench does; on the CPU each
call is timed with time.perf_counter.

Training: LeNet-5 as lowbit's, eager mode, data already on the device, in fp32
and with PyTorch's eager-mode QAT (torch.ao.quantization) at the --train-bits.

Inference, on the CPU whatever --device says (PyTorch's quantized kernels are
CPU-only): the same LeNet-5 in eval mode at the --inference-batches, fp32 and
int8 by eager-mode post-training static quantization (conv and linear fused
with their ReLU, the engine's default qconfig, calibrated on a few batches of
random pixels), on the fbgemm engine, or where torch lacks it onednn (also
for x86: on a 2-core EPYC 5-20x qnnpack's speed from batch 64 up), else qnnpack.
Weights are PyTorch's random init: time does not depend on them. Each call
takes uint8 pixels [B, 1, 28, 28] to logits, normalisation included, as
lowbit_bench_inference does, and is timed as the kernels are on the CPU but
for --inference-min-time seconds.

A measurement that raises is recorded with its error and a null time; the
script still exits 0. Exit 2: bad arguments. Exit 1: torch cannot be imported.
JSON goes to --out, or else to stdout; progress lines go to stderr.
"""

import argparse
import json
import os
import sys
import time

KERNEL_SEED_X = 0x9E3779B9  # kernels_bench.cpp: inputs()
KERNEL_SEED_DY = 0x85EBCA6B  # kernels_bench.cpp: grads()
FALLBACK_L2_BYTES = 100 << 20
MIN_CALLS = 3
DATA_MEAN, DATA_STD = 0.2860, 0.3530
FUSED_PAIRS = [["conv1", "relu1"], ["conv2", "relu2"], ["fc1", "relu3"], ["fc2", "relu4"]]
CALIBRATION_BATCHES = 8


# ---------------------------------------------------------------------------
# Command line


def _int_list(lo, hi):
    def parse(text):
        try:
            values = [int(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
        for v in values:
            if not lo <= v <= hi:
                raise argparse.ArgumentTypeError(f"{v} is outside {lo}..{hi}")
        return values

    return parse


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _count(lo):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {value}")
        return value

    return parse


def _train_bits(text):
    configs = text.split(",")
    for c in configs:
        if c != "fp32" and not (c.isdigit() and 2 <= int(c) <= 16):
            raise argparse.ArgumentTypeError(f"{c!r} is neither fp32 nor a bit width in 2..16")
    return configs


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Time PyTorch's fake-quant ops, LeNet-5 (fp32 and QAT) training and "
        "LeNet-5 (fp32 and int8) CPU inference at lowbit's benchmark sizes; print JSON.")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto (the default): cuda if torch.cuda.is_available(), else cpu")
    p.add_argument("--sizes", type=_int_list(1, 1 << 40), default="65536,1048576",
                   help="kernel element counts n, comma-separated (default: %(default)s)")
    p.add_argument("--bits", type=_int_list(2, 16), default="2,4,8,16",
                   help="kernel bit widths in 2..16, comma-separated (default: %(default)s)")
    p.add_argument("--min-time", type=_positive_float, default=0.25,
                   help="seconds of timed calls per kernel measurement, at least 3 calls "
                   "(default: %(default)s)")
    p.add_argument("--batches", type=_int_list(1, 1 << 20), default="64,256,1024",
                   help="training batch sizes, comma-separated (default: %(default)s)")
    p.add_argument("--train-bits", type=_train_bits, default="fp32,8,4,2",
                   help="training configs, comma-separated: fp32 or a QAT bit width in 2..16 "
                   "(default: %(default)s)")
    p.add_argument("--train-steps", type=_count(1), default=50,
                   help="timed steps per training config (default: %(default)s)")
    p.add_argument("--warmup-steps", type=_count(0), default=5,
                   help="untimed steps before the timed ones (default: %(default)s)")
    p.add_argument("--inference-batches", type=_int_list(1, 1 << 20), default="1,64,1024",
                   help="CPU inference batch sizes, comma-separated (default: %(default)s)")
    p.add_argument("--inference-min-time", type=_positive_float, default=0.5,
                   help="seconds of timed calls per inference measurement, at least 3 calls "
                   "(default: %(default)s, as scripts/bench.sh runs lowbit's)")
    p.add_argument("--skip-kernels", action="store_true", help="skip the kernel measurements")
    p.add_argument("--skip-training", action="store_true", help="skip the training measurements")
    p.add_argument("--skip-inference", action="store_true",
                   help="skip the inference measurements")
    p.add_argument("--threads", type=_count(1), default=os.cpu_count() or 1,
                   help="CPU threads for PyTorch (default: every core, as lowbit's CPU "
                        "backend uses through OpenMP)")
    p.add_argument("--out", help="write the JSON to this file instead of stdout")
    return p.parse_args(argv)


def progress(message):
    print(message, file=sys.stderr, flush=True)


def first_line(error):
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:200]


# ---------------------------------------------------------------------------
# Timing


class Timer:
    """Mean seconds per call of fn, per the module docstring."""

    def __init__(self, torch, device, min_time):
        self.device = device
        self.min_time = min_time
        if device.type == "cuda":
            props = torch.cuda.get_device_properties(device)
            l2 = getattr(props, "L2_cache_size", 0) or FALLBACK_L2_BYTES
            self.flush = torch.empty(2 * l2, dtype=torch.uint8, device=device)
            self.events = (torch.cuda.Event(enable_timing=True),
                           torch.cuda.Event(enable_timing=True))

    def mean_seconds(self, fn):
        fn()
        total, calls = 0.0, 0
        while total < self.min_time or calls < MIN_CALLS:
            total += self._cuda_call(fn) if self.device.type == "cuda" else self._cpu_call(fn)
            calls += 1
        return total / calls

    def _cpu_call(self, fn):
        begin = time.perf_counter()
        fn()
        return time.perf_counter() - begin

    def _cuda_call(self, fn):
        start, stop = self.events
        self.flush.zero_()  # writing 2x L2 evicts the previous call's data
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        return start.elapsed_time(stop) * 1e-3


# ---------------------------------------------------------------------------
# Kernels


def hashed_pattern(torch, n, seed, lo, hi, device):
    """kernels_bench.cpp's pattern(): lo + (hi-lo)*((i^seed)*2654435761 mod 2^32 >> 8)*2^-24."""
    a = torch.arange(n, dtype=torch.int64, device=device) ^ seed
    # The 32-bit product in two halves, so that no int64 product overflows.
    mult = 2654435761
    low = a * (mult & 0xFFFF)
    high = ((a * (mult >> 16)) & 0xFFFF) << 16
    hashed = ((low + high) & 0xFFFFFFFF) >> 8
    return lo + (hi - lo) * hashed.to(torch.float32) * 2.0 ** -24


def unsigned_range(bits):
    quant_max = (1 << bits) - 1
    return 0, quant_max, 4.5 / quant_max, (quant_max + 1) // 2


def per_tensor_affine(torch, x, bits):
    qmin, qmax, scale, zp = unsigned_range(bits)
    return lambda xin: torch.fake_quantize_per_tensor_affine(xin, scale, zp, qmin, qmax), ()


def per_channel_affine(torch, x, bits):
    qmin, qmax, step, zp = unsigned_range(bits)
    channels = 64
    scale = step + step * 1e-3 * torch.arange(channels, dtype=torch.float32, device=x.device)
    zero_point = torch.full((channels,), zp, dtype=torch.int32, device=x.device)
    shape = (64, channels, x.numel() // 4096)  # NCHW activations on axis 1, as lowbit's

    def op(xin):
        return torch.fake_quantize_per_channel_affine(xin.view(shape), scale, zero_point, 1,
                                                      qmin, qmax)

    return op, ()


def fused_observer(torch, x, bits):
    qmin, qmax, scale, zp = unsigned_range(bits)
    dev = x.device
    on = torch.ones(1, dtype=torch.uint8, device=dev)
    running_min = x.min().reshape(1).clone()
    running_max = x.max().reshape(1).clone()
    scale_t = torch.tensor([scale], dtype=torch.float32, device=dev)
    zp_t = torch.tensor([zp], dtype=torch.int32, device=dev)

    def op(xin):
        return torch.fused_moving_avg_obs_fake_quant(xin, on, on, running_min, running_max,
                                                     scale_t, zp_t, 0.01, qmin, qmax, 0)

    return op, ()


def learnable(torch, x, bits):
    # lowbit's LSQ bench: signed range, scale 2.5/qmax, zero point 0.
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    scale = torch.tensor([2.5 / qmax], dtype=torch.float32, device=x.device)
    zero_point = torch.zeros(1, dtype=torch.float32, device=x.device)

    def op(xin):
        return torch._fake_quantize_learnable_per_tensor_affine(xin, scale, zero_point, qmin,
                                                                qmax, 1.0)

    # The backward also differentiates scale and zero point (d_scale, d_zero_point).
    return op, (scale, zero_point)


KERNELS = [
    ("fake_quantize_per_tensor_affine", per_tensor_affine, ("forward", "forward_backward")),
    ("fake_quantize_per_channel_affine", per_channel_affine, ("forward", "forward_backward")),
    ("fused_moving_avg_obs_fake_quant", fused_observer, ("forward",)),
    ("fake_quantize_learnable_per_tensor_affine", learnable, ("forward", "forward_backward")),
]


def timed_call(torch, build, pass_name, x, dy, bits):
    """The callable to time: the op alone, or the op and its backward."""
    op, params = build(torch, x, bits)
    if pass_name == "forward":
        return lambda: op(x)
    x_req = x.detach().requires_grad_(True)
    for p in params:
        p.requires_grad_(True)
    inputs = (x_req,) + tuple(params)

    def forward_backward():
        y = op(x_req)
        # autograd.grad returns the gradients instead of accumulating into .grad.
        return torch.autograd.grad(y, inputs, dy.view(y.shape))

    return forward_backward


def run_kernels(torch, args, device, timer):
    results = []
    for n in args.sizes:
        x = hashed_pattern(torch, n, KERNEL_SEED_X, -3.0, 3.0, device)
        dy = hashed_pattern(torch, n, KERNEL_SEED_DY, -1.0, 1.0, device)
        for bits in args.bits:
            for op_name, build, passes in KERNELS:
                for pass_name in passes:
                    time_ms, error = None, None
                    try:
                        fn = timed_call(torch, build, pass_name, x, dy, bits)
                        time_ms = timer.mean_seconds(fn) * 1e3
                    except Exception as e:  # recorded, never fatal
                        error = first_line(e)
                    results.append({"op": op_name, "pass": pass_name, "bits": bits, "n": n,
                                    "time_ms": time_ms, "error": error})
                    shown = f"{time_ms:.4f} ms" if error is None else f"error: {error}"
                    progress(f"kernel {op_name} {pass_name} bits={bits} n={n}: {shown}")
        del x, dy
    return results


# ---------------------------------------------------------------------------
# Training


def lenet5(torch):
    """lowbit's LeNet-5, with quant stubs that are identities until prepare_qat."""
    nn = torch.nn
    tq = torch.ao.quantization

    class LeNet5(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = tq.QuantStub()
            self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
            self.relu1 = nn.ReLU()
            self.pool1 = nn.MaxPool2d(2)
            self.conv2 = nn.Conv2d(6, 16, 5)
            self.relu2 = nn.ReLU()
            self.pool2 = nn.MaxPool2d(2)
            self.flatten = nn.Flatten()
            self.fc1 = nn.Linear(400, 120)
            self.relu3 = nn.ReLU()
            self.fc2 = nn.Linear(120, 84)
            self.relu4 = nn.ReLU()
            self.fc3 = nn.Linear(84, 10)
            self.dequant = tq.DeQuantStub()

        def forward(self, x):
            x = self.quant(x)
            x = self.pool1(self.relu1(self.conv1(x)))
            x = self.pool2(self.relu2(self.conv2(x)))
            x = self.flatten(x)
            x = self.relu3(self.fc1(x))
            x = self.relu4(self.fc2(x))
            return self.dequant(self.fc3(x))

    return LeNet5()


def qat_qconfig(torch, bits):
    """PyTorch's default QAT qconfig's structure, at `bits`."""
    tq = torch.ao.quantization
    fake_quant = getattr(tq, "FusedMovingAvgObsFakeQuantize", tq.FakeQuantize)
    activation = fake_quant.with_args(
        observer=tq.MovingAverageMinMaxObserver, quant_min=0, quant_max=(1 << bits) - 1,
        dtype=torch.quint8, qscheme=torch.per_tensor_affine)
    weight = fake_quant.with_args(
        observer=tq.MovingAveragePerChannelMinMaxObserver, quant_min=-(1 << (bits - 1)),
        quant_max=(1 << (bits - 1)) - 1, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    return tq.QConfig(activation=activation, weight=weight)


def build_model(torch, config, device):
    torch.manual_seed(0)
    model = lenet5(torch).train()
    if config != "fp32":
        tq = torch.ao.quantization
        fuse = getattr(tq, "fuse_modules_qat", tq.fuse_modules)  # train mode: QAT fusion
        model = fuse(model, FUSED_PAIRS)
        model.qconfig = qat_qconfig(torch, int(config))
        model = tq.prepare_qat(model.train())
    return model.to(device)


def normalise(images):
    """uint8 pixels -> the network's float input, as lowbit normalises them."""
    return (images.float() / 255.0 - DATA_MEAN) / DATA_STD


def synthetic_data(torch, batch, device):
    """Fixed-seed uint8 images and labels, on the device."""
    count = max(4 * batch, 8192)
    gen = torch.Generator().manual_seed(1234)
    images = torch.randint(0, 256, (count, 1, 28, 28), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, 10, (count,), generator=gen, dtype=torch.int64)
    return images.to(device), labels.to(device)


def train_throughput(torch, config, batch, args, device):
    """(images/s, ms/step) of --train-steps timed steps after the warm-up steps."""
    model = build_model(torch, config, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    images, labels = synthetic_data(torch, batch, device)
    batches = images.shape[0] // batch
    step_index = 0

    def step():
        nonlocal step_index
        lo = (step_index % batches) * batch
        step_index += 1
        x = normalise(images[lo:lo + batch])
        loss = loss_fn(model(x), labels[lo:lo + batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(args.warmup_steps):
        step()
    sync()
    begin = time.perf_counter()
    for _ in range(args.train_steps):
        step()
    sync()
    seconds = time.perf_counter() - begin
    return args.train_steps * batch / seconds, seconds / args.train_steps * 1e3


def run_training(torch, args, device):
    results = []
    for config in args.train_bits:
        bits = None if config == "fp32" else int(config)
        for batch in args.batches:
            images_per_s, step_ms, error = None, None, None
            try:
                images_per_s, step_ms = train_throughput(torch, config, batch, args, device)
            except Exception as e:  # recorded, never fatal
                error = first_line(e)
            results.append({"config": config, "bits": bits, "batch": batch,
                            "images_per_s": images_per_s, "step_ms": step_ms,
                            "steps": args.train_steps, "error": error})
            shown = (f"{images_per_s:.1f} img/s, {step_ms:.3f} ms/step" if error is None
                     else f"error: {error}")
            progress(f"training {config} batch={batch}: {shown}")
    return results


# ---------------------------------------------------------------------------
# Inference


def quantized_engine(torch):
    engines = torch.backends.quantized.supported_engines
    for engine in ("fbgemm", "onednn", "qnnpack"):
        if engine in engines:
            return engine
    raise RuntimeError(f"torch has none of fbgemm, onednn and qnnpack (it has {engines})")


def inference_model(torch, config, engine):
    """LeNet-5 in eval mode: fp32, or int8 by post-training static quantization."""
    torch.manual_seed(0)
    model = lenet5(torch).eval()
    if config == "int8":
        tq = torch.ao.quantization
        torch.backends.quantized.engine = engine
        model = tq.fuse_modules(model, FUSED_PAIRS)
        model.qconfig = tq.get_default_qconfig(engine)
        tq.prepare(model, inplace=True)
        images, _ = synthetic_data(torch, 64, torch.device("cpu"))
        with torch.inference_mode():
            for b in range(CALIBRATION_BATCHES):
                model(normalise(images[b * 64:(b + 1) * 64]))
        tq.convert(model, inplace=True)
    return model


def run_inference(torch, args):
    """Images/s of fp32 and int8 eval at each batch, on the CPU."""
    cpu = torch.device("cpu")
    timer = Timer(torch, cpu, args.inference_min_time)
    engine, results = None, []
    for config in ("int8", "fp32"):
        for batch in args.inference_batches:
            images_per_s, error = None, None
            try:
                engine = engine or quantized_engine(torch)
                model = inference_model(torch, config, engine)
                pixels, _ = synthetic_data(torch, batch, cpu)
                pixels = pixels[:batch].contiguous()
                with torch.inference_mode():
                    images_per_s = batch / timer.mean_seconds(lambda: model(normalise(pixels)))
            except Exception as e:  # recorded, never fatal
                error = first_line(e)
            results.append({"config": config, "batch": batch, "images_per_s": images_per_s,
                            "error": error})
            shown = f"{images_per_s:.1f} img/s" if error is None else f"error: {error}"
            progress(f"inference {config} batch={batch}: {shown}")
    return engine, results


# ---------------------------------------------------------------------------
# Main


def write_json(report, path):
    text = json.dumps(report, indent=2) + "\n"
    if path is None:
        sys.stdout.write(text)
        return
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)  # readers never see a half-written file


def main(argv=None):
    args = parse_args(argv)
    try:
        import torch
    except Exception as e:
        print(f"error: cannot import torch: {first_line(e)}", file=sys.stderr)
        return 1
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
    # The CPU inference runs even beside CUDA kernels and training.
    torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    device_name = (torch.cuda.get_device_name(device) if use_cuda
                   else f"cpu ({threads} threads)")
    progress(f"torch {torch.__version__} on {device_name}")

    report = {
        "peer": "pytorch",
        "torch_version": torch.__version__,
        "device": device.type,
        "device_name": device_name,
        "threads": threads,
        "min_time_s": args.min_time,
        "inference_min_time_s": args.inference_min_time,
        "kernels": [],
        "training": [],
        "inference_engine": None,
        "inference": [],
    }
    if not args.skip_kernels:
        report["kernels"] = run_kernels(torch, args, device, Timer(torch, device, args.min_time))
    if not args.skip_training:
        report["training"] = run_training(torch, args, device)
    if not args.skip_inference:
        report["inference_engine"], report["inference"] = run_inference(torch, args)
    write_json(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
