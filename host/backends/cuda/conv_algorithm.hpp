// Which cuDNN convolution algorithm the CUDA backend runs: cuDNN ranks its
// algorithms for each shape (cudnnGetConvolution*Algorithm_v7), and lowbit
// takes the first one it may use.
#pragma once

#include <cudnn.h>

#include <string>

#include "lowbit/error.hpp"

namespace lowbit::gpu {

/// Why lowbit cannot use a ranked algorithm; empty when it can. It must run
/// (status), give the same bits every time (no atomics), and not ask for
/// tensor-core math: the convolution descriptor pins FMA math, so TF32 never
/// runs, and an algorithm ranked for tensor cores would not be what cuDNN
/// measured.
template <class Perf>
std::string unusable_because(const Perf& perf) {
  if (perf.status != CUDNN_STATUS_SUCCESS) return cudnnGetErrorString(perf.status);
  if (perf.determinism != CUDNN_DETERMINISTIC) return "not deterministic";
  if (perf.mathType != CUDNN_FMA_MATH && perf.mathType != CUDNN_DEFAULT_MATH)
    return "tensor-core math";
  return {};
}

/// The first usable algorithm of cuDNN's ranking `ranked[0..count)`; throws
/// lowbit::Error naming `what` (the shape and direction) and every algorithm
/// tried, with why it was refused, when none is usable.
template <class Perf>
auto first_usable_algorithm(const Perf* ranked, int count, const std::string& what)
    -> decltype(ranked->algo) {
  std::string tried;
  for (int i = 0; i < count; ++i) {
    const std::string reason = unusable_because(ranked[i]);
    if (reason.empty()) return ranked[i].algo;
    tried += (tried.empty() ? "" : ", ") + std::string("algorithm ") +
             std::to_string(static_cast<int>(ranked[i].algo)) + " (" + reason + ")";
  }
  throw Error(what + ": cuDNN offers no deterministic FMA-math algorithm; tried " +
                  (tried.empty() ? std::string("none") : tried),
              __FILE__, __LINE__);
}

}  // namespace lowbit::gpu
