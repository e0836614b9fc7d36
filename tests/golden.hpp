// Reading the golden vectors in tests/data, which the frameworks themselves
// produced (each file's generator script sits beside it). Every float there
// is stored as its IEEE-754 bit pattern, so the data is exact.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "test_util.hpp"

#ifndef LOWBIT_TEST_DATA_DIR
#error "LOWBIT_TEST_DATA_DIR must name the tests/data directory"
#endif

namespace lowbit::test {

inline float float_from_bits(std::uint32_t bits) {
  float v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

inline std::vector<float> floats_from_bits(const nlohmann::json& j) {
  std::vector<float> out;
  out.reserve(j.size());
  for (const auto& b : j) out.push_back(float_from_bits(b.get<std::uint32_t>()));
  return out;
}

/// tests/data/<file>, parsed.
inline nlohmann::json load_golden(const std::string& file) {
  const std::string path = std::string(LOWBIT_TEST_DATA_DIR) + "/" + file;
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path);
  return nlohmann::json::parse(in);
}

/// "0.100000001 (0x3dcccccd)": enough digits to tell neighbouring floats apart.
inline std::string show(float v) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.9g (0x%08x)", v, static_cast<unsigned>(bits_of(v)));
  return buf;
}

/// The same bit pattern, or both NaN: a NaN's payload is not part of the
/// contract (the GPU returns its canonical NaN).
inline bool same_value(float expected, float got) {
  return bits_of(expected) == bits_of(got) || (std::isnan(expected) && std::isnan(got));
}

/// Compares `got` with `expected` by same_value and lists the first few
/// mismatches with their inputs.
inline ::testing::AssertionResult matches(const std::string& what, const std::vector<float>& x,
                                          const std::vector<float>& expected,
                                          const std::vector<float>& got) {
  if (expected.size() != got.size())
    return ::testing::AssertionFailure()
           << what << ": sizes differ: " << expected.size() << " vs " << got.size();
  std::string listing;
  std::size_t bad = 0;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    if (same_value(expected[i], got[i])) continue;
    if (bad++ < 5) {
      listing += "\n  [" + std::to_string(i) + "]";
      if (i < x.size()) listing += " x=" + show(x[i]);
      listing += " expected " + show(expected[i]) + ", got " + show(got[i]);
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << what << ": " << bad << " of " << expected.size() << " differ" << listing;
}

}  // namespace lowbit::test
