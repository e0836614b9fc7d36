#!/usr/bin/env python3
"""Unit tests of bench/report.py's parsing and DESIGN.md §4 verdicts, on
hand-made rows: a GPU run at n = 2^26 is judged, anything else is not (a
CPU run judges the CPU targets at batch 256), and PyTorch's ratio is
PyTorch's time over lowbit's; inference rows sit beside
PyTorch's int8 (integer widths) or fp32 figure at their batch; the
torch-ops table (torch_ops.md) from a canned torch_ops.json."""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402

N = report.TARGET_N


def kernel(op, bits, time_ms, pct, bytes_per_elem=8.125, n=N):
    return {"name": f"gpu/{op}", "device": "gpu", "op": op, "bits": bits, "n": n,
            "error": None, "time_ms": time_ms, "bytes_per_elem": bytes_per_elem,
            "gbps": 1.0, "pct_of_copy": pct}


def step(bits, batch, rate, overhead, torch_rate=None, mode="graph"):
    return {"name": "x", "device": "gpu", "config": str(bits) if bits else "fp32",
            "bits": bits or None, "batch": batch, "range": None, "error": None, "mode": mode,
            "images_per_s": rate, "step_ms": 1.0, "loss": 2.0,
            "qat_overhead_pct": overhead, "torch_images_per_s": torch_rate}


def cpu_steps(rate_2bit):
    """A CPU run at batch 256 (PyTorch eager at 1,600 img/s for QAT), and one
    slow width at batch 64 that the batch-256 verdicts must not see."""
    steps = [step(0, 256, 3000.0, None), step(8, 256, 2600.0, 100 * (3000 / 2600 - 1), 1600.0),
             step(4, 256, 2500.0, 20.0, 1600.0),
             step(2, 256, rate_2bit, 100 * (3000 / rate_2bit - 1), 1600.0),
             step(0, 64, 3000.0, None), step(4, 64, 1000.0, 200.0, 1600.0)]
    for r in steps:
        if r["torch_images_per_s"]:
            r["speedup_vs_torch"] = r["images_per_s"] / r["torch_images_per_s"]
    return steps


def gpu_kernels(n=N, fq_pct=95.0, ema_pct=80.0):
    return [
        kernel("fake_quant_range/per_tensor", 4, 0.15, fq_pct, n=n),
        kernel("fake_quant_affine/per_tensor", 4, 0.08, fq_pct + 1, n=n),
        kernel("fake_quant_range/per_channel", 4, 0.15, fq_pct, n=n),
        kernel("fake_quant_affine/per_channel", 4, 0.09, fq_pct, n=n),
        kernel("ste_backward/pass", None, 0.10, 96.0, n=n),
        kernel("ema_fake_quant/exact", 4, 0.25, ema_pct, 12.125, n=n),
        kernel("ema_fake_quant/lagged", 4, 0.17, 90.0, n=n),
        kernel("lsq_forward", 4, 0.2, 90.0, 8.0, n=n),
        kernel("lsq_backward", 4, 0.3, 90.0, 12.0, n=n),
    ]


def verdicts(rows):
    return {r["target"]: r["met"] for r in rows}


class ParseName(unittest.TestCase):
    def test_kernel_name(self):
        self.assertEqual(
            report.parse_name("gpu/fake_quant_range/per_tensor/bits:4/n:65536/manual_time"),
            ("gpu", "fake_quant_range/per_tensor", {"bits": 4, "n": 65536}, ["manual_time"]))

    def test_bf16_kernel_name(self):
        self.assertEqual(
            report.parse_name("cpu/ema_fake_quant/exact/bf16/bits:4/n:65536/real_time"),
            ("cpu", "ema_fake_quant/exact/bf16", {"bits": 4, "n": 65536}, ["real_time"]))

    def test_training_name(self):
        self.assertEqual(report.parse_name("cpu/train_step/fp32/batch:64/eager/manual_time"),
                         ("cpu", "train_step/fp32", {"batch": 64}, ["eager", "manual_time"]))


