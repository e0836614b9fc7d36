#include "backends/cpu_quant.hpp"
