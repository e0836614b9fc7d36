// Host helpers of the CPU reference: walking a layout channel by channel and
// writing bit-packed masks.
#pragma once

#include <cstdint>
#include <cstring>

#include "lowbit/types.hpp"

namespace lowbit::detail {

/// Calls f(c, begin, end) for each contiguous run [begin, end) of channel c.
template <class F>
void for_each_channel_run(const ChannelLayout& layout, F f) {
  for (std::int64_t row = 0; row < layout.outer * layout.channels; ++row)
    f(row % layout.channels, row * layout.inner, (row + 1) * layout.inner);
}

/// Writes mask bits (one or two planes); a null mask makes it a no-op.
class MaskWriter {
 public:
  MaskWriter(std::uint32_t* words, MaskFormat format, std::int64_t n)
      : words_(words), sides_(format == MaskFormat::sides), plane_words_((n + 31) / 32) {
    if (words_ != nullptr)
      std::memset(words_, 0, sizeof(std::uint32_t) * mask_words(n, format));
  }
  /// bit1 (plane 1) is ignored for MaskFormat::pass.
  void set(std::int64_t i, bool bit0, bool bit1 = false) {
    if (words_ == nullptr) return;
    const std::uint32_t bit = 1u << (i & 31);
    if (bit0) words_[i >> 5] |= bit;
    if (sides_ && bit1) words_[plane_words_ + (i >> 5)] |= bit;
  }

 private:
  std::uint32_t* words_;
  bool sides_;
  std::int64_t plane_words_;
};

/// Adds to a ClipCount when one is given (the reference's counterpart of the
/// kernels' per-warp counts).
class ClipCounter {
 public:
  explicit ClipCounter(ClipCount* count) : count_(count) {}
  void add(bool clipped) {
    if (count_ == nullptr) return;
    ++count_->quantized;
    if (clipped) ++count_->clipped;
  }

 private:
  ClipCount* count_;
};

/// Bit i of mask plane `plane` (n elements per plane).
inline bool mask_bit(const std::uint32_t* words, std::int64_t n, int plane, std::int64_t i) {
  return (words[plane * ((n + 31) / 32) + (i >> 5)] >> (i & 31)) & 1u;
}

}  // namespace lowbit::detail
