// Backend::make_timeline: stamps in queue order, the intervals between them
// once the queued work is done, and a clean error past the capacity. The
// training-step benchmark splits a step into stages with it.
#include <gtest/gtest.h>

#include <cstddef>
#include <memory>
#include <vector>

#include "lowbit/backend.hpp"
#include "test_util.hpp"

namespace lowbit {
namespace {

void expect_timeline_measures_queued_work(Backend& backend) {
  constexpr std::size_t kBytes = std::size_t{256} << 20;  // long enough to measure anywhere
  const Buffer buffer = backend.allocate(kBytes);
  const std::unique_ptr<Timeline> timeline = backend.make_timeline(3);
  timeline->stamp();
  backend.fill_zero(buffer.data(), kBytes);
  timeline->stamp();
  timeline->stamp();
  const std::vector<double> ms = timeline->take_intervals_ms();
  ASSERT_EQ(ms.size(), 2u);
  EXPECT_GT(ms[0], 0.0) << "the fill took no time";
  EXPECT_GE(ms[1], 0.0);
  EXPECT_LT(ms[1], ms[0]) << "nothing was queued between the last two stamps";

  // Taking starts again: the capacity is free, and past it stamp() throws.
  EXPECT_TRUE(timeline->take_intervals_ms().empty());
  for (int i = 0; i < 3; ++i) timeline->stamp();
  EXPECT_TRUE(test::throws_mentioning([&] { timeline->stamp(); }, "more than 3 stamps"));
  EXPECT_EQ(timeline->take_intervals_ms().size(), 2u);
}

TEST(CpuBackendTimeline, MeasuresQueuedWork) {
  const auto backend = make_cpu_backend();
  expect_timeline_measures_queued_work(*backend);
}

TEST(GpuBackendTimeline, MeasuresQueuedWork) {
  LOWBIT_REQUIRE_GPU();
  const auto backend = make_cuda_backend();
  expect_timeline_measures_queued_work(*backend);
}

}  // namespace
}  // namespace lowbit