class Targets(unittest.TestCase):
    def test_gpu_run_at_target_size_is_judged(self):
        steps = [step(0, 256, 700e3, None), step(4, 256, 600e3, 16.7), step(2, 256, 650e3, 7.7)]
        got = verdicts(report.targets(gpu_kernels(), steps, [], "gpu"))
        self.assertIs(got["per-tensor fake quant forward"], True)
        self.assertIs(got["EMA observer + fake quant, exact"], False)  # 80% < 85%
        self.assertIs(got["EMA observer + fake quant, lagged"], True)
        self.assertIs(got["forward + STE backward (4 bits)"], True)  # 0.18 ms, >= 90%
        self.assertIs(got["per-channel fake quant forward"], False)  # 0.09 / 0.08 > 1.10
        self.assertIs(got["LSQ forward + backward (4 bits)"], False)  # 0.5 ms > 0.45
        self.assertIs(got["QAT 2/4/8-bit training at batch 256 (CUDA graph)"], True)
        self.assertIs(got["QAT overhead over our fp32 step (CUDA graph)"], False)  # 16.7%
        self.assertNotIn("CPU QAT training", got)

    def test_bf16_rows_leave_the_fp32_verdicts_alone(self):
        steps = [step(0, 256, 700e3, None), step(4, 256, 600e3, 16.7), step(2, 256, 650e3, 7.7)]
        slow_bf16 = [kernel(r["op"] + "/bf16", r["bits"], r["time_ms"] * 10, 10.0, 4.125)
                     for r in gpu_kernels()]
        self.assertEqual(verdicts(report.targets(gpu_kernels() + slow_bf16, steps, [], "gpu")),
                         verdicts(report.targets(gpu_kernels(), steps, [], "gpu")))

    def test_below_target_size_or_on_cpu_nothing_gpu_is_judged(self):
        small = report.targets(gpu_kernels(n=1 << 20), [], [], "gpu")
        self.assertTrue(small and all(r["met"] is None for r in small))
        steps = cpu_steps(rate_2bit=2500.0)
        cpu = verdicts(report.targets(gpu_kernels(), steps, [], "cpu"))
        self.assertTrue(all(met is None for target, met in cpu.items()
                            if not target.startswith("CPU")))

    def test_cpu_targets_are_judged_at_batch_256(self):
        cpu = verdicts(report.targets([], cpu_steps(rate_2bit=2500.0), [], "cpu"))
        self.assertIs(cpu["CPU QAT training against PyTorch eager, same cores"], True)
        self.assertIs(cpu["CPU QAT overhead over our fp32 step"], True)  # 3000/2500: 20%
        # 2 bits at 2300 img/s: 1.44× PyTorch's 1600, 30.4% over our fp32.
        cpu = verdicts(report.targets([], cpu_steps(rate_2bit=2300.0), [], "cpu"))
        self.assertIs(cpu["CPU QAT training against PyTorch eager, same cores"], False)
        self.assertIs(cpu["CPU QAT overhead over our fp32 step"], False)

    def test_reference_speedup_is_its_time_over_ours(self):
        ours = [kernel("lsq_forward", 4, 0.5, 40.0), kernel("copy", None, 0.1, None)]
        ref = [dict(kernel("lsq_forward", 4, 6.0, 3.0), device="ref")]
        report.attach_reference(ours, ref)
        self.assertAlmostEqual(ours[0]["speedup_vs_ref"], 12.0)
        self.assertNotIn("speedup_vs_ref", ours[1])

    def test_pytorch_ratio_is_its_time_over_ours(self):
        kernels = gpu_kernels()
        peers = {"kernels": [{"op": "fake_quantize_per_tensor_affine", "pass": "forward",
                              "bits": 4, "n": N, "time_ms": 0.16, "error": None}]}
        comparisons = report.peer_comparisons(kernels, peers)
        self.assertAlmostEqual(comparisons[0]["speedup"], 0.16 / 0.08)
        rows = {r["target"]: r for r in report.targets(kernels, [], comparisons, "gpu")}
        self.assertEqual(rows["per-tensor fake quant forward"]["torch"],
                         "0.160 ms at 4 bits (lowbit 2.00×)")

    def test_pytorch_error_is_shown(self):
        peers = {"kernels": [{"op": "fake_quantize_per_tensor_affine", "pass": "forward",
                              "bits": 4, "n": N, "time_ms": None, "error": "RuntimeError: no"}]}
        comparisons = report.peer_comparisons(gpu_kernels(), peers)
        rows = {r["target"]: r for r in report.targets(gpu_kernels(), [], comparisons, "gpu")}
        self.assertEqual(rows["per-tensor fake quant forward"]["torch"], "error: RuntimeError: no")


