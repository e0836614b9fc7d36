#!/usr/bin/env python3
"""Quantization-aware training of LeNet-5 on Fashion-MNIST in PyTorch, with
lowbit's quantizers in torch's own QAT flow (a QConfig and prepare_qat).

The model and its quantization are `lowbit train`'s: per-channel symmetric
narrow-range weights, an EMA-tracked (decay 0.999) activation quantizer after
every ReLU, the logits at 8 bits, TensorFlow's quant_delay (a tenth of the
run's steps, at most 500), SGD with lr 0.05 and momentum 0.9, inputs
normalised by Fashion-MNIST's mean and std.

    python3 examples/torch/lenet.py --bits 4 --epochs 1
"""

import argparse
import gzip
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization import QConfig, fuse_modules, prepare_qat

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "host", "torch"))
import lowbit_torch  # noqa: E402
import lowbit_torch.nn as lnn  # noqa: E402

MEAN, STD = np.float32(0.2860), np.float32(0.3530)


def read_idx(path):
    """An IDX file (gzipped) as a numpy array: magic 0x801 (labels) or 0x803
    (images), then big-endian int32 dimensions, then uint8 values."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(magic & 0xff)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * len(dims)).reshape(dims)


def load_split(directory, prefix, limit):
    images = read_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte.gz"))
    if limit:
        images, labels = images[:limit], labels[:limit]
    x = (images.astype(np.float32) / np.float32(255) - MEAN) / STD  # lowbit's normalize_pixel
    return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


class LeNet5(nn.Sequential):
    def __init__(self, classes=10):
        super().__init__()
        self.conv1, self.relu1 = nn.Conv2d(1, 6, 5, padding=2), nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2, self.relu2 = nn.Conv2d(6, 16, 5), nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1, self.relu3 = nn.Linear(16 * 5 * 5, 120), nn.ReLU()
        self.fc2, self.relu4 = nn.Linear(120, 84), nn.ReLU()
        self.fc3 = nn.Linear(84, classes)


def quantize(model, bits, quant_delay):
    """torch's eager QAT flow with lowbit's quantizers. Fusing each layer
    with its ReLU puts the activation quantizer after the ReLU (where
    tf.contrib.quantize puts it); fc3's output, the logits, gets 8 bits."""
    fuse_modules(model, [["conv1", "relu1"], ["conv2", "relu2"], ["fc1", "relu3"],
                         ["fc2", "relu4"]], inplace=True)
    weights = lnn.WeightFakeQuantize.with_args(bits=bits, quant_delay=quant_delay)
    model.qconfig = QConfig(
        activation=lnn.FakeQuantize.with_args(bits=bits, decay=0.999, quant_delay=quant_delay),
        weight=weights)
    model.fc3.qconfig = QConfig(
        activation=lnn.FakeQuantize.with_args(bits=8, decay=0.999, quant_delay=quant_delay),
        weight=weights)
    return prepare_qat(model.train(), inplace=True)


def evaluate(model, x, y, batch, device):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            logits = model(x[i:i + batch].to(device))
            correct += (logits.argmax(1).cpu() == y[i:i + batch]).sum().item()
    model.train()
    return correct / len(x)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--bits", type=int, default=4, help="weight and activation width, 2..16")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--limit-train", type=int, default=0, help="first N examples (0: all)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--library", help="liblowbit_torch.so (default: $LOWBIT_TORCH_LIBRARY, "
                   "else build/host/torch/ in this tree)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    lowbit_torch.load(args.library)
    torch.manual_seed(args.seed)
    x_train, y_train = load_split(args.data, "train", args.limit_train)
    x_test, y_test = load_split(args.data, "t10k", 0)
    steps_per_epoch = len(x_train) // args.batch  # lowbit train drops the last partial batch
    quant_delay = min(500, args.epochs * steps_per_epoch // 10)

    model = quantize(LeNet5(), args.bits, quant_delay).to(args.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    print(f"{args.bits}-bit QAT, quant_delay {quant_delay} steps, on {args.device}")
    for epoch in range(1, args.epochs + 1):
        start, loss_sum = time.time(), torch.zeros((), device=args.device)
        order = torch.randperm(len(x_train))
        for step in range(steps_per_epoch):
            batch = order[step * args.batch:(step + 1) * args.batch]
            loss = F.cross_entropy(model(x_train[batch].to(args.device)),
                                   y_train[batch].to(args.device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
        seconds = time.time() - start
        accuracy = evaluate(model, x_test, y_test, 1000, args.device)
        print(f"epoch {epoch}: loss {loss_sum.item() / steps_per_epoch:.4f}, "
              f"{steps_per_epoch * args.batch / seconds:.0f} img/s, "
              f"test accuracy {100 * accuracy:.2f}%")
    print(f"final test accuracy {100 * accuracy:.2f}%")


if __name__ == "__main__":
    main()
