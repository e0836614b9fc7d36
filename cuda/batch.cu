// Device-side data pipeline: the epoch permutation, gathering a batch into
// the network input, and the batch cursor a captured graph advances.
//
//   shuffle: perm = argsort_stable(shuffle_key(seed, epoch, i)), i in [0, n)
//            (CUB's radix sort, keys and values double-buffered in the workspace)
//   gather:  e = perm[cursor·batch + r];  x[r, j] = (images[e, j]/255 - mean)/std,
//            labels_out[r] = labels[e];  rows past the data: zeros, label -1
//   cursor:  *cursor += 1
#include <cub/device/device_radix_sort.cuh>

#include <cstdint>

#include "checks.hpp"
#include "launch.cuh"
#include "lowbit/cuda.hpp"
#include "lowbit/error.hpp"
#include "lowbit/nn_element.hpp"

namespace lowbit::cuda {
namespace {

// ---------------------------------------------------------------------------
// Kernels

__global__ void shuffle_keys_kernel(std::uint64_t seed, std::int64_t epoch, std::int64_t n,
                                    std::uint64_t* keys, std::int32_t* values) {
  const std::int64_t stride = std::int64_t{gridDim.x} * blockDim.x;
  for (std::int64_t i = std::int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    keys[i] = shuffle_key(seed, epoch, i);
    values[i] = static_cast<std::int32_t>(i);
  }
}

/// One block per row (grid-stride over rows), threads over its pixels. The
/// cursor is read on the device, so a replayed graph gathers the next batch.
__global__ void gather_batch_kernel(const std::uint8_t* images, const std::uint8_t* labels,
                                    std::int64_t n, std::int64_t example_size,
                                    const std::int32_t* perm, const std::int64_t* cursor,
                                    std::int64_t batch, Normalization norm, float* x,
                                    std::int32_t* labels_out) {
  const std::int64_t first = *cursor * batch;
  for (std::int64_t r = blockIdx.x; r < batch; r += gridDim.x) {
    const std::int64_t e = batch_example(first + r, n, perm);
    float* row = x + r * example_size;
    if (e < 0) {
      for (std::int64_t j = threadIdx.x; j < example_size; j += blockDim.x) row[j] = 0.0f;
      if (threadIdx.x == 0) labels_out[r] = -1;
      continue;
    }
    const std::uint8_t* pixels = images + e * example_size;
    for (std::int64_t j = threadIdx.x; j < example_size; j += blockDim.x)
      row[j] = normalize_pixel(pixels[j], norm);
    if (threadIdx.x == 0) labels_out[r] = labels[e];
  }
}

__global__ void advance_cursor_kernel(std::int64_t* cursor) { *cursor += 1; }

// ---------------------------------------------------------------------------
// Shuffle workspace: [keys | alternate keys | values | CUB temp storage], each
// part 256-byte aligned from a base rounded up to 256 (any pointer works).

constexpr std::size_t kAlign = 256;

std::size_t align_up(std::size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

struct ShuffleWorkspace {
  std::size_t key_bytes = 0;
  std::size_t value_bytes = 0;
  std::size_t temp_bytes = 0;
  std::size_t total = 0;
};

/// The parts for n indices. CUB's temporary storage is asked of the current
/// device (its tuning, and so its storage, depends on the architecture).
ShuffleWorkspace shuffle_workspace(std::int64_t n) {
  lowbit::detail::check_shuffle_count(n);
  ShuffleWorkspace ws;
  if (n == 0) return ws;
  ws.key_bytes = align_up(n * sizeof(std::uint64_t));
  ws.value_bytes = align_up(n * sizeof(std::int32_t));
  cub::DoubleBuffer<std::uint64_t> keys(nullptr, nullptr);
  cub::DoubleBuffer<std::int32_t> values(nullptr, nullptr);
  LOWBIT_CUDA_TRY(cub::DeviceRadixSort::SortPairs(nullptr, ws.temp_bytes, keys, values,
                                                  static_cast<int>(n)));
  ws.temp_bytes = align_up(ws.temp_bytes);
  ws.total = kAlign - 1 + 2 * ws.key_bytes + ws.value_bytes + ws.temp_bytes;
  return ws;
}

}  // namespace

// ---------------------------------------------------------------------------
// Launchers

std::size_t shuffle_workspace_bytes(std::int64_t n) { return shuffle_workspace(n).total; }

void shuffle_indices(std::uint64_t seed, std::int64_t epoch, std::int64_t n, std::int32_t* perm,
                     Workspace workspace, cudaStream_t stream) {
  const ShuffleWorkspace ws = shuffle_workspace(n);
  lowbit::detail::check_shuffle_indices(n, perm, workspace, ws.total);
  if (n == 0) return;
  auto* base = reinterpret_cast<unsigned char*>(
      align_up(reinterpret_cast<std::uintptr_t>(workspace.data)));
  auto* keys = reinterpret_cast<std::uint64_t*>(base);
  auto* keys_alt = reinterpret_cast<std::uint64_t*>(base + ws.key_bytes);
  auto* values = reinterpret_cast<std::int32_t*>(base + 2 * ws.key_bytes);
  void* temp = base + 2 * ws.key_bytes + ws.value_bytes;

  const unsigned grid = detail::grid_for(n, detail::kBlockThreads);
  shuffle_keys_kernel<<<grid, detail::kBlockThreads, 0, stream>>>(seed, epoch, n, keys, values);
  LOWBIT_LAUNCH_CHECK();
  // perm is the values' alternate buffer; the sort leaves the result in
  // either, so copy only when it ends up in the workspace. Radix sort is
  // stable, and the keys are distinct anyway (shuffle_key is a bijection).
  cub::DoubleBuffer<std::uint64_t> key_buffers(keys, keys_alt);
  cub::DoubleBuffer<std::int32_t> value_buffers(values, perm);
  std::size_t temp_bytes = ws.temp_bytes;
  LOWBIT_CUDA_TRY(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, key_buffers, value_buffers,
                                                  static_cast<int>(n), 0, 64, stream));
  if (value_buffers.Current() != perm) {
    LOWBIT_CUDA_TRY(cudaMemcpyAsync(perm, value_buffers.Current(), n * sizeof(std::int32_t),
                                    cudaMemcpyDeviceToDevice, stream));
  }
}

void gather_batch(const std::uint8_t* images, const std::uint8_t* labels, std::int64_t n,
                  std::int64_t example_size, const std::int32_t* perm,
                  const std::int64_t* cursor, std::int64_t batch, Normalization norm, float* x,
                  std::int32_t* labels_out, cudaStream_t stream) {
  lowbit::detail::check_gather_batch(images, labels, n, example_size, cursor, batch, norm, x,
                                     labels_out);
  if (batch == 0) return;
  const unsigned grid = detail::grid_for(batch, 1);
  gather_batch_kernel<<<grid, detail::kBlockThreads, 0, stream>>>(
      images, labels, n, example_size, perm, cursor, batch, norm, x, labels_out);
  LOWBIT_LAUNCH_CHECK();
}

void advance_cursor(std::int64_t* cursor, cudaStream_t stream) {
  lowbit::detail::check_advance_cursor(cursor);
  advance_cursor_kernel<<<1, 1, 0, stream>>>(cursor);
  LOWBIT_LAUNCH_CHECK();
}

}  // namespace lowbit::cuda