def inference_bench(config, batch, rate=None, label="", error=None):
    b = {"name": f"cpu/inference/{config}/batch:{batch}/real_time", "run_type": "iteration",
         "real_time": 1e6 * batch / rate if rate else 0.0, "time_unit": "us", "label": label}
    if error:
        b.update({"error_occurred": True, "error_message": error})
    else:
        b["items_per_second"] = rate
    return b


class Inference(unittest.TestCase):
    def setUp(self):
        gbench = {"benchmarks": [inference_bench("fp32", 64, 8000.0, "fp32"),
                                 inference_bench("bits:8", 64, 4000.0, "ema"),
                                 inference_bench("bits:2", 64, 3000.0, "lsq"),
                                 inference_bench("bits:4", 1, error="boom")]}
        self.rows = report.inference_rows(gbench)
        peers = {"inference": [{"config": "int8", "batch": 64, "images_per_s": 2000.0},
                               {"config": "fp32", "batch": 64, "images_per_s": 16000.0},
                               {"config": "int8", "batch": 1, "images_per_s": None,
                                "error": "RuntimeError: no"}]}
        report.attach_peer_inference(self.rows, peers)
        self.by_config = {(r["config"], r["batch"]): r for r in self.rows}

    def test_rows(self):
        fp32, eight = self.by_config[("fp32", 64)], self.by_config[("8", 64)]
        self.assertEqual((fp32["bits"], fp32["range"], fp32["images_per_s"]), (None, None, 8000.0))
        self.assertEqual((eight["bits"], eight["range"]), (8, "ema"))
        self.assertAlmostEqual(eight["batch_ms"], 16.0)
        self.assertEqual(self.by_config[("4", 1)]["error"], "boom")

    def test_every_integer_width_against_int8_and_fp32_against_fp32(self):
        self.assertAlmostEqual(self.by_config[("8", 64)]["speedup_vs_torch"], 2.0)
        self.assertAlmostEqual(self.by_config[("2", 64)]["speedup_vs_torch"], 1.5)
        self.assertEqual(self.by_config[("2", 64)]["torch_config"], "int8")
        self.assertAlmostEqual(self.by_config[("fp32", 64)]["speedup_vs_torch"], 0.5)
        failed = self.by_config[("4", 1)]
        self.assertEqual((failed["speedup_vs_torch"], failed["torch_error"]),
                         (None, "RuntimeError: no"))

    def test_table_is_batches_by_configs(self):
        results = {"inference": self.rows,
                   "peers": {"status": "ran", "threads": 2, "inference_engine": "qnnpack"}}
        text = "\n".join(report.inference_section(results))
        lines = [line for line in text.splitlines() if line.startswith("|")]
        self.assertEqual(lines[0], "| batch | 2-bit | 4-bit | 8-bit | fp32 | PyTorch int8 | "
                                   "PyTorch fp32 |")
        self.assertEqual(lines[2], "| 1 | – | error | – | – | error | – |")
        self.assertEqual(lines[3], "| 64 | 3,000 (1.50×) | – | 4,000 (2.00×) | 8,000 (0.50×) | "
                                   "2,000 | 16,000 |")


