#include "backends/cpu_isa.hpp"

#include <atomic>

#include "lowbit/error.hpp"

namespace lowbit::cpu {
namespace {

Isa detect() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return Isa::x86_64_v4;
  if (__builtin_cpu_supports("x86-64-v3")) return Isa::x86_64_v3;
#endif
  return Isa::baseline;
}

std::atomic<Isa>& active() {
  static std::atomic<Isa> isa{supported_isa()};
  return isa;
}

}  // namespace

Isa supported_isa() {
  static const Isa isa = detect();
  return isa;
}

Isa active_isa() { return active().load(std::memory_order_relaxed); }

void use_isa(Isa isa) {
  LOWBIT_EXPECTS(isa <= supported_isa(), "use_isa: this CPU does not run that instruction set");
  active().store(isa, std::memory_order_relaxed);
}

}  // namespace lowbit::cpu
