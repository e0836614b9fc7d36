// CPU reference of pack.cu.
#include "checks.hpp"
#include "lowbit/ref.hpp"

namespace lowbit::ref {

void pack_codes(const std::uint8_t* codes, std::int64_t n, int bits, std::uint8_t* packed) {
  detail::check_packing(codes, packed, n, bits);
  const int per = 8 / bits;
  const unsigned code_mask = (1u << bits) - 1u;
  for (std::int64_t b = 0; b < packed_bytes(n, bits); ++b) {
    unsigned v = 0;
    for (int s = 0; s < per && b * per + s < n; ++s)
      v |= (codes[b * per + s] & code_mask) << (s * bits);
    packed[b] = static_cast<std::uint8_t>(v);
  }
}

void unpack_codes(const std::uint8_t* packed, std::int64_t n, int bits, std::uint8_t* codes) {
  detail::check_packing(codes, packed, n, bits);
  const int per = 8 / bits;
  const unsigned code_mask = (1u << bits) - 1u;
  for (std::int64_t i = 0; i < n; ++i)
    codes[i] = static_cast<std::uint8_t>((packed[i / per] >> ((i % per) * bits)) & code_mask);
}

}  // namespace lowbit::ref
