#!/usr/bin/env python3
"""The torch-ops suite: lowbit's PyTorch operators (lowbit_torch, built with
-DLOWBIT_TORCH=ON) against the torch.* ops they replace, forward + backward.

  case            lowbit_torch                         torch
  per_tensor      fake_quant_per_tensor_affine         torch.fake_quantize_per_tensor_affine
                    x [n], scale 0.4, zero point 8, grid 0..15
  per_channel     fake_quant_per_channel_affine        torch.fake_quantize_per_channel_affine
                    x [64, n/64], axis 0, a scale per channel, zero point 0, grid -8..7
  ema             ema_fake_quant(x, state, 4, False,   torch.fused_moving_avg_obs_fake_quant
                    decay 0.999), state from             (per tensor, observer and fake quant on,
                    new_ema_state                        averaging constant 0.001), grid 0..15
  lsq             lsq_fake_quant(x, scale, 0, 15)      torch._fake_quantize_learnable_per_tensor_
                                                         affine(x, scale, zero point 0, 0, 15,
                                                         grad_factor 1.0)
  (lsq: the scale is a 1-element tensor that requires grad, on both sides.)

Each case runs at every --sizes element count in every --dtypes dtype: x
requires grad, y = op(x, ...) and y.backward(dy) with dy made beforehand; the
gradients are reset to None, untimed, before each call, so a backward writes
fresh gradients instead of adding to old ones. Where torch's op does not take
a dtype (torch 1.13 on the CPU takes no bfloat16), its side is
op(x.float(), ...).to(dtype), backward included: what a user would have to
write. Each row says which ("torch_form").

Timing: --warmup untimed calls of each side, then the repeats (fewer at the
larger sizes, see repeats()), lowbit and torch alternating, each call timed
alone with time.perf_counter (on CUDA: CUDA events, L2 flushed untimed before
each call). The row holds the median and the minimum of each side, and
ratio = torch median / lowbit median (> 1: lowbit is faster). lowbit_gbps is
the effective bandwidth of lowbit's median call: the bytes of x, y, dy and dx
(4 × the element size per element, whatever either side saves between its
forward and its backward) over its time. Both sides run on --threads threads
(default: every core): torch.set_num_threads sets them in the OpenMP runtime
(libgomp) that lowbit's CPU ops share with torch.

A side that cannot run (lowbit_torch lacks the op in this build, or rejects
the dtype or the device) is recorded with its error and no time, and is
printed as NOT RUN on stderr, once per case and again at the end; nothing is
estimated in its place. The other side is still timed, and the row has no
ratio. Where both sides' forward is meant to agree bit for bit (per_tensor,
per_channel, lsq: lowbit's contract is torch's own result), same_forward
records whether it did on this input.

Output: JSON to --out (schema: bench/torch_ops.schema.json); bench/report.py
--torch-ops turns it into torch_ops.md. Exit 0 when the JSON was written
(NOT RUN cases included), 1 when torch or the library cannot be loaded, 2
for bad arguments.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SCHEMA_VERSION = 1
CHANNELS = 64
SEED = 20261201
FALLBACK_L2_BYTES = 100 << 20
EMA_DECAY = 0.999
CASES = ["per_tensor", "per_channel", "ema", "lsq"]


def repeats(n):
    """Timed calls per side: enough for a stable median, few at 2^26 (a
    bfloat16 call of torch's there takes about a second on 2 cores)."""
    if n <= 1 << 20:
        return 15
    if n <= 1 << 22:
        return 9
    if n <= 1 << 24:
        return 5
    return 3


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu",
                   help="cpu (the default), cuda, or auto: cuda when torch has one")
    p.add_argument("--sizes", default="1048576,4194304,16777216,67108864",
                   help="element counts, comma-separated, multiples of %d "
                        "(default: 2^20,2^22,2^24,2^26)" % CHANNELS)
    p.add_argument("--dtypes", default="float32,bfloat16",
                   help="dtypes of x and dy, comma-separated (default: %(default)s)")
    p.add_argument("--cases", default=",".join(CASES),
                   help="cases to run, comma-separated (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed calls per side before the timed ones (default: 2; the "
                        "first calls also settle glibc malloc's thresholds)")
    p.add_argument("--repeats", type=int,
                   help="timed calls per side at every size (default: 15 at 2^20 down to 3 "
                        "at 2^26)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="CPU threads for torch (default: every core)")
    p.add_argument("--library",
                   default=os.path.join(ROOT, "build", "host", "torch", "liblowbit_torch.so"),
                   help="liblowbit_torch.so (default: build/host/torch/ of this tree)")
    p.add_argument("--out", required=True, help="where the JSON goes")
    args = p.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        p.error(f"--sizes: expected comma-separated integers, got {args.sizes!r}")
    if any(n <= 0 or n % CHANNELS for n in args.sizes):
        p.error(f"--sizes: every size must be a positive multiple of {CHANNELS}")
    args.dtypes = args.dtypes.split(",")
    if any(d not in ("float32", "bfloat16", "float16") for d in args.dtypes):
        p.error("--dtypes: expected float32, bfloat16 or float16")
    args.cases = args.cases.split(",")
    if any(c not in CASES for c in args.cases):
        p.error(f"--cases: expected some of {','.join(CASES)}")
    if args.warmup < 0 or (args.repeats is not None and args.repeats < 1) or args.threads < 1:
        p.error("--warmup must be >= 0, --repeats and --threads >= 1")
    return args


def progress(message):
    print(message, file=sys.stderr, flush=True)


def first_line(error):
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]


