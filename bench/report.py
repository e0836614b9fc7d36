#!/usr/bin/env python3
"""Turns one benchmark run into results.json, results.md and PNG charts.

Inputs (all from the same run, written by scripts/bench.sh):
  kernels.json    Google Benchmark JSON of lowbit_bench_kernels
  train.json      Google Benchmark JSON of lowbit_bench_train
  inference.json  Google Benchmark JSON of lowbit_bench_inference (optional)
  peers.json      bench/peers/torch_peers.py output (optional: PyTorch's figures)
  machine.json    the card, driver, CUDA and cuDNN versions, host and date
  torch_ops.json  bench/torch_ops_bench.py output (optional: lowbit_torch's
                  ops against torch.*; it becomes torch_ops.md, and can be
                  given alone, without --kernels and --train)

results.json follows bench/results.schema.json. Every ratio in it is taken
between figures of this run: % of the device copy, QAT overhead over our own
fp32 step, and speed-up over PyTorch on the same machine (for inference,
PyTorch's int8 and fp32 on the CPU, whatever ran lowbit). DESIGN.md §4's GPU
targets are judged only on a GPU run; a CPU run reports the same figures,
labelled CPU, with no verdict, and judges the CPU targets. A CPU run's kernel
suite also times the single-threaded lowbit::ref beside the CPU backend's
ops (reference_kernels, and each op's speedup_vs_ref).
"""

import argparse
import json
import math
import os
import re
import sys

SCHEMA_VERSION = 1

# DESIGN.md §4 judges kernels at this size; smaller runs report their largest.
TARGET_N = 1 << 26

# PyTorch op and pass -> the lowbit kernels whose times add up to the same work.
PEER_EQUIVALENTS = {
    ("fake_quantize_per_tensor_affine", "forward"): ["fake_quant_affine/per_tensor"],
    ("fake_quantize_per_tensor_affine", "forward_backward"):
        ["fake_quant_affine/per_tensor", "ste_backward/pass"],
    ("fake_quantize_per_channel_affine", "forward"): ["fake_quant_affine/per_channel"],
    ("fake_quantize_per_channel_affine", "forward_backward"):
        ["fake_quant_affine/per_channel", "ste_backward/pass"],
    ("fused_moving_avg_obs_fake_quant", "forward"): ["ema_fake_quant/exact"],
    ("fake_quantize_learnable_per_tensor_affine", "forward"): ["lsq_forward"],
    ("fake_quantize_learnable_per_tensor_affine", "forward_backward"):
        ["lsq_forward", "lsq_backward"],
}

STAGES = ["conv", "gemm", "pool", "quantizers", "bias_activation", "loss_sgd", "data", "memory"]

TIME_UNIT_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}


def load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def finite_or_none(value):
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def parse_name(name):
    """'gpu/fake_quant_range/per_tensor/bits:4/n:65536/manual_time' ->
    ('gpu', 'fake_quant_range/per_tensor', {'bits': 4, 'n': 65536}, ['manual_time'])."""
    parts = name.split("/")
    device, words, params, rest = parts[0], [], {}, []
    for part in parts[1:]:
        m = re.fullmatch(r"(\w+):(\d+)", part)
        if m:
            params[m.group(1)] = int(m.group(2))
        elif params:
            rest.append(part)
        else:
            words.append(part)
    return device, "/".join(words), params, rest


def time_ms(bench):
    return bench["real_time"] * TIME_UNIT_MS[bench.get("time_unit", "ns")]


def kernel_rows(gbench):
    """One row per kernel benchmark, failures included (with their message)."""
    rows = []
    for b in gbench.get("benchmarks", []):
        if b.get("run_type", "iteration") != "iteration":
            continue
        device, op, params, _ = parse_name(b["name"])
        row = {
            "name": b["name"],
            "device": device,
            "op": op,
            "bits": params.get("bits"),
            "n": params["n"],
            "error": b.get("error_message") if b.get("error_occurred") else None,
        }
        if row["error"] is None:
            row.update({
                "time_ms": time_ms(b),
                "bytes_per_elem": b["bytes_per_elem"],
                "gbps": b["GB/s"],
                "pct_of_copy": finite_or_none(b.get("pct_of_copy")),
            })
        rows.append(row)
    # Against our fp32 bias + ReLU pass at the same size, in the same run.
    fp32 = {r["n"]: r for r in rows if r["op"] == "fp32_bias_relu" and r["error"] is None}
    for r in rows:
        if r["error"] is None and r["n"] in fp32 and r["op"] not in ("copy", "fp32_bias_relu"):
            r["time_vs_fp32"] = r["time_ms"] / fp32[r["n"]]["time_ms"]
    return rows


