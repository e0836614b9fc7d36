// Packing of 2/4/8-bit codes (DESIGN.md §2.5): first element in the low bits
// (ONNX / torch.quint4x2 order), only the low `bits` bits stored, and
// unpack(pack(q)) == q. The GPU kernels must equal the reference byte for byte.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "lowbit/cuda.hpp"
#include "lowbit/ref.hpp"
#include "lowbit/types.hpp"
#include "test_util.hpp"

namespace {

using lowbit::packed_bytes;
using lowbit::test::DeviceBuffer;
using lowbit::test::same_bits;
using Bytes = std::vector<std::uint8_t>;

constexpr std::uint8_t kSentinel = 0xA5;

Bytes pack(const Bytes& codes, int bits) {
  Bytes packed(static_cast<std::size_t>(packed_bytes(static_cast<std::int64_t>(codes.size()), bits)));
  lowbit::ref::pack_codes(codes.data(), static_cast<std::int64_t>(codes.size()), bits,
                          packed.data());
  return packed;
}

Bytes unpack(const Bytes& packed, std::int64_t n, int bits) {
  Bytes codes(static_cast<std::size_t>(n));
  lowbit::ref::unpack_codes(packed.data(), n, bits, codes.data());
  return codes;
}

// Codes 0, 1, ..., 2^bits - 1, 0, 1, ... so every value occurs at every slot.
Bytes cycling_codes(std::int64_t n, int bits, int offset) {
  Bytes codes(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i)
    codes[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>((i + offset) % (1 << bits));
  return codes;
}

Bytes random_codes(std::int64_t n, int bits, std::uint32_t seed) {
  std::mt19937 rng(seed);
  Bytes codes(static_cast<std::size_t>(n));
  for (auto& c : codes) c = static_cast<std::uint8_t>(rng() % (1u << bits));
  return codes;
}

// packed_bytes rounds up to whole bytes.
TEST(Pack, PackedBytesRoundsUp) {
  EXPECT_EQ(packed_bytes(0, 4), 0);
  EXPECT_EQ(packed_bytes(1, 4), 1);
  EXPECT_EQ(packed_bytes(3, 4), 2);
  EXPECT_EQ(packed_bytes(5, 2), 2);
  EXPECT_EQ(packed_bytes(8, 2), 2);
  EXPECT_EQ(packed_bytes(7, 8), 7);
}

// 4-bit: element 0 in the low nibble; an odd tail leaves the high nibble 0.
TEST(Pack, FourBitFirstElementInLowNibble) {
  EXPECT_EQ(pack({1, 2, 3}, 4), (Bytes{0x21, 0x03}));
  EXPECT_EQ(pack({0xF, 0x0, 0x0, 0xF}, 4), (Bytes{0x0F, 0xF0}));
}

// 2-bit: element k of a byte sits at bits 2k..2k+1.
TEST(Pack, TwoBitFirstElementInLowBits) {
  EXPECT_EQ(pack({1, 2, 3, 0, 1}, 2), (Bytes{0x39, 0x01}));
  EXPECT_EQ(pack({3, 0, 0, 0}, 2), (Bytes{0x03}));
  EXPECT_EQ(pack({0, 0, 0, 3}, 2), (Bytes{0xC0}));
}

// 8-bit packing is the identity.
TEST(Pack, EightBitIsIdentity) {
  const Bytes codes{0x00, 0x7F, 0x80, 0xFF, 0x12};
  EXPECT_EQ(pack(codes, 8), codes);
  EXPECT_EQ(unpack(codes, 5, 8), codes);
}

// Unpacking reads the same order back: 0x21 0x03 -> 1 2 3.
TEST(Pack, UnpackExplicitBytes) {
  EXPECT_EQ(unpack({0x21, 0x03}, 3, 4), (Bytes{1, 2, 3}));
  EXPECT_EQ(unpack({0x39, 0x01}, 5, 2), (Bytes{1, 2, 3, 0, 1}));
}

// Only the low `bits` bits of a code are stored; the rest never leak into
// a neighbour.
TEST(Pack, OnlyLowBitsAreStored) {
  EXPECT_EQ(pack({0x1F}, 4), (Bytes{0x0F}));
  EXPECT_EQ(pack({0x1F, 0x10}, 4), (Bytes{0x0F}));
  EXPECT_EQ(pack({0xFF, 0x04, 0x00, 0x00}, 2), (Bytes{0x03}));
  EXPECT_EQ(unpack(pack({0xFE, 0x13, 0x07}, 4), 3, 4), (Bytes{0xE, 0x3, 0x7}));
}

// unpack(pack(q)) == q for every code value in every slot, at every width,
// for n = 1..37 (tails of every length), touching exactly the bytes it owns.
TEST(Pack, RoundTripEveryCodeAndLength) {
  for (int bits : {2, 4, 8}) {
    for (std::int64_t n = 1; n <= 37; ++n) {
      for (int offset = 0; offset < (1 << bits); offset += bits == 8 ? 37 : 1) {
        SCOPED_TRACE(::testing::Message() << "bits " << bits << " n " << n << " offset " << offset);
        const Bytes codes = cycling_codes(n, bits, offset);
        const std::int64_t bytes = packed_bytes(n, bits);
        Bytes packed(static_cast<std::size_t>(bytes + 2), kSentinel);
        lowbit::ref::pack_codes(codes.data(), n, bits, packed.data());
        EXPECT_EQ(packed[static_cast<std::size_t>(bytes)], kSentinel) << "wrote past the end";
        Bytes back(static_cast<std::size_t>(n + 2), kSentinel);
        lowbit::ref::unpack_codes(packed.data(), n, bits, back.data());
        EXPECT_EQ(back[static_cast<std::size_t>(n)], kSentinel) << "wrote past the end";
        back.resize(static_cast<std::size_t>(n));
        ASSERT_TRUE(same_bits(codes, back));
      }
    }
  }
}

// The padding bits of a partial last byte are zero (deterministic output).
TEST(Pack, TailPaddingIsZero) {
  for (int bits : {2, 4}) {
    const int per = 8 / bits;
    for (std::int64_t n = 1; n < per; ++n) {
      const Bytes packed = pack(Bytes(static_cast<std::size_t>(n), 0xFF), bits);
      ASSERT_EQ(packed.size(), 1u);
      EXPECT_EQ(static_cast<unsigned>(packed[0]), (1u << (n * bits)) - 1u) << "bits " << bits << " n " << n;
    }
  }
}

// cuda::pack_codes / unpack_codes equal the reference byte for byte.
TEST(GpuPack, MatchesReference) {
  LOWBIT_REQUIRE_GPU();
  for (int bits : {2, 4, 8}) {
    for (std::int64_t n : {std::int64_t{1}, std::int64_t{3}, std::int64_t{37}, std::int64_t{1001},
                           std::int64_t{65537}, std::int64_t{1000003}}) {
      SCOPED_TRACE(::testing::Message() << "bits " << bits << " n " << n);
      const Bytes codes = random_codes(n, bits, static_cast<std::uint32_t>(n * 16 + bits));
      const Bytes expected = pack(codes, bits);

      DeviceBuffer<std::uint8_t> d_codes(codes);
      DeviceBuffer<std::uint8_t> d_packed(Bytes(expected.size(), kSentinel));
      lowbit::cuda::pack_codes(d_codes.data(), n, bits, d_packed.data(), nullptr);
      ASSERT_TRUE(same_bits(expected, d_packed.download()));

      DeviceBuffer<std::uint8_t> d_back(Bytes(codes.size(), kSentinel));
      lowbit::cuda::unpack_codes(d_packed.data(), n, bits, d_back.data(), nullptr);
      ASSERT_TRUE(same_bits(codes, d_back.download()));
    }
  }
}

// The GPU also keeps only the low bits and leaves the padding at zero.
TEST(GpuPack, MasksHighBits) {
  LOWBIT_REQUIRE_GPU();
  const Bytes codes = random_codes(1001, 8, 7);  // full bytes: high bits set
  for (int bits : {2, 4}) {
    DeviceBuffer<std::uint8_t> d_codes(codes);
    DeviceBuffer<std::uint8_t> d_packed(static_cast<std::size_t>(packed_bytes(1001, bits)));
    lowbit::cuda::pack_codes(d_codes.data(), 1001, bits, d_packed.data(), nullptr);
    EXPECT_TRUE(same_bits(pack(codes, bits), d_packed.download())) << "bits " << bits;
  }
}

}  // namespace