class Timer:
    """Seconds of one call, per the module docstring."""

    def __init__(self, torch, device):
        self.torch = torch
        self.cuda = device.type == "cuda"
        if self.cuda:
            props = torch.cuda.get_device_properties(device)
            l2 = getattr(props, "L2_cache_size", 0) or FALLBACK_L2_BYTES
            self.flush = torch.empty(2 * l2, dtype=torch.uint8, device=device)
            self.events = (torch.cuda.Event(enable_timing=True),
                           torch.cuda.Event(enable_timing=True))

    def seconds(self, fn):
        if not self.cuda:
            begin = time.perf_counter()
            fn()
            return time.perf_counter() - begin
        start, stop = self.events
        self.flush.zero_()  # writing 2x L2 evicts the previous call's data
        self.torch.cuda.synchronize()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        return start.elapsed_time(stop) * 1e-3


# ---------------------------------------------------------------------------
# The cases. Each builder gets x (a leaf that requires grad, of the dtype
# timed) and returns a Case: torch's forward, lowbit's forward (or why there
# is none), the other leaves whose gradients are reset between calls, and
# whether the two forwards should agree bit for bit. A forward is a
# function of x that returns y.


class Case:
    def __init__(self, torch_fn, lowbit_fn, leaves=(), bit_exact=False):
        self.torch_fn, self.lowbit_fn = torch_fn, lowbit_fn
        self.leaves, self.bit_exact = list(leaves), bit_exact


def lowbit_function(torch, lowbit_torch, name):
    """lowbit_torch.NAME, or a LookupError that says what is missing."""
    fn = getattr(lowbit_torch, name, None)
    if fn is None:
        raise LookupError(f"lowbit_torch has no {name} in this tree "
                          "(host/torch/lowbit_torch/__init__.py)")
    try:
        getattr(torch.ops.lowbit, name)
    except (AttributeError, RuntimeError):
        raise LookupError(f"torch.ops.lowbit has no {name}: the loaded library does not "
                          "register it")
    return fn


def lowbit_or_error(make):
    try:
        return make()
    except LookupError as e:
        return e


def per_tensor(torch, lowbit_torch, x):
    def ours():
        fq = lowbit_function(torch, lowbit_torch, "fake_quant_per_tensor_affine")
        return lambda v: fq(v, 0.4, 8, 0, 15)
    return Case(lambda v: torch.fake_quantize_per_tensor_affine(v, 0.4, 8, 0, 15),
                lowbit_or_error(ours), bit_exact=True)


def per_channel(torch, lowbit_torch, x):
    scale = torch.linspace(3 / 7, 4 / 7, CHANNELS, device=x.device)
    zero_point = torch.zeros(CHANNELS, dtype=torch.int32, device=x.device)

    def ours():
        fq = lowbit_function(torch, lowbit_torch, "fake_quant_per_channel_affine")
        return lambda v: fq(v.view(CHANNELS, -1), scale, zero_point, 0, -8, 7)
    return Case(lambda v: torch.fake_quantize_per_channel_affine(v.view(CHANNELS, -1), scale,
                                                                 zero_point, 0, -8, 7),
                lowbit_or_error(ours), bit_exact=True)


