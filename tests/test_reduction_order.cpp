// The host mirror of the GPU's reduction tree computes only what lane 0 of
// each butterfly needs, and reuses the result of all-identity warps. Both
// shortcuts must give the bits of the full tree, which the GPU computes. And
// reduce_channels_ref must follow the order reduction_order.hpp defines,
// which is computed here again the slow way, from its definition.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "reduction_order.hpp"
#include "test_util.hpp"

namespace {

using lowbit::ChannelLayout;
using lowbit::detail::block_reduce_ref;
using lowbit::detail::butterfly_ref;
using lowbit::detail::items_per_channel;
using lowbit::detail::kReduceItemsPerThread;
using lowbit::detail::kReducePiece;
using lowbit::detail::kReduceThreads;
using lowbit::detail::MaxOp;
using lowbit::detail::reduce_channels_ref;
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

// ---------------------------------------------------------------------------
// The order of reduce_channels_ref

/// Channel c's items as the order defines them, each as the element indices
/// in j order: pieces of kReducePiece of each row when inner >= kReducePiece,
/// else kReducePiece / inner whole rows per item.
std::vector<std::vector<std::int64_t>> items_by_definition(const ChannelLayout& layout,
                                                           std::int64_t c) {
  std::vector<std::vector<std::int64_t>> items;
  const auto at = [&](std::int64_t o, std::int64_t off) {
    return (o * layout.channels + c) * layout.inner + off;
  };
  if (layout.inner >= kReducePiece) {
    for (std::int64_t o = 0; o < layout.outer; ++o)
      for (std::int64_t start = 0; start < layout.inner; start += kReducePiece) {
        items.emplace_back();
        for (std::int64_t off = start; off < std::min(start + kReducePiece, layout.inner); ++off)
          items.back().push_back(at(o, off));
      }
  } else if (layout.inner > 0) {
    const std::int64_t rows = kReducePiece / layout.inner;
    for (std::int64_t first = 0; first < layout.outer; first += rows) {
      items.emplace_back();
      for (std::int64_t o = first; o < std::min(first + rows, layout.outer); ++o)
        for (std::int64_t off = 0; off < layout.inner; ++off) items.back().push_back(at(o, off));
    }
  }
  return items;
}

/// What one GPU block computes from `values` (at most kReducePiece): thread t
/// folds values t, t + 256, ... in turn, then the full tree.
template <class Op>
float block_as_gpu(const std::vector<float>& values, Op op) {
  std::array<float, kReduceThreads> acc;
  acc.fill(Op::identity());
  for (int t = 0; t < kReduceThreads; ++t)
    for (int k = 0; k < kReduceItemsPerThread; ++k) {
      const std::size_t j = static_cast<std::size_t>(t + k * kReduceThreads);
      if (j < values.size()) acc[t] = op(acc[t], values[j]);
    }
  return full_block_reduce(acc, op);
}

/// Each channel's two totals (quantity q of element i: value(i, q)) by the
/// definition: items by block_as_gpu, then their partials the same way in
/// strides of 256 (the finishing block).
template <class Op, class Value>
std::vector<std::array<float, 2>> totals_by_definition(const ChannelLayout& layout, Op op,
                                                       Value value) {
  std::vector<std::array<float, 2>> totals(static_cast<std::size_t>(layout.channels));
  for (std::int64_t c = 0; c < layout.channels; ++c) {
    const auto items = items_by_definition(layout, c);
    for (int q = 0; q < 2; ++q) {
      std::vector<float> partials;
      for (const auto& item : items) {
        std::vector<float> values;
        for (std::int64_t i : item) values.push_back(value(i, q));
        partials.push_back(block_as_gpu(values, op));
      }
      std::array<float, kReduceThreads> acc;
      acc.fill(Op::identity());
      for (std::size_t m = 0; m < partials.size(); ++m)
        acc[m % kReduceThreads] = op(acc[m % kReduceThreads], partials[m]);
      totals[static_cast<std::size_t>(c)][q] = full_block_reduce(acc, op);
    }
  }
  return totals;
}

/// Long and short rows: inner 1 (Linear), small inner, rows just below, at
/// and above kReducePiece and a half of it, outer not a multiple of the rows
/// an item holds, many channels, more items than a finishing block's threads,
/// and empty layouts.
const std::vector<ChannelLayout> kOrderLayouts = {
    {1, 1, 1},     {300, 120, 1},  {2049, 3, 1},  {700000, 1, 1}, {1500, 4, 3},
    {45, 7, 100},  {3, 2, 1023},   {5, 2, 1024},  {3, 2, 1025},   {3, 2, 2047},
    {3, 2, 2048},  {3, 2, 2049},   {2, 3, 5000},  {4, 700, 5},    {1, 3, 600000},
    {0, 3, 5},     {3, 2, 0}};

TEST(ReductionOrder, ChannelReductionFollowsTheDefinedOrder) {
  for (const ChannelLayout& layout : kOrderLayouts) {
    SCOPED_TRACE(::testing::Message() << "layout {" << layout.outer << ", " << layout.channels
                                      << ", " << layout.inner << "}");
    const std::vector<float> source = awkward_values(static_cast<std::uint32_t>(layout.inner));
    // Mixed magnitudes make every order give other bits; quantity 1 differs
    // from quantity 0 so that the two cannot be swapped.
    const auto value = [&](std::int64_t i, int q) {
      const float v = source[static_cast<std::size_t>(i * 7919 % kReduceThreads)];
      const float finite = std::isfinite(v) ? v : 1.0f;
      return (q == 0 ? finite : -0.5f * finite) * static_cast<float>(1 + i % 13);
    };
    std::vector<float> partials(lowbit::reduction_workspace_bytes(layout) / sizeof(float));
    std::vector<int> visits(static_cast<std::size_t>(layout.size()), 0);
    for (const bool max : {false, true}) {
      std::vector<std::array<float, 2>> got(static_cast<std::size_t>(layout.channels));
      const auto bind = [&](std::int64_t) {
        return [&](std::int64_t i, int q) {
          if (q == 0 && !max) ++visits[static_cast<std::size_t>(i)];
          return value(i, q);
        };
      };
      const auto finish = [&](std::int64_t c, const std::array<float, 2>& totals) {
        got[static_cast<std::size_t>(c)] = totals;
      };
      const auto want = max ? totals_by_definition(layout, MaxOp{}, value)
                            : totals_by_definition(layout, SumOp{}, value);
      if (max)
        reduce_channels_ref<2>(layout, MaxOp{}, bind, finish, partials.data());
      else
        reduce_channels_ref<2>(layout, SumOp{}, bind, finish, partials.data());
      for (std::size_t c = 0; c < got.size(); ++c)
        for (int q = 0; q < 2; ++q)
          ASSERT_TRUE(same_result(want[c][q], got[c][q]))
              << (max ? "max" : "sum") << ", channel " << c << ", quantity " << q;
    }
    for (std::size_t i = 0; i < visits.size(); ++i) ASSERT_EQ(visits[i], 1) << "element " << i;
  }
}

// The workspace holds 2 partials per item; a Linear output's channel has one
// item per 2048 batch rows, a conv output's one per row or group of rows.
TEST(ReductionOrder, ItemsPerChannel) {
  EXPECT_EQ(items_per_channel({128, 120, 1}), 1);
  EXPECT_EQ(items_per_channel({2048, 120, 1}), 1);
  EXPECT_EQ(items_per_channel({2049, 120, 1}), 2);
  EXPECT_EQ(items_per_channel({256, 6, 784}), 128);  // 2 rows per item
  EXPECT_EQ(items_per_channel({256, 16, 100}), 13);  // 20 rows per item
  EXPECT_EQ(items_per_channel({3, 2, 1025}), 3);
  EXPECT_EQ(items_per_channel({3, 2, 2049}), 6);
  EXPECT_EQ(items_per_channel({0, 3, 5}), 0);
  EXPECT_EQ(items_per_channel({3, 2, 0}), 0);
  EXPECT_EQ(lowbit::reduction_workspace_bytes({128, 120, 1}), 2 * 120 * sizeof(float));
}

}  // namespace
