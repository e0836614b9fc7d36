"""Golden vectors for lowbit's bf16 and fp16 conversions (element.hpp).

Writes tests/data/half_golden.json from PyTorch's CPU conversions:
  narrowing  float32 -> torch.bfloat16 and torch.float16 (round to nearest
             even, overflow to Inf, fp16 subnormals), for hand values (ties
             at every scale, the fp16 overflow boundary 65504/65519.99/65520,
             subnormal boundaries, ±0, ±Inf, float subnormals) and seeded
             random bit patterns biased to the interesting exponents.
  widening   torch.bfloat16 and torch.float16 -> float32 for every one of
             the 65536 bit patterns of each, NaN payloads included.
tests/test_half.cpp checks to_bf16, to_fp16 and to_float against them.

NaN: lowbit rounds every NaN to one quiet NaN per format, 0x7FC0 (bf16) and
0x7E00 (fp16), as c10's scalar conversions do for a positive NaN; ATen's
vectorised tensor conversion gives 0xFFFF for bf16 instead, and c10::Half
keeps a negative NaN's sign (0xFE00). So NaN inputs are left out of the
narrowing data here and checked by hand in the test (docs/numerics.md).

Every value is stored as its bit pattern. Regenerate (deterministic, fixed
seed) with a Python that has torch, e.g. Debian's python3-torch:

    /usr/bin/python3 tests/data/make_half_golden.py
"""

import json
import os
import platform

import numpy as np
import torch

SEED = 20261202


def float_bits(values):
    return np.asarray(values, dtype=np.float32).view(np.uint32)


def narrowing_inputs(rng):
    hand = [0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, 65504.0, 65519.99, 65520.0, -65520.0,
            65536.0, 3.0e38, -3.4028235e38, 2.0**-14, 2.0**-24, 2.0**-25, 2.0**-26,
            1.5 * 2.0**-25, 3.0 * 2.0**-25, 2.0**-149, -2.0**-126, 1.0e-40, 0.1, -0.2]
    bits = list(float_bits(hand))
    # Ties and their neighbours: halfway between consecutive bf16 (16 bits
    # cut) and fp16 values at many exponents, ±1 ulp of float.
    for exponent in range(100, 160):
        for mantissa in rng.integers(0, 1 << 23, size=6):
            base = (exponent << 23) | int(mantissa)
            for cut in (16, 13):
                tie = (base & ~((1 << cut) - 1)) | (1 << (cut - 1))
                for b in (tie - 1, tie, tie + 1):
                    bits += [b, b | 0x80000000]
    # fp16 subnormal ties: k·2^-25 for odd k.
    for k in range(1, 2048, 2):
        bits += list(float_bits([k * 2.0**-25, -k * 2.0**-25]))
    # Random finite patterns.
    bits += list(rng.integers(0, 0xFF800000, size=4000, dtype=np.uint64))
    out = np.asarray(bits, dtype=np.uint64).astype(np.uint32)
    values = out.view(np.float32)
    return out[~np.isnan(values)]


def narrow(bits, dtype):
    x = torch.from_numpy(bits.view(np.float32).copy())
    return x.to(dtype).view(torch.int16).numpy().view(np.uint16)


def widen(dtype):
    every = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    h = torch.from_numpy(every.view(np.int16).copy()).view(dtype)
    return h.to(torch.float32).numpy().view(np.uint32)


def main():
    rng = np.random.default_rng(SEED)
    inputs = narrowing_inputs(rng)
    data = {
        "generator": "tests/data/make_half_golden.py, torch %s (CPU), numpy %s, python %s (%s), "
                     "seed %d" % (torch.__version__, np.__version__, platform.python_version(),
                                  platform.machine(), SEED),
        "narrowing": {
            "float_bits": [int(b) for b in inputs],
            "bf16_bits": [int(b) for b in narrow(inputs, torch.bfloat16)],
            "fp16_bits": [int(b) for b in narrow(inputs, torch.float16)],
        },
        "widening": {
            "bf16_to_float_bits": [int(b) for b in widen(torch.bfloat16)],
            "fp16_to_float_bits": [int(b) for b in widen(torch.float16)],
        },
    }
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "half_golden.json")
    with open(path, "w") as f:
        json.dump(data, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
