// Learning-rate schedules of the trainer, stepped once per epoch as PyTorch's
// LR schedulers usually are: epoch e (0-based) of E trains at
//   constant  lr
//   cosine    lr·(1 + cos(π·e/E))/2          (CosineAnnealingLR, eta_min 0, T_max E)
//   step      lr·factor^(milestones <= e)    (MultiStepLR, milestones in epochs)
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lowbit {

enum class LrScheduleKind { constant, cosine, step };

struct LrSchedule {
  LrScheduleKind kind = LrScheduleKind::constant;
  std::vector<std::int64_t> milestones;  ///< step: after this many epochs, lr is multiplied
  float factor = 0.1f;                   ///< step: the multiplier at each milestone
};

/// "constant", "cosine", "step".
const char* to_string(LrScheduleKind kind);

/// The kind named `name`; throws lowbit::Error naming the choices otherwise.
LrScheduleKind lr_schedule_kind_from_name(const std::string& name);

/// Throws lowbit::Error unless milestones are increasing and >= 1 and the
/// factor is in (0, 1].
void check_lr_schedule(const LrSchedule& schedule);

/// The learning rate of epoch `epoch` (0-based) of `epochs`, from `base`.
float scheduled_learning_rate(const LrSchedule& schedule, float base, std::int64_t epoch,
                              std::int64_t epochs);

}  // namespace lowbit
