// The instruction set levels of the CPU backend's kernels (cpu_isa.hpp), for
// tests that run their checks at every level this CPU runs.
#pragma once

#include <string>
#include <vector>

#include "backends/cpu_isa.hpp"

namespace lowbit::test {

/// The levels this CPU runs, lowest first.
inline std::vector<cpu::Isa> runnable_isas() {
  std::vector<cpu::Isa> isas;
  for (const cpu::Isa isa : {cpu::Isa::baseline, cpu::Isa::x86_64_v3, cpu::Isa::x86_64_v4})
    if (isa <= cpu::supported_isa()) isas.push_back(isa);
  return isas;
}

/// Makes the kernels use one level for one scope.
class IsaScope {
 public:
  explicit IsaScope(cpu::Isa isa) : saved_(cpu::active_isa()) { cpu::use_isa(isa); }
  ~IsaScope() { cpu::use_isa(saved_); }
  IsaScope(const IsaScope&) = delete;
  IsaScope& operator=(const IsaScope&) = delete;

 private:
  cpu::Isa saved_;
};

inline std::string isa_name(cpu::Isa isa) {
  return isa == cpu::Isa::baseline    ? "baseline"
         : isa == cpu::Isa::x86_64_v3 ? "x86-64-v3"
                                      : "x86-64-v4";
}

}  // namespace lowbit::test