def attach_reference(kernels, reference):
    """CPU runs time lowbit::ref beside the CPU backend: each op's speed-up."""
    ref = {(r["op"], r["bits"], r["n"]): r for r in reference if r["error"] is None}
    for r in kernels:
        theirs = ref.get((r["op"], r["bits"], r["n"]))
        if r["error"] is None and theirs:
            r["speedup_vs_ref"] = theirs["time_ms"] / r["time_ms"]


def training_rows(gbench):
    steps, breakdowns = [], []
    for b in gbench.get("benchmarks", []):
        if b.get("run_type", "iteration") != "iteration":
            continue
        device, what, params, rest = parse_name(b["name"])
        kind = what.split("/")[0]
        error = b.get("error_message") if b.get("error_occurred") else None
        row = {
            "name": b["name"],
            "device": device,
            "config": str(params["bits"]) if params.get("bits") else "fp32",
            "bits": params.get("bits"),
            "batch": params["batch"],
            "range": (b.get("label") or None) if params.get("bits") else None,
            "error": error,
        }
        if kind == "train_step":
            row["mode"] = rest[0]
            if error is None:
                row.update({
                    "images_per_s": b["images_per_s"],
                    "step_ms": b["step_ms"],
                    "loss": b["loss"],
                    "qat_overhead_pct": finite_or_none(b.get("qat_overhead_pct")),
                })
            steps.append(row)
        elif kind == "train_breakdown":
            if error is None:
                row["step_ms"] = b["ms_step"]
                row["stages_ms"] = {s: b["ms_" + s] for s in STAGES}
            breakdowns.append(row)
    return steps, breakdowns


def inference_rows(gbench):
    rows = []
    for b in gbench.get("benchmarks", []):
        if b.get("run_type", "iteration") != "iteration":
            continue
        device, _, params, _ = parse_name(b["name"])
        bits = params.get("bits")
        row = {
            "name": b["name"],
            "device": device,
            "config": str(bits) if bits else "fp32",
            "bits": bits,
            "batch": params["batch"],
            "range": (b.get("label") or None) if bits else None,
            "error": b.get("error_message") if b.get("error_occurred") else None,
        }
        if row["error"] is None:
            row.update({"images_per_s": b["items_per_second"], "batch_ms": time_ms(b)})
        rows.append(row)
    return rows


def attach_peer_inference(rows, peers):
    """Integer rows beside PyTorch's int8, whatever their width; fp32 beside its fp32."""
    torch_rate = {(p["config"], p["batch"]): (p.get("images_per_s"), p.get("error"))
                  for p in peers.get("inference", [])}
    for r in rows:
        r["torch_config"] = "int8" if r["bits"] else "fp32"
        rate, error = torch_rate.get((r["torch_config"], r["batch"]), (None, None))
        r["torch_images_per_s"] = rate
        r["torch_error"] = error
        ours = r.get("images_per_s")
        r["speedup_vs_torch"] = ours / rate if ours and rate else None


def peer_comparisons(kernels, peers):
    """Each PyTorch kernel figure beside the lowbit kernels that do the same work."""
    ours = {(r["op"], r["bits"], r["n"]): r for r in kernels if r["error"] is None}
    # ste_backward reads only the mask: one figure per size, whatever the width.
    for r in kernels:
        if r["error"] is None and r["bits"] is None:
            ours[(r["op"], "any", r["n"])] = r
    rows = []
    for p in peers.get("kernels", []):
        equivalent = PEER_EQUIVALENTS.get((p["op"], p["pass"]))
        if equivalent is None:
            continue
        parts = [ours.get((op, p["bits"], p["n"])) or ours.get((op, "any", p["n"]))
                 for op in equivalent]
        lowbit_ms = sum(r["time_ms"] for r in parts) if all(parts) else None
        torch_ms = p.get("time_ms")
        rows.append({
            "torch_op": p["op"],
            "pass": p["pass"],
            "bits": p["bits"],
            "n": p["n"],
            "lowbit_ops": equivalent,
            "lowbit_ms": lowbit_ms,
            "torch_ms": torch_ms,
            "torch_error": p.get("error"),
            "speedup": torch_ms / lowbit_ms if lowbit_ms and torch_ms else None,
        })
    return rows


def attach_peer_training(steps, peers):
    torch_rate = {}
    for p in peers.get("training", []):
        key = (p["bits"] or 0, p["batch"])
        torch_rate[key] = (p.get("images_per_s"), p.get("error"))
    for r in steps:
        rate, error = torch_rate.get((r["bits"] or 0, r["batch"]), (None, None))
        r["torch_images_per_s"] = rate
        r["torch_error"] = error
        ours = r.get("images_per_s")
        r["speedup_vs_torch"] = ours / rate if ours and rate else None


def largest_n(kernels):
    sizes = [r["n"] for r in kernels if r["error"] is None]
    return max(sizes) if sizes else None


def kernel_at(kernels, op, bits, n):
    for r in kernels:
        if r["op"] == op and r["bits"] == bits and r["n"] == n and r["error"] is None:
            return r
    return None


