// How the CPU backend shares work among OpenMP threads. Every split here is
// of independent outputs, so a result never depends on the thread count;
// the ops that sum keep their own fixed order (reduction_order.hpp).
#pragma once

#include <omp.h>

#include <cstdint>
#include <exception>

namespace lowbit::cpu {

/// Elements below which an elementwise op runs on the calling thread alone:
/// waking the team costs more than it saves.
inline constexpr std::int64_t kSerialElements = 1 << 14;

/// Calls f(begin, end) on one contiguous share of [0, rows) per thread. An
/// exception must not leave an OpenMP region: the first one is rethrown after.
template <class F>
void parallel_rows(std::int64_t rows, const F& f) {
  std::exception_ptr failure;
#pragma omp parallel
  {
    const std::int64_t thread = omp_get_thread_num();
    const std::int64_t threads = omp_get_num_threads();
    const std::int64_t begin = rows * thread / threads;
    const std::int64_t end = rows * (thread + 1) / threads;
    try {
      if (begin < end) f(begin, end);
    } catch (...) {
#pragma omp critical(lowbit_parallel_rows)
      if (!failure) failure = std::current_exception();
    }
  }
  if (failure) std::rethrow_exception(failure);
}

/// Calls f(begin, end) on shares of [0, n) that start on a 32-element mask
/// word, so no two threads write the same word of a bit mask; small n runs
/// on the calling thread.
template <class F>
void parallel_words(std::int64_t n, const F& f) {
  if (n <= kSerialElements) {
    if (n > 0) f(std::int64_t{0}, n);
    return;
  }
  const std::int64_t words = (n + 31) / 32;
  parallel_rows(words, [&](std::int64_t first, std::int64_t last) {
    f(first * 32, last * 32 < n ? last * 32 : n);
  });
}

}  // namespace lowbit::cpu
