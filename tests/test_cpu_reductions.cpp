// lowbit::cpu per-channel reductions against lowbit::ref, bit for bit.
#include "backends/cpu_reductions.hpp"