def targets(kernels, steps, comparisons, backend):
    """DESIGN.md §4's targets, the figures this run reached, and PyTorch's
    figure for the same work in the same run."""
    n = largest_n(kernels)
    gpu = backend == "gpu"
    judged = gpu and n == TARGET_N
    widths = sorted({r["bits"] for r in kernels if r["bits"]})
    rows = []

    def add(target, goal, value, text, met, torch=None):
        judge = judged or (not gpu and target.startswith("CPU"))
        rows.append({"target": target, "goal": goal, "value": finite_or_none(value),
                     "measured": text, "met": met if judge else None, "torch": torch})

    def torch_kernel(op, pass_, lowbit_op=None):
        """PyTorch's time at 4 bits and lowbit's speed-up: over the kernels
        that do the same work, or over `lowbit_op` alone."""
        for c in comparisons:
            if (c["torch_op"], c["pass"], c["bits"], c["n"]) != (op, pass_, 4, n):
                continue
            if not c["torch_ms"]:
                return "error: " + (c["torch_error"] or "no figure")
            ours = kernel_at(kernels, lowbit_op, 4, n) if lowbit_op else None
            lowbit_ms = ours["time_ms"] if ours else c["lowbit_ms"]
            if not lowbit_ms:
                return f"{c['torch_ms']:.3f} ms at 4 bits"
            return f"{c['torch_ms']:.3f} ms at 4 bits (lowbit {c['torch_ms'] / lowbit_ms:.2f}×)"
        return None

    def worst_pct(*ops):
        found = [kernel_at(kernels, op, b, n) for op in ops for b in widths]
        values = [r["pct_of_copy"] for r in found if r and r.get("pct_of_copy") is not None]
        return min(values) if values else None

    fq = worst_pct("fake_quant_range/per_tensor", "fake_quant_affine/per_tensor")
    if fq is not None:
        add("per-tensor fake quant forward", ">= 90% of copy bandwidth", fq,
            f"{fq:.1f}% of copy (worst of range and affine, {widths} bits)", fq >= 90,
            torch_kernel("fake_quantize_per_tensor_affine", "forward"))
    ste = kernel_at(kernels, "ste_backward/pass", None, n)
    fwd = kernel_at(kernels, "fake_quant_affine/per_tensor", 4, n)
    if ste and fwd:
        total = fwd["time_ms"] + ste["time_ms"]
        both = min(fwd.get("pct_of_copy") or 0, ste.get("pct_of_copy") or 0)
        add("forward + STE backward (4 bits)", "<= 0.30 ms, both >= 90% of copy", total,
            f"{total:.3f} ms; {both:.1f}% of copy (lower of the two)",
            total <= 0.30 and both >= 90,
            torch_kernel("fake_quantize_per_tensor_affine", "forward_backward"))
    for mode, bytes_goal in (("exact", 12.125), ("lagged", 8.125)):
        ema = worst_pct("ema_fake_quant/" + mode)
        if ema is None:
            continue
        bpe = max(r["bytes_per_elem"] for r in kernels
                  if r["op"] == "ema_fake_quant/" + mode and r["error"] is None)
        add(f"EMA observer + fake quant, {mode}", f"<= {bytes_goal} B/elem, >= 85% of copy",
            ema, f"{bpe} B/elem, {ema:.1f}% of copy (worst of {widths} bits)",
            bpe <= bytes_goal and ema >= 85,
            torch_kernel("fused_moving_avg_obs_fake_quant", "forward", "ema_fake_quant/" + mode))
    ratios = []
    for family in ("range", "affine"):
        for b in widths:
            pt = kernel_at(kernels, f"fake_quant_{family}/per_tensor", b, n)
            pc = kernel_at(kernels, f"fake_quant_{family}/per_channel", b, n)
            if pt and pc:
                ratios.append(pc["time_ms"] / pt["time_ms"])
    if ratios:
        worst = max(ratios)
        add("per-channel fake quant forward", "same time as per-tensor (within 10%)", worst,
            f"{worst:.2f}× the per-tensor time (worst of range and affine, {widths} bits)",
            worst <= 1.10, torch_kernel("fake_quantize_per_channel_affine", "forward"))
    lsq_f = kernel_at(kernels, "lsq_forward", 4, n)
    lsq_b = kernel_at(kernels, "lsq_backward", 4, n)
    if lsq_f and lsq_b:
        total = lsq_f["time_ms"] + lsq_b["time_ms"]
        add("LSQ forward + backward (4 bits)", "<= 0.45 ms", total, f"{total:.3f} ms",
            total <= 0.45,
            torch_kernel("fake_quantize_learnable_per_tensor_affine", "forward_backward"))

    def torch_rates(batch=None):
        rates = [r["torch_images_per_s"] for r in steps if r["bits"] and r["mode"] == "graph"
                 and r.get("torch_images_per_s") and batch in (None, r["batch"])]
        return f"QAT eager, slowest: {min(rates):,.0f} img/s" if rates else None

    graph256 = [r for r in steps if r["mode"] == "graph" and r["batch"] == 256
                and r["bits"] and r["error"] is None]
    if graph256:
        low = min(graph256, key=lambda r: r["images_per_s"])
        add("QAT 2/4/8-bit training at batch 256 (CUDA graph)", ">= 500k img/s",
            low["images_per_s"],
            f"{low['images_per_s']:,.0f} img/s (slowest: {low['config']} bits)",
            low["images_per_s"] >= 500e3, torch_rates(256))
    graph = [r for r in steps if r["mode"] == "graph" and r["bits"]
             and r.get("qat_overhead_pct") is not None]
    if graph:
        high = max(graph, key=lambda r: r["qat_overhead_pct"])
        fp32 = {r["batch"]: r.get("torch_images_per_s") for r in steps if not r["bits"]}
        torch_overheads = [100 * (fp32[r["batch"]] / r["torch_images_per_s"] - 1) for r in graph
                           if r.get("torch_images_per_s") and fp32.get(r["batch"])]
        add("QAT overhead over our fp32 step (CUDA graph)", "<= 15%", high["qat_overhead_pct"],
            f"{high['qat_overhead_pct']:.1f}% (worst: {high['config']} bits, batch "
            f"{high['batch']})", high["qat_overhead_pct"] <= 15,
            f"its own QAT over its fp32, worst: {max(torch_overheads):.1f}%"
            if torch_overheads else None)
    if backend == "cpu":
        # DESIGN.md §4's CPU targets, judged at batch 256 (graph), the others shown.
        def at(batch, bits):
            return [r for r in steps if r["mode"] == "graph" and r["batch"] == batch
                    and r["error"] is None and bool(r["bits"]) == bits]
        batches = sorted({r["batch"] for r in steps if r["mode"] == "graph"})
        ratios = {b: [r["speedup_vs_torch"] for r in at(b, True) if r.get("speedup_vs_torch")]
                  for b in batches}
        if ratios.get(256):
            others = ", ".join(f"batch {b}: {min(ratios[b]):.2f}×" for b in batches
                               if b != 256 and ratios[b])
            low = min(ratios[256])
            add("CPU QAT training against PyTorch eager, same cores", ">= 1.5× at 8, 4 and 2 bits",
                low, f"{low:.2f}× (slowest width, batch 256)" + (f"; {others}" if others else ""),
                low >= 1.5, torch_rates(256))
        overheads = {b: [r["qat_overhead_pct"] for r in at(b, True)
                         if r.get("qat_overhead_pct") is not None] for b in batches}
        if overheads.get(256):
            others = ", ".join(f"batch {b}: {max(overheads[b]):.1f}%" for b in batches
                               if b != 256 and overheads[b])
            high = max(overheads[256])
            add("CPU QAT overhead over our fp32 step", "<= 25%", high,
                f"{high:.1f}% (worst width, batch 256)" + (f"; {others}" if others else ""),
                high <= 25)
    return rows


