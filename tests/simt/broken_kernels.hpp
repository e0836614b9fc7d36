// Launchers of the deliberately broken kernels in broken_kernels.cu (the
// emulator's self-tests). Device pointers; `broken` false launches the
// correct variant.
#pragma once

namespace simt_selftest {

/// Half the warp in __shfl_xor_sync, half in __ballot_sync (32 outputs).
void divergent_collective(unsigned* out, bool broken);
/// Thread 5 returns while the block waits at __syncthreads (64 outputs).
void exit_at_barrier(float* out, bool broken);
/// __shfl_sync reading lanes outside its 16-lane mask (16 outputs).
void shuffle_outside_mask(float* out, bool broken);
/// Lane 0 in __syncwarp, the rest of the block in __syncthreads (64 outputs).
void deadlock(float* out, bool broken);
/// A copy of n elements launched with 2048 threads per block.
void invalid_launch(const float* in, float* out, int n, bool broken);
/// A copy of n elements whose bound check lets element n through.
void out_of_bounds(const float* in, float* out, int n, bool broken);
/// Two 256-element block sums into out[0..1] through one shared scratch,
/// without the barrier before its reuse.
void shared_reuse(const float* in, float* out, bool broken);

}  // namespace simt_selftest
