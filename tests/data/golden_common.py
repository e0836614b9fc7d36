"""Helpers shared by the golden-vector generators in this directory."""

import json

import numpy as np

f32 = np.float32


def bits_of(a):
    """The float32 bit patterns of `a`, flattened, as ints (JSON keeps them exact)."""
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).ravel().tolist()


def grid(bits, signed):
    """[qmin, qmax] of a signed or unsigned grid of `bits` bits."""
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def write_golden(path, generator, cases, **sections):
    """Writes {"generator", "cases", *sections} as compact JSON and says what it wrote."""
    doc = {"generator": generator, "cases": cases, **sections}
    with open(path, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    total = sum(len(c.get("x_bits", [])) for c in cases)
    print(f"wrote {path}: {len(cases)} cases, {total} elements")
