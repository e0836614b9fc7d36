"""Helpers shared by the golden-vector generators in this directory."""

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
