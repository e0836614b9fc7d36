#!/usr/bin/env python3
"""Checks the output of scripts/bench.sh:
- results.json matches bench/results.schema.json, holds every benchmark of
  the raw Google Benchmark files, and has step breakdowns that fit the step
  (convolutions and GEMMs in every step, quantizers in QAT steps only);
- each inference row carries peers.json's PyTorch figure for its batch (int8
  beside integer widths, fp32 beside fp32) and their ratio;
- every table of results.md has as many cells in each row as in its header,
  and renders to an HTML table; the inference table has a row per batch and a
  column per config;
- the charts it names are PNG files;
- when the torch-ops suite ran (torch_ops.json): it matches
  bench/torch_ops.schema.json, each ratio is torch_ms / lowbit_ms and each
  GB/s bytes / lowbit_ms, a side without a time says why, and torch_ops.md
  has a row per case and no ragged table.
With --torch-ops-only, only the last (scripts/bench.sh --torch-ops-only).
Exit 0 when all hold; otherwise each problem is printed and exit 1.

Usage: check_results.py [--torch-ops-only] OUT_DIR  (the --out directory of scripts/bench.sh)
"""

import html.parser
import json
import os
import sys

import jsonschema
import markdown

HERE = os.path.dirname(os.path.abspath(__file__))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class TableShapes(html.parser.HTMLParser):
    """Cells per row of every <table> in an HTML document."""

    def __init__(self):
        super().__init__()
        self.tables = []

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append(0)
        elif tag in ("td", "th"):
            self.tables[-1][-1] += 1


def schema_problems(name, document, schema_file):
    with open(os.path.join(HERE, schema_file), encoding="utf-8") as f:
        schema = json.load(f)
    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for error in sorted(validator.iter_errors(document), key=str):
        path = "/".join(str(p) for p in error.absolute_path)
        problems.append(f"{name}: {path or '(top)'}: {error.message}")
    return problems


def table_lines(text):
    """(cells per line, the section it is in) for each table written in text."""
    written, headings = [], []
    heading, in_table = None, False
    for line in text.splitlines():
        if line.startswith("## "):
            heading = line[3:]
        if line.startswith("|") and not in_table:
            written.append([])
            headings.append(heading)
        in_table = line.startswith("|")
        if in_table:
            written[-1].append(line.strip().strip("|").count("|") + 1)
    return written, headings


def ragged(name, written):
    problems = []
    for i, counts in enumerate(written):
        for r, cells in enumerate(counts[1:], start=2):
            if cells != counts[0]:
                problems.append(f"{name}: table {i + 1}, line {r}: {cells} cells under a "
                                f"header of {counts[0]}")
    return problems


def check_torch_ops(out_dir):
    """torch_ops.json against its schema and its own figures; torch_ops.md's tables."""
    with open(os.path.join(out_dir, "torch_ops.json"), encoding="utf-8") as f:
        run = json.load(f)
    problems = schema_problems("torch_ops.json", run, "torch_ops.schema.json")
    if problems:
        return problems
    if not run["cases"]:
        problems.append("torch_ops.json: no cases")
    for r in run["cases"]:
        name = f"torch_ops.json: {r['case']} {r['dtype']} {r['elements']}"
        for side in ("lowbit", "torch"):
            if (r[side + "_ms"] is None) == (r[side + "_error"] is None):
                problems.append(f"{name}: {side} has {'neither' if r[side + '_ms'] is None else 'both'}"
                                " a time and an error")
        ours, theirs = r["lowbit_ms"], r["torch_ms"]
        ratio = theirs / ours if ours and theirs else None
        if (ratio is None) != (r["ratio"] is None) or (ratio and abs(r["ratio"] / ratio - 1) > 1e-9):
            problems.append(f"{name}: ratio {r['ratio']}, expected {ratio}")
        gbps = r["bytes"] / ours / 1e6 if ours else None
        if (gbps is None) != (r["lowbit_gbps"] is None) or (
                gbps and abs(r["lowbit_gbps"] / gbps - 1) > 1e-9):
            problems.append(f"{name}: lowbit GB/s {r['lowbit_gbps']}, expected {gbps}")
    with open(os.path.join(out_dir, "torch_ops.md"), encoding="utf-8") as f:
        text = f.read()
    written, _ = table_lines(text)
    problems += ragged("torch_ops.md", written)
    parser = TableShapes()
    parser.feed(markdown.markdown(text, extensions=["tables"]))
    # The legend, then the op table: a row per case under its header.
    if len(parser.tables) != len(written) or len(written) < 2 or \
            len(parser.tables[-1]) != len(run["cases"]) + 1:
        problems.append(f"torch_ops.md: {len(written)} tables written, {len(parser.tables)} "
                        f"rendered; the op table does not hold the {len(run['cases'])} cases")
    return problems