# ---------------------------------------------------------------------------
# Markdown

def fmt(value, spec=",.0f", none="–"):
    return none if value is None else format(value, spec)


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def size_label(n):
    return f"2^{n.bit_length() - 1}" if n and n & (n - 1) == 0 else str(n)


def markdown(results):
    m = results["machine"]
    gpu = results["backend"] == "gpu"
    device = m.get("gpu") or m.get("description") or "unknown"
    out = [f"# lowbit benchmarks: {'GPU' if gpu else 'CPU'}, {device}", ""]
    if not gpu:
        out += ["**CPU figures**: no CUDA device was present, so the suites ran on the CPU "
                "backend (kernels: its multi-threaded ops, with the single-threaded lowbit::ref "
                "reference beside them). DESIGN.md §4's GPU targets are not judged.", ""]
    peers = results["peers"]
    cpu = m.get("cpu") and m["cpu"] + (f" ({m['cpus']} cores)" if m.get("cpus") else "")
    torch = peers.get("torch_version") and f"{peers['torch_version']} on {peers['device_name']}"
    facts = [("date", m.get("date")), ("card", m.get("gpu")), ("driver", m.get("driver")),
             ("CUDA runtime", m.get("cuda_runtime")), ("cuDNN", m.get("cudnn")),
             ("backend", m.get("description")), ("host", m.get("host")), ("CPU", cpu),
             ("PyTorch", torch)]
    out += [table(["", ""], [(k, v) for k, v in facts if v]), ""]

    out += ["## DESIGN.md §4 targets", ""]
    verdict = {True: "met", False: "**not met**", None: "not judged (CPU run)" if not gpu
               else "not judged"}
    out += [table(["target", "goal", "measured", "verdict", "PyTorch, same run"],
                  [(t["target"], t["goal"], t["measured"], verdict[t["met"]], t["torch"] or "–")
                   for t in results["targets"]]), ""]

    kernels = results["kernels"]
    n = largest_n(kernels)
    if n:
        widths = sorted({r["bits"] for r in kernels if r["bits"]})
        out += [f"## Kernels at n = {size_label(n)}", "",
                "Time per call and, in brackets, % of the device copy's bandwidth for the "
                "bytes the op must move (its B/elem).", ""]
        ops = []
        for r in kernels:
            if r["n"] == n and r["bits"] and r["op"] not in ops:
                ops.append(r["op"])

        def cell(r):
            if r is None:
                return "–"
            pct = r.get("pct_of_copy")
            return f"{r['time_ms'] * 1e3:,.1f} µs" + (f" ({pct:.0f}%)" if pct is not None else "")
        rows = []
        for op in ops:
            found = [kernel_at(kernels, op, b, n) for b in widths]
            bpe = sorted({r["bytes_per_elem"] for r in found if r})
            rows.append([op, "/".join(fmt(b, "g") for b in bpe)] + [cell(r) for r in found])
        out += [table(["op", "B/elem"] + [f"{b} bits" for b in widths], rows), ""]
        reference = results.get("reference_kernels") or []
        if reference:
            out += ["The reference, lowbit::ref on one thread, at the same n against the same "
                    "copy; after it, how many times faster the CPU backend's op above is:", ""]

            def ref_cell(op, b):
                theirs = kernel_at(reference, op, b, n)
                ours = kernel_at(kernels, op, b, n)
                speedup = ours and ours.get("speedup_vs_ref")
                return cell(theirs) + (f"; {speedup:,.1f}×" if speedup else "")
            out += [table(["op"] + [f"{b} bits" for b in widths],
                          [[op] + [ref_cell(op, b) for b in widths] for op in ops
                           if any(kernel_at(reference, op, b, n) for b in widths)]), ""]
        fixed = [r for r in kernels if r["n"] == n and r["bits"] is None and r["error"] is None]
        out += ["The baselines, and the STE backward (it reads a mask, whatever the width):", ""]
        fixed_ref = {r["op"]: r for r in reference if r["n"] == n and r["bits"] is None}
        out += [table(["op", "B/elem", "time", "GB/s"] + (["lowbit::ref"] if reference else []),
                      [[r["op"], fmt(r["bytes_per_elem"], "g"), cell(r), fmt(r["gbps"], ",.1f")]
                       + ([cell(fixed_ref.get(r["op"]))] if reference else [])
                       for r in fixed]), ""]

    comparisons = [c for c in results["peer_kernels"] if c["n"] == n]
    if comparisons:
        out += [f"## Kernels against PyTorch at n = {size_label(n)}", ""]
        out += [table(["PyTorch op", "pass", "bits", "lowbit", "PyTorch", "speed-up"],
                      [(c["torch_op"], c["pass"], c["bits"],
                        fmt(c["lowbit_ms"] and c["lowbit_ms"] * 1e3, ",.1f") + " µs",
                        (fmt(c["torch_ms"] * 1e3, ",.1f") + " µs") if c["torch_ms"]
                        else "error: " + (c["torch_error"] or "none"),
                        fmt(c["speedup"], ".2f") + "×" if c["speedup"] else "–")
                       for c in comparisons]), ""]

    steps = results["training"]
    if steps:
        out += ["## LeNet-5 training step", "",
                "Images per second; QAT overhead is against our fp32 step at the same batch "
                "and mode. PyTorch runs eager.", ""]
        rows = []
        for r in steps:
            if r["error"]:
                rows.append((r["config"], r["range"] or "", r["batch"], r["mode"],
                             "error: " + r["error"], "", "", "", ""))
                continue
            rows.append((r["config"], r["range"] or "", r["batch"], r["mode"],
                         fmt(r["images_per_s"]), fmt(r["step_ms"], ".3f"),
                         fmt(r["qat_overhead_pct"], "+.1f") + ("%" if r["qat_overhead_pct"]
                                                                is not None else ""),
                         fmt(r["torch_images_per_s"]) if r["torch_images_per_s"]
                         else ("error" if r["torch_error"] else "–"),
                         fmt(r["speedup_vs_torch"], ".2f") + "×" if r["speedup_vs_torch"]
                         else "–"))
        out += [table(["config", "range", "batch", "mode", "img/s", "step ms", "QAT overhead",
                       "PyTorch img/s", "vs PyTorch"], rows), ""]

    out += inference_section(results)

    breakdown = [r for r in results["breakdown"] if r["error"] is None]
    if breakdown:
        out += ["## Where an eager step's time goes", "",
                "Milliseconds per step by stage, from a timeline stamp after every backend "
                "call (events on the GPU). conv is cuDNN on the GPU, gemm is "
                "cuBLAS; pool and quantizers are lowbit's kernels.", ""]
        used = [s for s in STAGES if any(r["stages_ms"][s] > 0 for r in breakdown)]
        rows = []
        for r in breakdown:
            total = r["step_ms"] or 1.0
            rows.append([r["config"], r["batch"], fmt(r["step_ms"], ".3f")]
                        + [f"{r['stages_ms'][s]:.3f} ({100 * r['stages_ms'][s] / total:.0f}%)"
                           for s in used])
        out += [table(["config", "batch", "step ms"] + used, rows), ""]

    if peers["status"] != "ran":
        out += [f"PyTorch peers: {peers['status']} ({peers.get('reason') or 'no reason given'}).",
                ""]
    errors = [r for r in kernels + steps + results["breakdown"] + results["inference"]
              if r["error"]]
    if errors:
        out += ["## Failures", ""] + [f"- `{r['name']}`: {r['error']}" for r in errors] + [""]
    for chart in results["charts"]:
        out += [f"![{chart['title']}]({chart['file']})", ""]
    return "\n".join(out)


