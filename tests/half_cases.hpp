// Inputs and comparisons for the bf16 and fp16 tests (test_half.cpp and
// test_gpu_half.cpp): tensors of 2-byte elements with every special class,
// and their widening to float, so a test can compare an op on bf16/fp16
// with the float op on the widened tensor.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "lowbit/element.hpp"
#include "lowbit/types.hpp"

namespace lowbit::test {

/// Ranges for channel c: a grid of step 1/4 at 4 bits (ties at odd eighths),
/// one straddling 0, one above it, one below it, and a zero-width one.
inline void ranges_for(std::int64_t channels, std::vector<float>& lo, std::vector<float>& hi) {
  const float los[] = {-2.0f, -0.7f, 0.3f, -3.0f, 0.0f};
  const float his[] = {1.75f, 1.3f, 2.7f, -0.5f, 0.0f};
  lo.resize(channels);
  hi.resize(channels);
  for (std::int64_t c = 0; c < channels; ++c) {
    lo[c] = los[c % 5];
    hi[c] = his[c % 5];
  }
}

template <class T>
std::vector<float> widen(const std::vector<T>& h) {
  std::vector<float> out;
  out.reserve(h.size());
  for (const T v : h) out.push_back(to_float(v));
  return out;
}

template <class T>
std::vector<T> narrow(const std::vector<float>& f) {
  std::vector<T> out;
  out.reserve(f.size());
  for (const float v : f) out.push_back(from_float<T>(v));
  return out;
}

template <class T>
std::vector<std::uint16_t> element_bits(const std::vector<T>& h) {
  std::vector<std::uint16_t> out;
  out.reserve(h.size());
  for (const T v : h) out.push_back(v.bits);
  return out;
}

/// The element bits of got equal those of expected; lists the first few
/// mismatches with their inputs.
template <class T>
::testing::AssertionResult same_elements(const std::string& what, const std::vector<T>& x,
                                         const std::vector<T>& expected,
                                         const std::vector<T>& got) {
  if (expected.size() != got.size())
    return ::testing::AssertionFailure() << what << ": sizes differ";
  std::ostringstream out;
  std::size_t bad = 0;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    if (expected[i].bits == got[i].bits) continue;
    if (bad++ < 5) {
      out << "\n  [" << i << "]" << std::hex;
      if (i < x.size()) out << " x=0x" << x[i].bits;
      out << " expected 0x" << expected[i].bits << " got 0x" << got[i].bits << std::dec;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << what << ": " << bad << " of " << expected.size() << " differ" << out.str();
}

/// Special element patterns: NaNs (both signs, payloads, signalling), ±Inf,
/// ±0, the smallest and largest subnormals, the largest finite, values far
/// beyond any grid, and the odd multiples of 1/8 up to ±4 (the ties of a
/// grid with step 1/4).
template <class T>
std::vector<T> special_elements() {
  std::vector<std::uint16_t> bits;
  if constexpr (std::is_same_v<T, bf16>) {
    bits = {0x7fc0, 0xffc0, 0x7fc5, 0xff85, 0x7f81, 0x7f80, 0xff80, 0x0000, 0x8000,
            0x0001, 0x8001, 0x007f, 0x807f, 0x0080, 0x7f7f, 0xff7f, 0x4780, 0xc780};
  } else {
    bits = {0x7e00, 0xfe00, 0x7e05, 0xfd05, 0x7c01, 0x7c00, 0xfc00, 0x0000, 0x8000,
            0x0001, 0x8001, 0x03ff, 0x83ff, 0x0400, 0x7bff, 0xfbff, 0x5a00, 0xda00};
  }
  std::vector<T> out;
  for (const std::uint16_t b : bits) out.push_back(T{b});
  for (int k = -31; k <= 31; k += 2) out.push_back(from_float<T>(static_cast<float>(k) / 8.0f));
  return out;
}

/// n elements: seeded normal values (stddev `stddev`) rounded to T, some
/// exact multiples of 1/4 and 1/8 (grid points and ties), and the specials
/// spread over the tensor.
template <class T>
std::vector<T> half_values(std::int64_t n, std::uint32_t seed, float stddev = 2.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, stddev);
  std::vector<T> out(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    float v = normal(rng);
    if (rng() % 5 == 0) v = static_cast<float>(static_cast<int>(v * 8.0f)) / 8.0f;
    out[static_cast<std::size_t>(i)] = from_float<T>(v);
  }
  const std::vector<T> specials = special_elements<T>();
  if (n > 0)
    for (std::size_t k = 0; k < specials.size(); ++k)
      out[static_cast<std::size_t>((static_cast<std::int64_t>(k) * 7919 + seed) % n)] = specials[k];
  return out;
}

}  // namespace lowbit::test
