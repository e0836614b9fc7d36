#include "lowbit/lr_schedule.hpp"

#include <cmath>

#include "lowbit/error.hpp"

namespace lowbit {

const char* to_string(LrScheduleKind kind) {
  switch (kind) {
    case LrScheduleKind::constant: return "constant";
    case LrScheduleKind::cosine: return "cosine";
    case LrScheduleKind::step: return "step";
  }
  return "?";
}

LrScheduleKind lr_schedule_kind_from_name(const std::string& name) {
  for (LrScheduleKind kind :
       {LrScheduleKind::constant, LrScheduleKind::cosine, LrScheduleKind::step})
    if (name == to_string(kind)) return kind;
  throw Error("unknown learning-rate schedule '" + name + "' (constant, cosine or step)",
              __FILE__, __LINE__);
}

void check_lr_schedule(const LrSchedule& schedule) {
  LOWBIT_EXPECTS(schedule.factor > 0.0f && schedule.factor <= 1.0f,
                 "learning-rate schedule: the step factor must be in (0, 1]");
  std::int64_t previous = 0;
  for (std::int64_t m : schedule.milestones) {
    LOWBIT_EXPECTS(m > previous,
                   "learning-rate schedule: milestones must be increasing epochs >= 1");
    previous = m;
  }
}

float scheduled_learning_rate(const LrSchedule& schedule, float base, std::int64_t epoch,
                              std::int64_t epochs) {
  switch (schedule.kind) {
    case LrScheduleKind::constant: return base;
    case LrScheduleKind::cosine: {
      const double pi = std::acos(-1.0);
      const double t = epochs > 0 ? static_cast<double>(epoch) / static_cast<double>(epochs) : 0;
      return static_cast<float>(base * 0.5 * (1.0 + std::cos(pi * t)));
    }
    case LrScheduleKind::step: {
      double lr = base;
      for (std::int64_t m : schedule.milestones)
        if (m <= epoch) lr *= schedule.factor;
      return static_cast<float>(lr);
    }
  }
  return base;
}

}  // namespace lowbit