def inference_section(results):
    """Images/s by batch (rows) and bits (columns), PyTorch's int8 and fp32 beside."""
    rows = results["inference"]
    if not rows:
        return []
    peers = results["peers"]
    widths = sorted({r["bits"] for r in rows if r["bits"]})
    configs = [str(b) for b in widths] + ["fp32"]
    by_key = {(r["config"], r["batch"]): r for r in rows}
    torch_where = (f"on the CPU ({peers.get('threads')} threads, "
                   f"{peers.get('inference_engine') or 'no quantized'} engine)"
                   if peers["status"] == "ran" else "nowhere in this run (see below)")
    out = ["## LeNet-5 inference", "",
           "Images per second, from 8-bit pixels in host memory to class scores in host "
           "memory, one call per batch. lowbit's 2/4/8-bit columns are integer-only inference "
           "(int32 accumulation, fixed-point requantization); fp32 is the trainer's eval. "
           f"PyTorch runs {torch_where}: int8 is eager-mode post-training static "
           "quantization, fp32 eager eval. In brackets, lowbit ÷ PyTorch: every integer "
           "width against PyTorch int8, fp32 against PyTorch fp32.", ""]

    def ours(r):
        if r is None:
            return "–"
        if r["error"]:
            return "error"
        ratio = f" ({r['speedup_vs_torch']:.2f}×)" if r["speedup_vs_torch"] else ""
        return fmt(r["images_per_s"]) + ratio

    def theirs(r):
        if r is None or not (r["torch_images_per_s"] or r["torch_error"]):
            return "–"
        return fmt(r["torch_images_per_s"]) if r["torch_images_per_s"] else "error"

    table_rows = []
    for batch in sorted({r["batch"] for r in rows}):
        int8 = next((by_key[(c, batch)] for c in configs[:-1] if (c, batch) in by_key), None)
        table_rows.append([batch] + [ours(by_key.get((c, batch))) for c in configs]
                          + [theirs(int8), theirs(by_key.get(("fp32", batch)))])
    header = (["batch"] + [f"{b}-bit" for b in widths] + ["fp32", "PyTorch int8", "PyTorch fp32"])
    return out + [table(header, table_rows), ""]


