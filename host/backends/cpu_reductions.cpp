#include "backends/cpu_reductions.hpp"
