// CPU stand-in for cub::DeviceRadixSort (SortPairs with DoubleBuffer), used
// only in the SIMT CPU build: CUB's own device code needs a CUDA compiler. It
// keeps CUB's contract: a size query with d_temp_storage == nullptr, stable
// LSD radix passes of 8 bits over [begin_bit, end_bit), the selector of each
// DoubleBuffer flipped once per pass (so 64-bit keys end where they started,
// as CUB's 8 onesweep passes do), and the work ordered on `stream`.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <type_traits>
#include <cstdint>
#include <cstring>
#include <vector>

#include "simt/cuda_simt.hpp"

namespace cub {

template <class T>
struct DoubleBuffer {
  T* d_buffers[2];
  int selector;
  DoubleBuffer() : d_buffers{nullptr, nullptr}, selector(0) {}
  DoubleBuffer(T* current, T* alternate) : d_buffers{current, alternate}, selector(0) {}
  T* Current() { return d_buffers[selector]; }
  T* Alternate() { return d_buffers[selector ^ 1]; }
};

struct DeviceRadixSort {
  template <class KeyT, class ValueT, class NumItemsT>
  static cudaError_t SortPairs(void* d_temp_storage, std::size_t& temp_storage_bytes,
                               DoubleBuffer<KeyT>& keys, DoubleBuffer<ValueT>& values,
                               NumItemsT num_items, int begin_bit = 0,
                               int end_bit = sizeof(KeyT) * 8, cudaStream_t stream = nullptr) {
    static_assert(sizeof(KeyT) <= 8, "integer keys only");
    constexpr std::size_t kTempBytes = 1024;  // any size works; a real one must be honoured
    if (d_temp_storage == nullptr) {
      temp_storage_bytes = kTempBytes;
      return cudaSuccess;
    }
    if (temp_storage_bytes < kTempBytes) return cudaErrorInvalidValue;
    const int passes = (end_bit - begin_bit + 7) / 8;
    KeyT* k[2] = {keys.Current(), keys.Alternate()};
    ValueT* v[2] = {values.Current(), values.Alternate()};
    const std::int64_t n = static_cast<std::int64_t>(num_items);
    simt::enqueue_host_work(stream, [=]() {
      using U = std::make_unsigned_t<KeyT>;
      std::vector<std::int64_t> count(257);
      int from = 0;
      for (int pass = 0; pass < passes; ++pass) {
        const int shift = begin_bit + 8 * pass;
        const int bits = end_bit - shift < 8 ? end_bit - shift : 8;
        const U digit_mask = static_cast<U>((1u << bits) - 1u);
        std::fill(count.begin(), count.end(), 0);
        for (std::int64_t i = 0; i < n; ++i)
          ++count[1 + ((static_cast<U>(k[from][i]) >> shift) & digit_mask)];
        for (int d = 0; d < 256; ++d) count[d + 1] += count[d];
        for (std::int64_t i = 0; i < n; ++i) {
          const std::int64_t at = count[(static_cast<U>(k[from][i]) >> shift) & digit_mask]++;
          k[from ^ 1][at] = k[from][i];
          v[from ^ 1][at] = v[from][i];
        }
        from ^= 1;
      }
    });
    if (passes % 2 == 1) {
      keys.selector ^= 1;
      values.selector ^= 1;
    }
    return cudaSuccess;
  }
};

}  // namespace cub