# ---------------------------------------------------------------------------
# The torch-ops suite (bench/torch_ops_bench.py, bench/torch_ops.schema.json)

TORCH_OPS_HEADER = ["op", "dtype", "elements", "lowbit ms", "torch ms", "ratio", "lowbit GB/s"]


def torch_ops_markdown(run):
    """torch_ops.md: the op table (medians, ratio = torch ÷ lowbit) and every
    case a side of which did not run, with its error."""
    cases = run["cases"]
    cuda = run["device"] == "cuda"
    load = run.get("load_average") or []
    out = ["# lowbit_torch against torch.*: forward + backward", "",
           f"**{'GPU' if cuda else 'CPU'} figures**: {run.get('device_name') or run['device']}, "
           f"{run['threads']} threads, torch {run['torch_version']}, {run['date']}"
           + (f", load average {load[0]:.2f} before and {load[1]:.2f} after" if load else "")
           + ".", "",
           "Each call is y = op(x, ...) then y.backward(dy), with x requiring grad (and the "
           "scale, for LSQ) and dy made beforehand; gradients are reset, untimed, between "
           f"calls. Times are the median (in brackets, the minimum) of the timed calls "
           f"after {run['warmup']} warm-up call(s), lowbit and torch alternating, with "
           f"{run['clock']}. ratio = torch ÷ lowbit, of the medians (> 1: lowbit is faster). lowbit GB/s is the bytes of x, y, dy and dx "
           "(4 × the element size per element) over lowbit's time."
           + ("" if cuda else " On the CPU, glibc's malloc gives blocks above 32 MiB (2^23 "
              "float32 elements) fresh pages from mmap at every call, so from 2^24 up both "
              "sides' times include the page faults of y, dx and what each saves for its "
              "backward."), ""]
    pairs = []
    for r in cases:
        pair = (r["lowbit_op"], r["torch_op"], r["grid"],
                "[64, n/64], axis 0" if r["case"] == "per_channel" else "[n]")
        if pair not in pairs:
            pairs.append(pair)
    out += [table(["lowbit op", "torch op", "grid", "x"],
                  [(f"`{a}`", f"`{b}`", g, x) for a, b, g, x in pairs]), ""]
    round_trip = any(r["torch_form"] == "float32 round trip" for r in cases)
    if round_trip:
        out += ["†: torch's op does not take this dtype here; what is timed is "
                "op(x.float(), ...).to(dtype), forward and backward, as a user would write it.",
                ""]

    def ms(r, side):
        if r[side + "_ms"] is None:
            return "not run" if r[side + "_error"] else "–"
        dagger = " †" if side == "torch" and r["torch_form"] == "float32 round trip" else ""
        return f"{r[side + '_ms']:,.3f} ({r[side + '_min_ms']:,.3f}){dagger}"

    rows = [(r["lowbit_op"].replace("lowbit_torch.", ""), r["dtype"], size_label(r["elements"]),
             ms(r, "lowbit"), ms(r, "torch"),
             fmt(r["ratio"], ".2f") + ("×" if r["ratio"] is not None else ""),
             fmt(r["lowbit_gbps"], ",.1f"))
            for r in cases]
    out += [table(TORCH_OPS_HEADER, rows), ""]

    not_run = {}
    for r in cases:
        for side in ("lowbit", "torch"):
            if r[side + "_error"]:
                key = (r["lowbit_op"].replace("lowbit_torch.", ""), r["dtype"], side,
                       r[side + "_error"])
                not_run.setdefault(key, []).append(size_label(r["elements"]))
    if not_run:
        out += ["## Not run", ""]
        out += [f"- {op}, {dtype}, {side}'s side, at {', '.join(sizes)}: {error}"
                for (op, dtype, side, error), sizes in not_run.items()]
        out += [""]
    differ = [r for r in cases if r["same_forward"] is False]
    if differ:
        out += ["## Forward not bit for bit torch's", "",
                "These ops are meant to give torch's y exactly; on this input they did not:", ""]
        out += [f"- {r['lowbit_op']}, {r['dtype']}, {size_label(r['elements'])}" for r in differ]
        out += [""]
    return "\n".join(out)