def ema(torch, lowbit_torch, x):
    device = x.device
    on = torch.ones(1, dtype=torch.long, device=device)
    running_min = torch.tensor(float("inf"), device=device)
    running_max = torch.tensor(float("-inf"), device=device)
    scale = torch.ones(1, device=device)
    zero_point = torch.zeros(1, dtype=torch.int32, device=device)

    def ours():
        fq = lowbit_function(torch, lowbit_torch, "ema_fake_quant")
        state = lowbit_function(torch, lowbit_torch, "new_ema_state")(device)
        return lambda v: fq(v, state, num_bits=4, narrow_range=False, decay=EMA_DECAY)
    # Not bit for bit: TensorFlow's nudged range against torch's observer.
    return Case(lambda v: torch.fused_moving_avg_obs_fake_quant(
                    v, on, on, running_min, running_max, scale, zero_point, 1 - EMA_DECAY,
                    0, 15, 0),
                lowbit_or_error(ours))


def lsq(torch, lowbit_torch, x):
    # LSQ's initial step, 2·mean|x|/sqrt(qmax), for x uniform in [-3, 3).
    ours_scale = torch.full((1,), 2 * 1.5 / 15 ** 0.5, device=x.device, requires_grad=True)
    theirs_scale = ours_scale.detach().clone().requires_grad_()
    zero_point = torch.zeros(1, device=x.device)

    def ours():
        fq = lowbit_function(torch, lowbit_torch, "lsq_fake_quant")
        return lambda v: fq(v, ours_scale, 0, 15)
    return Case(lambda v: torch._fake_quantize_learnable_per_tensor_affine(
                    v, theirs_scale, zero_point, 0, 15, 1.0),
                lowbit_or_error(ours), leaves=[ours_scale, theirs_scale], bit_exact=True)


BUILDERS = {"per_tensor": per_tensor, "per_channel": per_channel, "ema": ema, "lsq": lsq}
NAMES = {
    "per_tensor": ("fake_quant_per_tensor_affine", "torch.fake_quantize_per_tensor_affine"),
    "per_channel": ("fake_quant_per_channel_affine", "torch.fake_quantize_per_channel_affine"),
    "ema": ("ema_fake_quant", "torch.fused_moving_avg_obs_fake_quant"),
    "lsq": ("lsq_fake_quant", "torch._fake_quantize_learnable_per_tensor_affine"),
}
GRIDS = {"per_tensor": "0..15", "per_channel": "-8..7", "ema": "0..15", "lsq": "0..15"}


def torch_form(torch, torch_fn, dtype, device):
    """How torch's side runs at this dtype: the op itself when it takes the
    dtype (tried, forward and backward, on a small input), else through
    float32."""
    if dtype == torch.float32:
        return "native", torch_fn
    probe = torch.linspace(-3, 3, 4 * CHANNELS, device=device).to(dtype).requires_grad_()
    try:
        y = torch_fn(probe)
        y.backward(torch.ones_like(y))
        return "native", torch_fn
    except (RuntimeError, TypeError):
        return "float32 round trip", lambda v: torch_fn(v.float()).to(dtype)


def forward_backward(fn, x, dy, leaves):
    def call():
        y = fn(x)
        y.backward(dy.view(y.shape))

    def reset():
        for leaf in [x] + leaves:
            leaf.grad = None
    return call, reset


def time_case(torch, lowbit_torch, timer, case, n, dtype, args, device):
    lowbit_name, torch_name = NAMES[case]
    row = {"case": case, "lowbit_op": "lowbit_torch." + lowbit_name, "torch_op": torch_name,
           "dtype": str(dtype).replace("torch.", ""), "elements": n,
           "shape": [CHANNELS, n // CHANNELS] if case == "per_channel" else [n],
           "grid": GRIDS[case], "torch_form": None, "repeats": 0,
           "lowbit_ms": None, "lowbit_min_ms": None, "torch_ms": None, "torch_min_ms": None,
           "ratio": None, "bytes": 4 * n * torch.tensor([], dtype=dtype).element_size(),
           "lowbit_gbps": None, "same_forward": None, "lowbit_error": None, "torch_error": None}
    g = torch.Generator().manual_seed(SEED + n)
    x = (torch.rand(n, generator=g) * 6 - 3).to(device=device, dtype=dtype).requires_grad_()
    dy = (torch.rand(n, generator=g) * 2 - 1).to(device=device, dtype=dtype)
    spec = BUILDERS[case](torch, lowbit_torch, x)
    row["torch_form"], torch_fn = torch_form(torch, spec.torch_fn, dtype, device)

    sides, outputs = {}, {}
    for side, fn in (("lowbit", spec.lowbit_fn), ("torch", torch_fn)):
        if isinstance(fn, Exception):
            row[side + "_error"] = str(fn)
            continue
        call, reset = forward_backward(fn, x, dy, spec.leaves)
        try:
            for _ in range(args.warmup):
                reset()
                call()
            reset()
            with torch.no_grad():
                outputs[side] = fn(x)
        except Exception as e:  # noqa: BLE001 - any failure is this side's result
            row[side + "_error"] = first_line(e)
            continue
        sides[side] = (call, reset)
    if spec.bit_exact and len(outputs) == 2:
        a, b = outputs["lowbit"], outputs["torch"]
        row["same_forward"] = bool(a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b))
    del outputs

    count = args.repeats or repeats(n)
    times = {side: [] for side in sides}
    for _ in range(count if sides else 0):
        for side, (call, reset) in sides.items():
            reset()
            times[side].append(timer.seconds(call) * 1e3)
    row["repeats"] = count if sides else 0
    for side, values in times.items():
        row[side + "_ms"] = statistics.median(values)
        row[side + "_min_ms"] = min(values)
    if row["lowbit_ms"] is not None:
        row["lowbit_gbps"] = row["bytes"] / (row["lowbit_ms"] * 1e-3) / 1e9
        if row["torch_ms"] is not None:
            row["ratio"] = row["torch_ms"] / row["lowbit_ms"]
    return row


