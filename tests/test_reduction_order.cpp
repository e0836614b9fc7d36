// The host mirror of the GPU's reduction tree computes only what lane 0 of
// each butterfly needs, and reuses the result of all-identity warps. Both
// shortcuts must give the bits of the full tree, which the GPU computes.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include "reduction_order.hpp"
#include "test_util.hpp"

namespace {

using lowbit::detail::block_reduce_ref;
using lowbit::detail::butterfly_ref;
using lowbit::detail::kReduceThreads;
using lowbit::detail::MaxOp;
using lowbit::detail::SumOp;

// Every lane, every round, as the warp shuffles do.
template <class Op>
float full_butterfly(std::array<float, 32> v, Op op) {
  for (int offset = 16; offset > 0; offset /= 2) {
    std::array<float, 32> next;
    for (int lane = 0; lane < 32; ++lane) next[lane] = op(v[lane], v[lane ^ offset]);
    v = next;
  }
  return v[0];
}

template <class Op>
float full_block_reduce(const std::array<float, kReduceThreads>& values, Op op) {
  std::array<float, 32> warp_results;
  warp_results.fill(Op::identity());
  for (int w = 0; w < kReduceThreads / 32; ++w) {
    std::array<float, 32> lanes;
    for (int lane = 0; lane < 32; ++lane) lanes[lane] = values[w * 32 + lane];
    warp_results[w] = full_butterfly(lanes, op);
  }
  return full_butterfly(warp_results, op);
}

/// Same bits, or both NaN: the compiler may swap the operands of a + b, which
/// picks which NaN payload survives, and the GPU returns its canonical NaN.
::testing::AssertionResult same_result(float expected, float got) {
  if (std::isnan(expected) && std::isnan(got)) return ::testing::AssertionSuccess();
  return lowbit::test::same_bits(std::vector<float>{expected}, std::vector<float>{got});
}

/// Values of mixed magnitudes with signed zeros, infinities and a NaN, so
/// that a different order or a dropped operation changes the bits.
std::vector<float> awkward_values(std::uint32_t seed) {
  std::vector<float> v = lowbit::test::random_values(kReduceThreads, seed);
  for (std::size_t i = 0; i < v.size(); i += 7) v[i] *= 1e7f;
  v[3] = -0.0f;
  v[40] = std::numeric_limits<float>::infinity();
  v[41] = -std::numeric_limits<float>::infinity();
  v[77] = std::numeric_limits<float>::quiet_NaN();
  return v;
}

template <class Op>
void expect_same_as_full_tree(Op op, std::uint32_t seed) {
  const std::vector<float> source = awkward_values(seed);
  for (int active : {1, 2, 31, 32, 33, 100, 255, 256}) {
    std::array<float, kReduceThreads> values;
    values.fill(Op::identity());
    for (int i = 0; i < active; ++i) values[i] = source[static_cast<std::size_t>(i)];
    // Without the NaN and infinities too, so that sums stay finite.
    for (const bool finite_only : {false, true}) {
      if (finite_only)
        for (float& x : values)
          if (!std::isfinite(x)) x = Op::identity();
      EXPECT_TRUE(same_result(full_block_reduce(values, op), block_reduce_ref(values, op, active)))
          << "active " << active << (finite_only ? ", finite only" : "");
    }
  }
}

TEST(ReductionOrder, ButterflyGivesTheFullButterflysLaneZero) {
  for (std::uint32_t seed = 1; seed <= 20; ++seed) {
    const std::vector<float> source = awkward_values(seed);
    std::array<float, 32> lanes;
    for (int i = 0; i < 32; ++i) lanes[i] = source[static_cast<std::size_t>(i + seed)];
    EXPECT_TRUE(same_result(full_butterfly(lanes, SumOp{}), butterfly_ref(lanes, SumOp{})));
    EXPECT_TRUE(same_result(full_butterfly(lanes, MaxOp{}), butterfly_ref(lanes, MaxOp{})));
  }
}

TEST(ReductionOrder, BlockReduceWithIdleWarpsGivesTheFullTree) {
  for (std::uint32_t seed = 1; seed <= 5; ++seed) {
    expect_same_as_full_tree(SumOp{}, seed);
    expect_same_as_full_tree(MaxOp{}, seed);
  }
}

// -0.0 alone: the identities it meets turn it into +0.0, in both trees.
TEST(ReductionOrder, NegativeZeroMeetsTheIdentityAsOnTheGpu) {
  std::array<float, kReduceThreads> values;
  values.fill(SumOp::identity());
  values[0] = -0.0f;
  EXPECT_TRUE(
      same_result(full_block_reduce(values, SumOp{}), block_reduce_ref(values, SumOp{}, 1)));
  EXPECT_FALSE(std::signbit(block_reduce_ref(values, SumOp{}, 1)));
}

}  // namespace