# ---------------------------------------------------------------------------
# Charts

def charts(results, out_dir):
    """PNG charts through matplotlib; returns their entries, or a reason for none."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "matplotlib is not installed"
    made = []
    label = "GPU" if results["backend"] == "gpu" else "CPU"
    device = results["machine"].get("gpu") or results["machine"].get("description") or ""
    kernels = results["kernels"]
    n = largest_n(kernels)
    widths = sorted({r["bits"] for r in kernels if r["bits"]})
    ops = []
    for r in kernels:
        if r["n"] == n and r["bits"] and r["op"] not in ops and r.get("pct_of_copy") is not None:
            ops.append(r["op"])
    if ops:
        fig, ax = plt.subplots(figsize=(12, 5))
        width = 0.8 / len(widths)
        for i, b in enumerate(widths):
            values = [(kernel_at(kernels, op, b, n) or {}).get("pct_of_copy") or 0 for op in ops]
            ax.bar([x + i * width for x in range(len(ops))], values, width, label=f"{b} bits")
        ax.axhline(100, color="black", linewidth=0.8)
        ax.axhline(90, color="gray", linestyle="--", linewidth=0.8)
        ax.set_xticks([x + width * (len(widths) - 1) / 2 for x in range(len(ops))])
        ax.set_xticklabels(ops, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("% of copy bandwidth (same run)")
        ax.set_title(f"lowbit kernels at n = {size_label(n)} against the copy roofline "
                     f"({label}: {device})")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "kernels_roofline.png"), dpi=110)
        plt.close(fig)
        made.append({"file": "kernels_roofline.png",
                     "title": "Kernels: % of copy bandwidth by bits"})

    steps = [r for r in results["training"] if r["error"] is None]
    batches = sorted({r["batch"] for r in steps})
    if batches:
        configs = []
        for r in steps:
            if r["config"] not in configs:
                configs.append(r["config"])
        fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 4.5), squeeze=False)
        series = [("lowbit graph", "graph"), ("lowbit eager", "eager")]
        for ax, batch in zip(axes[0], batches):
            def rate(config, mode):
                for r in steps:
                    if r["batch"] == batch and r["config"] == config and r["mode"] == mode:
                        return r["images_per_s"]
                return 0

            def torch_rate(config):
                for r in steps:
                    if r["batch"] == batch and r["config"] == config:
                        return r.get("torch_images_per_s") or 0
                return 0
            bars = [(name, [rate(c, mode) for c in configs]) for name, mode in series]
            if any(torch_rate(c) for c in configs):
                bars.append(("PyTorch eager", [torch_rate(c) for c in configs]))
            width = 0.8 / len(bars)
            for i, (name, values) in enumerate(bars):
                ax.bar([x + i * width for x in range(len(configs))], values, width, label=name)
            ax.set_xticks([x + width * (len(bars) - 1) / 2 for x in range(len(configs))])
            ax.set_xticklabels(["fp32" if c == "fp32" else f"{c}-bit" for c in configs])
            ax.set_title(f"batch {batch}")
            ax.set_ylabel("images / s")
        axes[0][0].legend()
        fig.suptitle(f"LeNet-5 training throughput ({label}: {device})")
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "training.png"), dpi=110)
        plt.close(fig)
        made.append({"file": "training.png",
                     "title": "Training images/s by bits and batch, PyTorch beside it"})
    return made, None


# ---------------------------------------------------------------------------

def peers_section(args):
    if not args.peers:
        return {"status": "skipped", "reason": args.peers_skipped or "not run"}, {}
    try:
        peers = load_json(args.peers)
    except (OSError, ValueError) as e:
        return {"status": "failed", "reason": f"{args.peers}: {e}"}, {}
    section = {"status": "ran", "reason": None}
    for key in ("torch_version", "device", "device_name", "threads", "inference_engine"):
        section[key] = peers.get(key)
    return section, peers


def build(args):
    kernels_run = load_json(args.kernels)
    train_run = load_json(args.train)
    machine = load_json(args.machine) if args.machine else {}
    kernels = kernel_rows(kernels_run)
    reference = [r for r in kernels if r["device"] == "ref"]
    kernels = [r for r in kernels if r["device"] != "ref"]
    attach_reference(kernels, reference)
    steps, breakdown = training_rows(train_run)
    inference = inference_rows(load_json(args.inference)) if args.inference else []
    devices = {r["device"] for r in kernels + steps + inference}
    if len(devices) != 1:
        sys.exit(f"report: expected one device prefix in the benchmark names, got {devices}")
    backend = devices.pop()
    machine.setdefault("description", train_run.get("context", {}).get("backend"))
    machine.setdefault("date", train_run.get("context", {}).get("date"))
    peers, peer_run = peers_section(args)
    results = {
        "schema_version": SCHEMA_VERSION,
        "backend": backend,
        "machine": machine,
        "kernels": kernels,
        "reference_kernels": reference,
        "training": steps,
        "breakdown": breakdown,
        "peers": peers,
        "peer_kernels": peer_comparisons(kernels, peer_run),
        "inference": inference,
    }
    attach_peer_training(steps, peer_run)
    attach_peer_inference(inference, peer_run)
    results["targets"] = targets(kernels, steps, results["peer_kernels"], backend)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernels", help="lowbit_bench_kernels JSON (with --train)")
    parser.add_argument("--train", help="lowbit_bench_train JSON (with --kernels)")
    parser.add_argument("--inference", help="lowbit_bench_inference JSON")
    parser.add_argument("--peers", help="torch_peers.py JSON (omit when PyTorch did not run)")
    parser.add_argument("--peers-skipped", help="why the peers did not run")
    parser.add_argument("--machine", help="machine.json from scripts/bench.sh")
    parser.add_argument("--torch-ops", help="torch_ops_bench.py JSON: writes torch_ops.md")
    parser.add_argument("--out-dir", required=True,
                        help="where results.json, results.md and the charts go")
    parser.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    args = parser.parse_args()
    if bool(args.kernels) != bool(args.train) or not (args.kernels or args.torch_ops):
        parser.error("give --kernels and --train, or --torch-ops, or all three")

    os.makedirs(args.out_dir, exist_ok=True)
    if args.torch_ops:
        with open(os.path.join(args.out_dir, "torch_ops.md"), "w", encoding="utf-8") as f:
            f.write(torch_ops_markdown(load_json(args.torch_ops)))
            f.write("\n")
        print(f"report: wrote {args.out_dir}/torch_ops.md", file=sys.stderr)
    if not args.kernels:
        return
    results = build(args)
    if args.no_charts:
        results["charts"], reason = [], "--no-charts"
    else:
        results["charts"], reason = charts(results, args.out_dir)
    results["charts_skipped"] = reason
    with open(os.path.join(args.out_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
        f.write("\n")
    with open(os.path.join(args.out_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write(markdown(results))
        f.write("\n")
    if reason:
        print(f"report: charts skipped: {reason}", file=sys.stderr)
    print(f"report: wrote {args.out_dir}/results.json, results.md"
          + "".join(", " + c["file"] for c in results["charts"]), file=sys.stderr)


if __name__ == "__main__":
    main()
