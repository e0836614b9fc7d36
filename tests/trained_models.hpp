// Small LeNet-5 checkpoints trained once per test process on the real
// Fashion-MNIST (CPU, 48 steps), for the deployment tests: 8 and 4 bits with
// EMA ranges, 2 bits with learned steps, as `lowbit train` picks by default.
#pragma once

#include <filesystem>
#include <map>
#include <string>

#include "lowbit/backend.hpp"
#include "lowbit/trainer.hpp"
#include "test_util.hpp"

namespace lowbit::test {

/// The checkpoint of the run at `bits`, removed when the process ends.
inline const std::string& trained_checkpoint(int bits) {
  struct Files {
    std::map<int, std::string> paths;
    ~Files() {
      for (const auto& entry : paths) std::filesystem::remove(entry.second);
    }
  };
  static Files files;
  std::string& path = files.paths[bits];
  if (path.empty()) {
    TrainOptions o;
    o.data_dir = fashion_mnist_dir();
    o.quantize.weight_bits = o.quantize.activation_bits = bits;
    o.quantize.range = recommended_range(bits, bits);
    o.limit_train = 3072;
    o.limit_test = 256;
    o.batch = 64;
    o.epochs = 1;
    o.save_path = temp_path("trained_" + std::to_string(bits) + "bit.safetensors");
    const auto cpu = make_cpu_backend();
    train(o, *cpu, nullptr);
    path = o.save_path;
  }
  return path;
}

}  // namespace lowbit::test
