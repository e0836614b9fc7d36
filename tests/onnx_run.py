"""Runs an ONNX model that save_onnx() wrote, for tests/test_onnx.cpp.

Usage: onnx_run.py MODEL PIXELS N C H W LOGITS
Reads N*C*H*W raw uint8 pixels, runs them through onnxruntime's CPU provider
and writes the float32 logits, raw and little-endian, to LOGITS.
"""
import sys

import numpy as np
import onnxruntime


def main(model, pixels, n, c, h, w, logits):
    shape = tuple(int(d) for d in (n, c, h, w))
    x = np.fromfile(pixels, dtype=np.uint8).reshape(shape)
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    (y,) = session.run(["logits"], {"pixels": x})
    np.ascontiguousarray(y, dtype="<f4").tofile(logits)


if __name__ == "__main__":
    if len(sys.argv) != 8:
        sys.exit(__doc__)
    main(*sys.argv[1:])