def check(out_dir, torch_ops_only=False):
    problems = []
    if os.path.exists(os.path.join(out_dir, "torch_ops.json")):
        problems += check_torch_ops(out_dir)
    elif torch_ops_only:
        problems.append("torch_ops.json: missing")
    if torch_ops_only:
        return problems
    with open(os.path.join(out_dir, "results.json"), encoding="utf-8") as f:
        results = json.load(f)
    problems += schema_problems("results.json", results, "results.schema.json")

    # Every raw benchmark appears once in results.json.
    for raw, key in (("kernels.json", ("kernels", "reference_kernels")),
                     ("train.json", ("training", "breakdown")),
                     ("inference.json", ("inference",))):
        with open(os.path.join(out_dir, raw), encoding="utf-8") as f:
            names = {b["name"] for b in json.load(f)["benchmarks"]}
        reported = [r["name"] for k in key for r in results.get(k, [])]
        if sorted(reported) != sorted(names):
            problems.append(f"results.json: {'/'.join(key)} holds {len(reported)} rows for "
                            f"the {len(names)} benchmarks of {raw}")
    if not results.get("kernels") or not results.get("training") or not results.get("inference"):
        problems.append("results.json: no kernel, training or inference figures")
    problems += check_inference_peers(out_dir, results)
    # Every step convolves and multiplies; only QAT steps quantize.
    for r in results.get("breakdown", []):
        stages = r.get("stages_ms") or {}
        if r.get("error") or not stages:
            continue
        quantized = stages.get("quantizers", 0) > 0
        if stages.get("conv", 0) <= 0 or stages.get("gemm", 0) <= 0 or quantized != bool(r["bits"]):
            problems.append(f"results.json: {r['name']}: stages do not fit the step: {stages}")

    with open(os.path.join(out_dir, "results.md"), encoding="utf-8") as f:
        text = f.read()
    # Cells per row as written: markdown would pad or cut a ragged row silently.
    written, headings = table_lines(text)
    problems += ragged("results.md", written)
    inference = results.get("inference", [])
    if inference:
        counts = next((c for c, h in zip(written, headings) if h == "LeNet-5 inference"), [])
        batches = {r["batch"] for r in inference}
        configs = {r["config"] for r in inference}
        # batch, a column per config, PyTorch int8 and fp32; two header lines.
        if len(counts) != len(batches) + 2 or counts[0] != len(configs) + 3:
            problems.append(f"results.md: the inference table is not {len(batches)} batches by "
                            f"{len(configs)} configs and PyTorch's two")
    markdown_tables = len(written)
    parser = TableShapes()
    parser.feed(markdown.markdown(text, extensions=["tables"]))
    if len(parser.tables) != markdown_tables or not parser.tables:
        problems.append(f"results.md: {markdown_tables} tables written, "
                        f"{len(parser.tables)} rendered")
    target_table = next((rows for rows in parser.tables if rows and rows[0] == 5), None)
    if target_table is None or len(target_table) - 1 != len(results.get("targets", [])):
        problems.append("results.md: the targets table does not list every target")
    if results.get("backend") == "cpu" and "**CPU figures**" not in text:
        problems.append("results.md: a CPU run is not labelled as CPU figures")

    for chart in results.get("charts", []):
        path = os.path.join(out_dir, chart["file"])
        try:
            with open(path, "rb") as f:
                if f.read(len(PNG_MAGIC)) != PNG_MAGIC:
                    problems.append(f"{chart['file']}: not a PNG file")
        except OSError as e:
            problems.append(f"{chart['file']}: {e}")
        if f"]({chart['file']})" not in text:
            problems.append(f"results.md: does not show {chart['file']}")
    return problems


def check_inference_peers(out_dir, results):
    """Each inference row's PyTorch figure is peers.json's (none when PyTorch did
    not run), and its ratio ours ÷ theirs."""
    problems = []
    peers = {}
    if results.get("peers", {}).get("status") == "ran":
        with open(os.path.join(out_dir, "peers.json"), encoding="utf-8") as f:
            peers = {(p["config"], p["batch"]): p.get("images_per_s")
                     for p in json.load(f).get("inference", [])}
    for r in results.get("inference", []):
        expected = peers.get((r.get("torch_config"), r.get("batch")))
        if r.get("torch_images_per_s") != expected:
            problems.append(f"results.json: {r['name']}: PyTorch {r.get('torch_config')} "
                            f"figure {r.get('torch_images_per_s')}, peers.json has {expected}")
        ours, theirs = r.get("images_per_s"), r.get("torch_images_per_s")
        ratio = ours / theirs if ours and theirs else None
        got = r.get("speedup_vs_torch")
        if (ratio is None) != (got is None) or (ratio and abs(got / ratio - 1) > 1e-9):
            problems.append(f"results.json: {r['name']}: speed-up {got}, expected {ratio}")
    return problems


def main():
    args = sys.argv[1:]
    torch_ops_only = args[:1] == ["--torch-ops-only"]
    args = args[1:] if torch_ops_only else args
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    problems = check(args[0], torch_ops_only)
    for p in problems:
        print(f"check_results: {p}", file=sys.stderr)
    if not problems:
        print(f"check_results: {args[0]}: "
              + ("torch_ops.json matches its schema and torch_ops.md renders" if torch_ops_only
                 else "results.json matches the schema, results.md renders, charts are PNGs"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
