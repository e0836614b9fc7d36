// The learning-rate schedules, against the values PyTorch's schedulers give
// when stepped once per epoch (CosineAnnealingLR(T_max=E), MultiStepLR).
#include <gtest/gtest.h>

#include "lowbit/error.hpp"
#include "lowbit/lr_schedule.hpp"
#include "test_util.hpp"

namespace lowbit {
namespace {

TEST(LrSchedule, ConstantKeepsTheRate) {
  for (std::int64_t e = 0; e < 5; ++e)
    EXPECT_EQ(scheduled_learning_rate({}, 0.05f, e, 5), 0.05f);
}

TEST(LrSchedule, CosineAnnealsFromTheRateTowardsZero) {
  const LrSchedule cosine{LrScheduleKind::cosine, {}, 0.1f};
  // lr·(1 + cos(π·e/4))/2 for e = 0..3: 1, 0.853553, 0.5, 0.146447 of lr.
  const double expected[] = {0.1, 0.0853553390593, 0.05, 0.0146446609407};
  for (std::int64_t e = 0; e < 4; ++e)
    EXPECT_NEAR(scheduled_learning_rate(cosine, 0.1f, e, 4), expected[e], 1e-8) << e;
}

TEST(LrSchedule, StepMultipliesAtEachMilestone) {
  const LrSchedule step{LrScheduleKind::step, {2, 4}, 0.5f};
  const float expected[] = {0.08f, 0.08f, 0.04f, 0.04f, 0.02f, 0.02f};
  for (std::int64_t e = 0; e < 6; ++e)
    EXPECT_FLOAT_EQ(scheduled_learning_rate(step, 0.08f, e, 6), expected[e]) << e;
}

TEST(LrSchedule, NamesAndChecks) {
  EXPECT_EQ(lr_schedule_kind_from_name("cosine"), LrScheduleKind::cosine);
  EXPECT_TRUE(test::throws_mentioning([] { lr_schedule_kind_from_name("linear"); },
                                      "'linear' (constant, cosine or step)"));
  EXPECT_TRUE(test::throws_mentioning(
      [] { check_lr_schedule({LrScheduleKind::step, {3, 3}, 0.1f}); }, "increasing"));
  EXPECT_TRUE(test::throws_mentioning(
      [] { check_lr_schedule({LrScheduleKind::step, {0}, 0.1f}); }, "increasing epochs >= 1"));
  EXPECT_TRUE(test::throws_mentioning(
      [] { check_lr_schedule({LrScheduleKind::step, {2}, 1.5f}); }, "factor must be in (0, 1]"));
}

}  // namespace
}  // namespace lowbit
