// CPU reference of batch.cu: the epoch permutation, gathering a batch, and
// the batch cursor.
#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "checks.hpp"
#include "lowbit/error.hpp"
#include "lowbit/nn_element.hpp"
#include "lowbit/ref.hpp"

namespace lowbit::ref {

// The reference sorts in memory of its own (std::stable_sort allocates anyway).
std::size_t shuffle_workspace_bytes(std::int64_t n) {
  detail::check_shuffle_count(n);
  return 0;
}

void shuffle_indices(std::uint64_t seed, std::int64_t epoch, std::int64_t n, std::int32_t* perm,
                     Workspace workspace) {
  detail::check_shuffle_indices(n, perm, workspace, shuffle_workspace_bytes(n));
  std::vector<std::pair<std::uint64_t, std::int32_t>> keyed(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i)
    keyed[i] = {shuffle_key(seed, epoch, i), static_cast<std::int32_t>(i)};
  std::stable_sort(keyed.begin(), keyed.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  for (std::int64_t i = 0; i < n; ++i) perm[i] = keyed[i].second;
}

void gather_batch(const std::uint8_t* images, const std::uint8_t* labels, std::int64_t n,
                  std::int64_t example_size, const std::int32_t* perm,
                  const std::int64_t* cursor, std::int64_t batch, Normalization norm, float* x,
                  std::int32_t* labels_out) {
  detail::check_gather_batch(images, labels, n, example_size, cursor, batch, norm, x,
                             labels_out);
  if (batch == 0) return;
  LOWBIT_EXPECTS(*cursor >= 0, "batch cursor is negative (" + std::to_string(*cursor) + ")");
  const std::int64_t first = *cursor * batch;
  for (std::int64_t r = 0; r < batch; ++r) {
    const std::int64_t position = first + r;
    if (perm != nullptr && position < n) {
      LOWBIT_EXPECTS(perm[position] >= 0 && perm[position] < n,
                     "perm[" + std::to_string(position) + "] = " +
                         std::to_string(perm[position]) + " is not an example index");
    }
  }
  for (std::int64_t r = 0; r < batch; ++r) {
    const std::int64_t e = batch_example(first + r, n, perm);
    float* row = x + r * example_size;
    if (e < 0) {
      std::fill(row, row + example_size, 0.0f);
      labels_out[r] = -1;
      continue;
    }
    const std::uint8_t* pixels = images + e * example_size;
    for (std::int64_t j = 0; j < example_size; ++j) row[j] = normalize_pixel(pixels[j], norm);
    labels_out[r] = labels[e];
  }
}

void advance_cursor(std::int64_t* cursor) {
  detail::check_advance_cursor(cursor);
  *cursor += 1;
}

}  // namespace lowbit::ref
