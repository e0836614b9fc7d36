// Kernels with one deliberate bug each, for the emulator's self-tests
// (test_harness.cpp): with `broken` false each one is correct, with it true
// the emulator (or, for memory bugs, its sanitizer build) must report it,
// naming this file, the line marked "site:" and the CUDA thread.
#include "broken_kernels.hpp"

namespace simt_selftest {
namespace {

constexpr unsigned kFullWarp = 0xffffffffu;

__global__ void divergent_collective_kernel(unsigned* out, bool broken) {
  const unsigned lane = threadIdx.x & 31;
  if (broken && lane >= 16) {
    out[threadIdx.x] = __shfl_xor_sync(kFullWarp, lane, 1);  // site: divergent shuffle
  } else {
    out[threadIdx.x] = __ballot_sync(kFullWarp, lane % 2 == 0);  // site: divergent ballot
  }
}

__global__ void exit_at_barrier_kernel(float* out, bool broken) {
  __shared__ float tile[64];
  if (broken && threadIdx.x == 5) return;  // site: early exit
  tile[threadIdx.x] = static_cast<float>(threadIdx.x);
  __syncthreads();  // site: the barrier the block waits at
  out[threadIdx.x] = tile[63 - threadIdx.x];
}

__global__ void shuffle_outside_mask_kernel(float* out, bool broken) {
  const unsigned lane = threadIdx.x & 31;
  if (lane < 16) {
    const int source = static_cast<int>(broken ? lane + 16 : lane ^ 1u);
    out[lane] = __shfl_sync(0x0000ffffu, static_cast<float>(lane), source);  // site: shuffle
  }
}

__global__ void deadlock_kernel(float* out, bool broken) {
  if (broken && threadIdx.x == 0) __syncwarp();  // site: lane 0 waits for its warp
  __syncthreads();  // site: the others wait for the block
  out[threadIdx.x] = 1.0f;
}

__global__ void copy_kernel(const float* in, float* out, int n) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) out[i] = in[i];
}

__global__ void out_of_bounds_kernel(const float* in, float* out, int n, bool broken) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (broken ? i <= n : i < n) out[i] = in[i];  // site: off by one
}

/// Two block sums through one shared scratch array, as block_reduce does; the
/// scratch is reused without the barrier that protects the first round's
/// reads from the second round's writes.
__global__ void shared_reuse_kernel(const float* in, float* out, bool broken) {
  __shared__ float scratch[8];
  const unsigned warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (unsigned round = 0; round < 2; ++round) {
    float v = in[round * blockDim.x + threadIdx.x];
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullWarp, v, offset);
    if (lane == 0) scratch[warp] = v;  // site: the next round's write
    __syncthreads();
    if (threadIdx.x == 0) {
      float total = 0.0f;
      for (unsigned w = 0; w < 8; ++w) total += scratch[w];  // site: this round's read
      out[round] = total;
    }
    if (!broken) __syncthreads();  // site: the barrier before reuse
  }
}

}  // namespace

void divergent_collective(unsigned* out, bool broken) {
  divergent_collective_kernel<<<1, 32>>>(out, broken);
}
void exit_at_barrier(float* out, bool broken) { exit_at_barrier_kernel<<<1, 64>>>(out, broken); }
void shuffle_outside_mask(float* out, bool broken) {
  shuffle_outside_mask_kernel<<<1, 32>>>(out, broken);
}
void deadlock(float* out, bool broken) { deadlock_kernel<<<1, 64>>>(out, broken); }
void invalid_launch(const float* in, float* out, int n, bool broken) {
  copy_kernel<<<1, broken ? 2048 : 256>>>(in, out, n);  // site: invalid launch
}
void out_of_bounds(const float* in, float* out, int n, bool broken) {
  out_of_bounds_kernel<<<(n + 127) / 128, 128>>>(in, out, n, broken);
}
void shared_reuse(const float* in, float* out, bool broken) {
  shared_reuse_kernel<<<1, 256>>>(in, out, broken);
}

}  // namespace simt_selftest
