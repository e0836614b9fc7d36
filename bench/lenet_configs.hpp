// The LeNet-5 configurations the training and inference suites share: fp32
// and QAT at one width for weights and activations, named alike in both.
#pragma once

#include <string>

#include "lowbit/quantize.hpp"
#include "lowbit/trainer.hpp"

namespace lowbit::bench {

/// A config's name in benchmark names; 0 bits: fp32.
inline std::string config_name(int bits) {
  return bits == 0 ? "fp32" : "bits:" + std::to_string(bits);
}

/// QAT at `bits` (0: float), quantizing from the first step, with the
/// trainer's range for the width.
inline QuantizeOptions quantize_options(int bits) {
  QuantizeOptions q;
  q.weight_bits = bits;
  q.activation_bits = bits;
  q.quant_delay = 0;
  q.range = recommended_range(bits, bits);
  return q;
}

}  // namespace lowbit::bench
