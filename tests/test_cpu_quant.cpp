// lowbit::cpu elementwise quantizer ops against lowbit::ref, bit for bit.
#include "backends/cpu_quant.hpp"