def torch_ops_case(case, dtype, n, lowbit_ms, torch_ms, lowbit_error=None, form="native"):
    size = 4 if dtype == "float32" else 2
    return {"case": case, "lowbit_op": "lowbit_torch.fake_quant_per_tensor_affine"
            if case == "per_tensor" else "lowbit_torch.ema_fake_quant",
            "torch_op": "torch.fake_quantize_per_tensor_affine" if case == "per_tensor"
            else "torch.fused_moving_avg_obs_fake_quant",
            "dtype": dtype, "elements": n, "shape": [n], "grid": "0..15", "torch_form": form,
            "repeats": 3, "lowbit_ms": lowbit_ms,
            "lowbit_min_ms": lowbit_ms - 0.1 if lowbit_ms else None,
            "torch_ms": torch_ms, "torch_min_ms": torch_ms - 1.0 if torch_ms else None,
            "ratio": torch_ms / lowbit_ms if lowbit_ms and torch_ms else None,
            "bytes": 4 * size * n, "lowbit_gbps": 4 * size * n / lowbit_ms / 1e6 if lowbit_ms
            else None, "same_forward": True if lowbit_ms else None,
            "lowbit_error": lowbit_error, "torch_error": None}


class TorchOps(unittest.TestCase):
    """torch_ops.md from a canned torch_ops.json: the ratio is torch ÷ lowbit,
    a side that did not run says so in its cell and, with its error, below."""

    def setUp(self):
        no_ema = "lowbit_torch has no ema_fake_quant in this tree"
        self.run = {"device": "cpu", "device_name": "AMD EPYC (2 cores)", "threads": 2,
                    "torch_version": "1.13.0a0", "date": "2026-12-01 00:00 UTC",
                    "load_average": [0.5, 1.25], "clock": "time.perf_counter", "warmup": 1,
                    "cases": [torch_ops_case("per_tensor", "float32", 1 << 20, 0.5, 4.0),
                              torch_ops_case("per_tensor", "bfloat16", 1 << 26, None, 900.0,
                                             "RuntimeError: x must be float32, got BFloat16",
                                             "float32 round trip"),
                              torch_ops_case("ema", "float32", 1 << 20, None, 5.0, no_ema),
                              torch_ops_case("ema", "float32", 1 << 22, None, 20.0, no_ema)]}
        self.text = report.torch_ops_markdown(self.run)

    def test_op_table(self):
        lines = [line for line in self.text.splitlines() if line.startswith("| ")]
        start = lines.index("| op | dtype | elements | lowbit ms | torch ms | ratio | "
                            "lowbit GB/s |")
        self.assertEqual(lines[start + 1:], [
            "| fake_quant_per_tensor_affine | float32 | 2^20 | 0.500 (0.400) | 4.000 (3.000) | "
            "8.00× | 33.6 |",
            "| fake_quant_per_tensor_affine | bfloat16 | 2^26 | not run | 900.000 (899.000) † | "
            "– | – |",
            "| ema_fake_quant | float32 | 2^20 | not run | 5.000 (4.000) | – | – |",
            "| ema_fake_quant | float32 | 2^22 | not run | 20.000 (19.000) | – | – |"])

    def test_header_and_not_run(self):
        self.assertIn("**CPU figures**: AMD EPYC (2 cores), 2 threads, torch 1.13.0a0, "
                      "2026-12-01 00:00 UTC, load average 0.50 before and 1.25 after.", self.text)
        self.assertIn("†: torch's op does not take this dtype here", self.text)
        self.assertIn("- ema_fake_quant, float32, lowbit's side, at 2^20, 2^22: lowbit_torch has "
                      "no ema_fake_quant in this tree", self.text)
        self.assertIn("- fake_quant_per_tensor_affine, bfloat16, lowbit's side, at 2^26: "
                      "RuntimeError: x must be float32, got BFloat16", self.text)
        self.assertNotIn("Forward not bit for bit", self.text)
        self.run["cases"][0]["same_forward"] = False
        self.assertIn("- lowbit_torch.fake_quant_per_tensor_affine, float32, 2^20",
                      report.torch_ops_markdown(self.run))


if __name__ == "__main__":
    unittest.main()
