// Packing of 2/4/8-bit codes into bytes, first element in the low bits:
//   packed[b] = Σ_s (codes[b·per + s] & (2^bits - 1)) << (s·bits),  per = 8/bits
#include "checks.hpp"
#include "launch.cuh"
#include "lowbit/cuda.hpp"
#include "lowbit/error.hpp"

namespace lowbit::cuda {
namespace {

__global__ void pack_codes_kernel(const std::uint8_t* codes, std::int64_t n, int bits,
                                  std::uint8_t* packed, std::int64_t bytes) {
  const int per = 8 / bits;
  const unsigned code_mask = (1u << bits) - 1u;
  const std::int64_t stride = std::int64_t{gridDim.x} * blockDim.x;
  for (std::int64_t b = std::int64_t{blockIdx.x} * blockDim.x + threadIdx.x; b < bytes;
       b += stride) {
    unsigned v = 0;
    for (int s = 0; s < per; ++s) {
      const std::int64_t i = b * per + s;
      if (i < n) v |= (codes[i] & code_mask) << (s * bits);
    }
    packed[b] = static_cast<std::uint8_t>(v);
  }
}

__global__ void unpack_codes_kernel(const std::uint8_t* packed, std::int64_t n, int bits,
                                    std::uint8_t* codes) {
  const int per = 8 / bits;
  const unsigned code_mask = (1u << bits) - 1u;
  const std::int64_t stride = std::int64_t{gridDim.x} * blockDim.x;
  for (std::int64_t i = std::int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += stride)
    codes[i] = static_cast<std::uint8_t>((packed[i / per] >> ((i % per) * bits)) & code_mask);
}

}  // namespace

void pack_codes(const std::uint8_t* codes, std::int64_t n, int bits, std::uint8_t* packed,
                cudaStream_t stream) {
  lowbit::detail::check_packing(codes, packed, n, bits);
  if (n == 0) return;
  const std::int64_t bytes = packed_bytes(n, bits);
  const unsigned grid = detail::grid_for(bytes, detail::kBlockThreads);
  pack_codes_kernel<<<grid, detail::kBlockThreads, 0, stream>>>(codes, n, bits, packed, bytes);
  LOWBIT_LAUNCH_CHECK();
}

void unpack_codes(const std::uint8_t* packed, std::int64_t n, int bits, std::uint8_t* codes,
                  cudaStream_t stream) {
  lowbit::detail::check_packing(codes, packed, n, bits);
  if (n == 0) return;
  const unsigned grid = detail::grid_for(n, detail::kBlockThreads);
  unpack_codes_kernel<<<grid, detail::kBlockThreads, 0, stream>>>(packed, n, bits, codes);
  LOWBIT_LAUNCH_CHECK();
}

}  // namespace lowbit::cuda
