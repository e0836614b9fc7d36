// What the benchmark binaries share: benchmarks whose exceptions become
// failures, and a main() that exits 1 if any benchmark failed, so that
// scripts and tests catch errors Google Benchmark itself only prints.
#pragma once

#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstdio>
#include <exception>
#include <functional>
#include <list>
#include <string>
#include <utility>

namespace lowbit::bench {

/// Kept for main's exit status, and alive for the run because SkipWithError
/// may keep only the pointer.
inline std::list<std::string>& failures() {
  static std::list<std::string> messages;
  return messages;
}

inline void fail(benchmark::State& state, std::string message) {
  failures().push_back(std::move(message));
  state.SkipWithError(failures().back().c_str());
}

/// Registers `body` under `name`; an exception it throws fails the benchmark.
template <class Body>
benchmark::internal::Benchmark* add_guarded(const std::string& name, Body body) {
  return benchmark::RegisterBenchmark(name.c_str(), [body](benchmark::State& state) {
    try {
      body(state);
    } catch (const std::exception& e) {
      fail(state, e.what());
    }
  });
}

/// Parses the Google Benchmark flags, calls register_all (which may throw),
/// runs the benchmarks and returns main's exit status: 2 for unknown
/// arguments, 1 if anything failed or the filter matched nothing.
inline int run_benchmarks(int argc, char** argv, const std::function<void()>& register_all) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
  try {
    register_all();
    const std::size_t matched = benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    if (matched == 0) failures().push_back("no benchmark matched the filter");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  if (failures().empty()) return 0;
  std::fprintf(stderr, "error: %zu failure(s), first: %s\n", failures().size(),
               failures().front().c_str());
  return 1;
}

}  // namespace lowbit::bench