def not_run_lines(rows):
    """One line per case and side that did not run, sizes folded together."""
    seen = {}
    for r in rows:
        for side in ("lowbit", "torch"):
            error = r[side + "_error"]
            if error:
                key = (r["case"], r["dtype"], side, error)
                seen.setdefault(key, []).append(r["elements"])
    return [f"NOT RUN: {case} {dtype}, {side} side, at {len(sizes)} size(s): {error}"
            for (case, dtype, side, error), sizes in seen.items()]


def main(argv=None):
    args = parse_args(argv)
    try:
        import torch
    except ImportError as e:
        progress(f"torch_ops_bench: cannot import torch: {e}")
        return 1
    sys.path.insert(0, os.path.join(ROOT, "host", "torch"))
    import lowbit_torch
    try:
        lowbit_torch.load(args.library)
    except (OSError, RuntimeError) as e:
        progress(f"torch_ops_bench: cannot load {args.library}: {e}")
        return 1
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        progress("torch_ops_bench: --device cuda, but torch sees no CUDA device")
        return 1
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    timer = Timer(torch, device)
    dtypes = [getattr(torch, d) for d in args.dtypes]

    load_before = os.getloadavg()[0]
    if load_before > 0.5 * (os.cpu_count() or 1):
        progress(f"torch_ops_bench: WARNING: the machine is busy (load average {load_before:.2f} "
                 f"on {os.cpu_count()} cores): multi-threaded figures will be slow and noisy")
    rows = []
    for case in args.cases:
        for dtype in dtypes:
            for n in args.sizes:
                row = time_case(torch, lowbit_torch, timer, case, n, dtype, args, device)
                rows.append(row)
                if row["ratio"] is not None:
                    progress(f"torch_ops_bench: {case:11s} {row['dtype']:8s} n={n:>9d}: lowbit "
                             f"{row['lowbit_ms']:9.3f} ms, torch {row['torch_ms']:9.3f} ms "
                             f"({row['torch_form']}), ratio {row['ratio']:.2f}")
                else:
                    progress(f"torch_ops_bench: {case:11s} {row['dtype']:8s} n={n:>9d}: NOT RUN: "
                             + "; ".join(f"{side}: {row[side + '_error']}"
                                         for side in ("lowbit", "torch")
                                         if row[side + "_error"]))
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = _cpu_name()
    report = {
        "schema_version": SCHEMA_VERSION,
        "suite": "torch_ops",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device.type,
        "device_name": device_name,
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        # Other work on the machine slows a multi-threaded call a lot (on 2
        # busy cores, tenfold): the 1-minute load average before and after.
        "load_average": [load_before, os.getloadavg()[0]],
        "torch_version": torch.__version__,
        "library": os.path.abspath(args.library),
        "clock": "CUDA events, L2 flushed" if device.type == "cuda" else "time.perf_counter",
        "warmup": args.warmup,
        "cases": rows,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    for line in not_run_lines(rows):
        progress("torch_ops_bench: " + line)
    progress(f"torch_ops_bench: wrote {args.out}")
    return 0


def _cpu_name():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or None


if __name__ == "__main__":
    sys.exit(main())
