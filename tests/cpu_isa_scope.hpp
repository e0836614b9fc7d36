// The instruction set levels of the CPU backend's kernels (cpu_isa.hpp), for
// tests that run their checks at every level this CPU runs.
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include "backends/cpu_isa.hpp"
#include "test_util.hpp"

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

/// One way to run the CPU ops: a level and a thread count.
struct CpuRun {
  cpu::Isa isa;
  int threads;

  std::string name() const { return isa_name(isa) + ", " + std::to_string(threads) + " threads"; }
};

inline std::ostream& operator<<(std::ostream& os, const CpuRun& run) { return os << run.name(); }

/// Every runnable level with 1, 2 and 3 threads (different shares of the
/// work), lowest level and fewest threads first.
inline std::vector<CpuRun> cpu_runs() {
  std::vector<CpuRun> runs;
  for (const cpu::Isa isa : runnable_isas())
    for (const int threads : {1, 2, 3}) runs.push_back({isa, threads});
  return runs;
}

/// Makes the CPU ops run one CpuRun's way for one scope.
class CpuRunScope {
 public:
  explicit CpuRunScope(const CpuRun& run) : isa_(run.isa), threads_(run.threads) {}

 private:
  IsaScope isa_;
  ThreadCount threads_;
};

}  // namespace lowbit::test
