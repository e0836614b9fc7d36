// safetensors checkpoints: bit-identical round trips, a layout that other
// safetensors readers accept, atomic saves, and a clear lowbit::Error for every
// truncated, bit-flipped or malformed file.
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "lowbit/error.hpp"
#include "lowbit/safetensors.hpp"
#include "test_util.hpp"

namespace lowbit::safetensors {
namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<std::uint8_t>;

template <class T>
Bytes bytes_of(const std::vector<T>& values) {
  Bytes bytes(values.size() * sizeof(T));
  if (!bytes.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
  return bytes;
}

Bytes read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const Bytes& bytes) {
  // A new file rather than a truncated one: ext4 flushes a file rewritten
  // through truncation on close, which made the corruption tests take seconds.
  fs::remove(path);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

/// Bitwise CRC-32 (reflected polynomial 0xEDB88320, as zlib, gzip and PNG),
/// written independently of the library's zlib call.
std::uint32_t reference_crc32(const Bytes& bytes) {
  std::uint32_t crc = 0xFFFFFFFFu;
  for (const std::uint8_t byte : bytes) {
    crc ^= byte;
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

std::string hex8(std::uint32_t value) {
  char text[9];
  std::snprintf(text, sizeof text, "%08x", static_cast<unsigned>(value));
  return text;
}

void append_le64(Bytes& bytes, std::uint64_t value) {
  for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<std::uint8_t>(value >> (8 * i)));
}

/// `size` bytes that differ from their neighbours.
Bytes pattern(std::size_t size) {
  Bytes bytes(size);
  for (std::size_t i = 0; i < size; ++i) bytes[i] = static_cast<std::uint8_t>(i * 37 + 1);
  return bytes;
}

/// A file of `header` (unpadded) followed by pattern(data_bytes).
Bytes raw_file(const std::string& header, std::size_t data_bytes) {
  Bytes bytes;
  append_le64(bytes, header.size());
  bytes.insert(bytes.end(), header.begin(), header.end());
  const Bytes data = pattern(data_bytes);
  bytes.insert(bytes.end(), data.begin(), data.end());
  return bytes;
}

/// What save() writes first: the metadata object with the checksum as its first key.
const std::string kChecksumPrefix = std::string("{\"__metadata__\":{\"") + kChecksumKey + "\":\"";

/// A file laid out as save() lays it out, from the header text that follows
/// the checksum entry, with a correct checksum unless `digits` is given; so
/// load() gets past the checksum to the problem under test.
Bytes crafted_file(const std::string& rest, std::size_t data_bytes, const std::string& digits = "") {
  std::string header = kChecksumPrefix + "00000000\"" + rest;
  header.append((8 - header.size() % 8) % 8, ' ');
  Bytes bytes = raw_file(header, data_bytes);
  const std::string checksum = digits.empty() ? hex8(reference_crc32(bytes)) : digits;
  std::copy(checksum.begin(), checksum.end(), bytes.begin() + 8 + kChecksumPrefix.size());
  return bytes;
}

/// One tensor "w" of two floats, a valid file when given 8 data bytes.
const std::string kOneTensor = R"(},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";

/// Every dtype, a scalar, empty tensors (one sharing its offset with the next
/// tensor), special float values, and names in no sorted order.
File sample_file() {
  std::vector<float> weights = test::random_values(6, 7);
  weights[0] = -0.0f;
  weights[1] = std::numeric_limits<float>::quiet_NaN();
  weights[2] = std::numeric_limits<float>::denorm_min();
  File file;
  file.tensors.push_back({"nothing", DType::U8, {0}, {}});
  file.tensors.push_back({"conv1.weight", DType::F32, {2, 3}, bytes_of(weights)});
  file.tensors.push_back({"step", DType::I64, {}, bytes_of(std::vector<std::int64_t>{-1234567890123})});
  file.tensors.push_back({"empty", DType::F32, {0, 4}, {}});
  file.tensors.push_back({"adam.v", DType::F64, {3}, bytes_of(std::vector<double>{1e-300, -0.0, 3.5})});
  file.tensors.push_back(
      {"labels", DType::I32, {2, 2},
       bytes_of(std::vector<std::int32_t>{-1, 0, std::numeric_limits<std::int32_t>::max(),
                                          std::numeric_limits<std::int32_t>::min()})});
  file.tensors.push_back({"histogram", DType::U8, {5}, {0, 1, 127, 128, 255}});
  file.tensors.push_back({"rng", DType::U32, {2}, bytes_of(std::vector<std::uint32_t>{0xDEADBEEF, 0})});
  file.metadata = {{"config", R"({"bits": 4, "model": "lenet"})"}, {"note", "na\xc3\xafve"}};
  return file;
}

void expect_same_tensors(const File& expected, const File& got) {
  ASSERT_EQ(expected.tensors.size(), got.tensors.size());
  for (std::size_t i = 0; i < expected.tensors.size(); ++i) {
    const Tensor& e = expected.tensors[i];
    const Tensor& g = got.tensors[i];
    EXPECT_EQ(e.name, g.name) << "tensor " << i;
    EXPECT_EQ(e.dtype, g.dtype) << e.name;
    EXPECT_EQ(e.shape, g.shape) << e.name;
    EXPECT_EQ(e.data, g.data) << e.name;
  }
}

/// load(path) throws a lowbit::Error that names the file and contains `problem`.
::testing::AssertionResult load_fails(const std::string& path, const std::string& problem = "") {
  try {
    load(path);
  } catch (const Error& e) {
    const std::string what = e.what();
    if (what.find(path + ": ") != std::string::npos && what.find(problem) != std::string::npos)
      return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "expected \"" << problem << "\", got: " << what;
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "not a lowbit::Error: " << e.what();
  }
  return ::testing::AssertionFailure() << "loaded without an error";
}

/// save(path, file) throws a lowbit::Error that names the file and contains `problem`.
::testing::AssertionResult save_fails(const std::string& path, const File& file,
                                      const std::string& problem) {
  try {
    save(path, file);
  } catch (const Error& e) {
    const std::string what = e.what();
    if (what.find(path + ": ") != std::string::npos && what.find(problem) != std::string::npos)
      return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "expected \"" << problem << "\", got: " << what;
  }
  return ::testing::AssertionFailure() << "saved without an error";
}

/// Each test gets a fresh directory, so that leftover files can be listed.
class SafetensorsTest : public ::testing::Test {
 protected:
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  test::ScratchDirectory scratch_;
  fs::path dir_ = scratch_.path();
};

class SafetensorsRoundTrip : public SafetensorsTest {};
class SafetensorsLayout : public SafetensorsTest {};
class SafetensorsCorruption : public SafetensorsTest {};
class SafetensorsLoadChecks : public SafetensorsTest {};
class SafetensorsAtomicSave : public SafetensorsTest {};
class SafetensorsSaveChecks : public SafetensorsTest {};

TEST(SafetensorsDType, Sizes) {
  EXPECT_EQ(dtype_size(DType::F32), 4u);
  EXPECT_EQ(dtype_size(DType::F64), 8u);
  EXPECT_EQ(dtype_size(DType::I32), 4u);
  EXPECT_EQ(dtype_size(DType::I64), 8u);
  EXPECT_EQ(dtype_size(DType::U8), 1u);
  EXPECT_EQ(dtype_size(DType::U32), 4u);
}

TEST(SafetensorsReferenceCrc, MatchesTheStandardCheckValue) {
  const std::string check = "123456789";
  EXPECT_EQ(reference_crc32(Bytes(check.begin(), check.end())), 0xCBF43926u);
}

TEST_F(SafetensorsRoundTrip, IsBitIdenticalInOrderWithMetadata) {
  const File file = sample_file();
  save(path("a.safetensors"), file);
  File loaded = load(path("a.safetensors"));
  expect_same_tensors(file, loaded);
  ASSERT_EQ(loaded.metadata.count(kChecksumKey), 1u);
  EXPECT_EQ(loaded.metadata[kChecksumKey].size(), 8u);
  loaded.metadata.erase(kChecksumKey);
  EXPECT_EQ(loaded.metadata, file.metadata);
  // Saving what was loaded reproduces the file byte for byte.
  save(path("b.safetensors"), loaded);
  EXPECT_EQ(read_bytes(path("a.safetensors")), read_bytes(path("b.safetensors")));
  EXPECT_EQ(scratch_.names(), (std::vector<std::string>{"a.safetensors", "b.safetensors"}));
}

TEST_F(SafetensorsRoundTrip, NoTensorsAndNoMetadata) {
  save(path("empty.safetensors"), File{});
  const File loaded = load(path("empty.safetensors"));
  EXPECT_TRUE(loaded.tensors.empty());
  EXPECT_EQ(loaded.metadata.size(), 1u);
  EXPECT_EQ(loaded.metadata.count(kChecksumKey), 1u);
}

TEST_F(SafetensorsRoundTrip, RelativePathInTheWorkingDirectory) {
  const fs::path previous = fs::current_path();
  fs::current_path(dir_);
  const File file = sample_file();
  save("relative.safetensors", file);
  const File loaded = load("relative.safetensors");
  fs::current_path(previous);
  expect_same_tensors(file, loaded);
}

TEST_F(SafetensorsLayout, IsPlainSafetensorsWithAChecksumOverTheWholeFile) {
  const File file = sample_file();
  save(path("a.safetensors"), file);
  Bytes bytes = read_bytes(path("a.safetensors"));
  ASSERT_GE(bytes.size(), 8u);
  std::uint64_t header_bytes = 0;
  for (int i = 0; i < 8; ++i) header_bytes |= std::uint64_t{bytes[i]} << (8 * i);
  ASSERT_LE(8 + header_bytes, bytes.size());
  EXPECT_EQ((8 + header_bytes) % 8, 0u) << "the data section must start 8-byte aligned";
  const std::string header(bytes.begin() + 8, bytes.begin() + 8 + header_bytes);
  EXPECT_EQ(header.front(), '{');
  const std::size_t json_end = header.find_last_not_of(' ') + 1;
  EXPECT_EQ(header[json_end - 1], '}');
  EXPECT_LT(header.size() - json_end, 8u) << "padding beyond alignment";

  const auto json = nlohmann::json::parse(header);
  ASSERT_TRUE(json.is_object());
  EXPECT_EQ(json.size(), file.tensors.size() + 1);
  const auto& metadata = json.at("__metadata__");
  ASSERT_TRUE(metadata.is_object());
  EXPECT_EQ(metadata.size(), file.metadata.size() + 1);
  for (const auto& [key, value] : file.metadata) EXPECT_EQ(metadata.at(key), value) << key;
  const std::string checksum = metadata.at(kChecksumKey).get<std::string>();

  const char* names[] = {"F32", "F64", "I32", "I64", "U8", "U32"};
  const std::size_t data_start = 8 + header_bytes;
  std::uint64_t expected_begin = 0;
  for (const Tensor& tensor : file.tensors) {
    const auto& entry = json.at(tensor.name);
    EXPECT_EQ(entry.size(), 3u) << tensor.name;
    EXPECT_EQ(entry.at("dtype"), names[static_cast<int>(tensor.dtype)]) << tensor.name;
    EXPECT_EQ(entry.at("shape").get<std::vector<std::int64_t>>(), tensor.shape) << tensor.name;
    const auto offsets = entry.at("data_offsets").get<std::vector<std::uint64_t>>();
    ASSERT_EQ(offsets.size(), 2u) << tensor.name;
    EXPECT_EQ(offsets[0], expected_begin) << tensor.name;
    ASSERT_LE(data_start + offsets[1], bytes.size()) << tensor.name;
    EXPECT_EQ(Bytes(bytes.begin() + data_start + offsets[0], bytes.begin() + data_start + offsets[1]),
              tensor.data)
        << tensor.name;
    expected_begin = offsets[1];
  }
  EXPECT_EQ(data_start + expected_begin, bytes.size()) << "no bytes after the last tensor";

  // The checksum is the first metadata entry and covers every byte of the
  // file, with its own digits read as zeros.
  ASSERT_EQ(header.compare(0, kChecksumPrefix.size(), kChecksumPrefix), 0) << header;
  std::fill_n(bytes.begin() + 8 + kChecksumPrefix.size(), 8, '0');
  EXPECT_EQ(checksum, hex8(reference_crc32(bytes)));
}

TEST_F(SafetensorsCorruption, EveryTruncationFails) {
  save(path("a.safetensors"), sample_file());
  const Bytes bytes = read_bytes(path("a.safetensors"));
  for (std::size_t length = 0; length < bytes.size(); ++length) {
    write_bytes(path("cut.safetensors"), Bytes(bytes.begin(), bytes.begin() + length));
    EXPECT_TRUE(load_fails(path("cut.safetensors"), "truncated")) << "length " << length;
  }
  expect_same_tensors(sample_file(), load(path("a.safetensors")));
}

TEST_F(SafetensorsCorruption, EverySingleBitFlipFails) {
  save(path("a.safetensors"), sample_file());
  const Bytes bytes = read_bytes(path("a.safetensors"));
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      Bytes flipped = bytes;
      flipped[i] ^= static_cast<std::uint8_t>(1u << bit);
      write_bytes(path("flipped.safetensors"), flipped);
      // Past the length and the opening '{', the checksum is what catches it.
      EXPECT_TRUE(load_fails(path("flipped.safetensors"), i > 8 ? "checksum" : ""))
          << "byte " << i << " bit " << bit;
    }
  }
  // A flip in the data is caught by the checksum alone.
  ASSERT_GT(bytes.size(), 8u);
  Bytes flipped = bytes;
  flipped[bytes.size() - 1] ^= 0x10;
  write_bytes(path("flipped.safetensors"), flipped);
  EXPECT_TRUE(load_fails(path("flipped.safetensors"), "checksum mismatch (file is corrupted)"));
}

TEST_F(SafetensorsLoadChecks, CraftedFileLoads) {
  // The helper's files are valid, so the failures below test what they name.
  write_bytes(path("f.safetensors"), crafted_file(kOneTensor, 8));
  const File file = load(path("f.safetensors"));
  ASSERT_EQ(file.tensors.size(), 1u);
  EXPECT_EQ(file.tensors[0].name, "w");
  EXPECT_EQ(file.tensors[0].shape, std::vector<std::int64_t>{2});
  EXPECT_EQ(file.tensors[0].data, pattern(8));
}

TEST_F(SafetensorsLoadChecks, TensorsComeBackInDataOrder) {
  write_bytes(path("f.safetensors"),
              crafted_file(R"(},"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]},)"
                           R"("a":{"dtype":"U8","shape":[2,2],"data_offsets":[0,4]}})",
                           8));
  const File file = load(path("f.safetensors"));
  ASSERT_EQ(file.tensors.size(), 2u);
  EXPECT_EQ(file.tensors[0].name, "a");
  EXPECT_EQ(file.tensors[1].name, "b");
  const Bytes data = pattern(8);
  EXPECT_EQ(file.tensors[0].data, Bytes(data.begin(), data.begin() + 4));
  EXPECT_EQ(file.tensors[1].data, Bytes(data.begin() + 4, data.end()));
}

TEST_F(SafetensorsLoadChecks, MalformedHeadersWithAValidChecksum) {
  struct Case {
    const char* rest;  // header text after the checksum entry
    std::size_t data_bytes;
    const char* problem;
  };
  const Case cases[] = {
      {R"(},"w":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}})", 4, "unsupported dtype \"BF16\""},
      {R"(},"w":{"dtype":3,"shape":[2],"data_offsets":[0,8]}})", 8, "\"dtype\""},
      {R"(},"w":{"shape":[2],"data_offsets":[0,8]}})", 8, "\"dtype\""},
      {R"(},"w":{"dtype":"F32","data_offsets":[0,8]}})", 8, "\"shape\""},
      {R"(},"w":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", 8, "\"shape\""},
      {R"(},"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8, "not an integer in"},
      {R"(},"w":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", 8, "not an integer in"},
      {R"(},"w":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}})", 8, "not an integer in"},
      {R"(},"w":{"dtype":"F32","shape":[9223372036854775808],"data_offsets":[0,8]}})", 8,
       "not an integer in"},
      {R"(},"w":{"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,8]}})", 8,
       "overflows"},
      {R"(},"w":{"dtype":"F32","shape":[2]}})", 8, "data_offsets"},
      {R"(},"w":{"dtype":"F32","shape":[2],"data_offsets":[8]}})", 8, "data_offsets"},
      {R"(},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}})", 8, "data_offsets"},
      {R"(},"w":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", 8, "data_offsets"},
      {R"(},"w":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", 8, "data_offsets"},
      {R"(},"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8, "needs 12"},
      {R"(},"w":{"dtype":"F32","shape":[],"data_offsets":[0,8]}})", 8, "needs 4"},
      {R"(},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"extra":1}})", 8,
       "unknown field \"extra\""},
      {R"(},"w":[0,8]})", 8, "not a JSON object"},
      {R"(},"":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8, "empty name"},
      {R"(},"w":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12, "gap"},
      {R"(},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
       R"("v":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}})",
       16, "gap"},
      {R"(},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
       R"("v":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
       12, "overlaps"},
      {kOneTensor.c_str(), 12, "4 trailing bytes"},
      {kOneTensor.c_str(), 4, "truncated: the tensors need 8 data bytes, file has 4"},
      {R"(},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
       R"("w":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
       16, "repeats the key \"w\""},
      {R"(,"a":"1","a":"2"}})", 0, "repeats the key \"a\""},
      {R"(},"w":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8,
       "repeats the key \"dtype\""},
      {R"(,"epochs":3}})", 0, "metadata entry \"epochs\" is not a string"},
      {R"(},"__metadata__":{}})", 0, "repeats the key \"__metadata__\""},
      {R"(},"w")", 0, "not valid JSON"},
      {"},\"\xff\":1}", 0, "not valid JSON"},
      {"}} x", 0, "not valid JSON"},
  };
  for (const Case& c : cases) {
    write_bytes(path("f.safetensors"), crafted_file(c.rest, c.data_bytes));
    EXPECT_TRUE(load_fails(path("f.safetensors"), c.problem)) << c.rest;
  }
}

TEST_F(SafetensorsLoadChecks, BadChecksums) {
  const struct {
    const char* digits;
    const char* problem;
  } cases[] = {
      {"zzzzzzzz", "not 8 lowercase hex digits"},
      {"ABCDEF01", "not 8 lowercase hex digits"},
      {"12345678", "checksum mismatch (file is corrupted)"},
  };
  for (const auto& c : cases) {
    write_bytes(path("f.safetensors"), crafted_file(kOneTensor, 8, c.digits));
    EXPECT_TRUE(load_fails(path("f.safetensors"), c.problem)) << c.digits;
  }
}

TEST_F(SafetensorsLoadChecks, BadFramesAndHeaders) {
  const std::string w = R"("w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  Bytes huge_length;
  append_le64(huge_length, std::uint64_t{1} << 40);
  Bytes long_header;
  append_le64(long_header, 100);
  long_header.resize(28, ' ');
  const struct {
    Bytes bytes;
    const char* problem;
  } cases[] = {
      {{}, "truncated: 0 bytes"},
      {Bytes(7, 0), "truncated: 7 bytes"},
      {huge_length, "over the 100000000-byte limit"},
      {long_header, "truncated: header says 100 bytes, file has 20"},
      {raw_file("", 0), "does not start with '{'"},
      {raw_file("[]      ", 0), "does not start with '{'"},
      {raw_file(" {}     ", 0), "does not start with '{'"},
      {raw_file("{}", 0), "no \"lowbit.crc32\" checksum"},
      {raw_file("{\"__metadata__\":{\"format\":\"pt\"}," + w + "}", 8),
       "no \"lowbit.crc32\" checksum"},
      {raw_file(R"({"__metadata__":{"a":"b","lowbit.crc32":"00000000"}})", 0),
       "no \"lowbit.crc32\" checksum"},
      {raw_file("{" + w + ",\"__metadata__\":{\"lowbit.crc32\":\"00000000\"}}", 8),
       "no \"lowbit.crc32\" checksum"},
      {raw_file(kChecksumPrefix + "0123456789\"}}", 0), "not 8 lowercase hex digits"},
      {raw_file(kChecksumPrefix + "0123\"}}", 0), "not 8 lowercase hex digits"},
      {raw_file(kChecksumPrefix + "0123", 0), "not 8 lowercase hex digits"},
  };
  for (const auto& c : cases) {
    write_bytes(path("f.safetensors"), c.bytes);
    EXPECT_TRUE(load_fails(path("f.safetensors"), c.problem)) << c.problem;
  }
}

TEST_F(SafetensorsLoadChecks, MissingFileAndDirectory) {
  EXPECT_TRUE(load_fails(path("missing.safetensors"), "cannot open: No such file or directory"));
  fs::create_directory(path("dir.safetensors"));
  EXPECT_TRUE(load_fails(path("dir.safetensors"), "not a regular file"));
}

TEST_F(SafetensorsAtomicSave, ReplacesAnExistingFile) {
  save(path("ckpt.safetensors"), sample_file());
  File second;
  second.tensors.push_back({"only", DType::F32, {1}, bytes_of(std::vector<float>{42.0f})});
  save(path("ckpt.safetensors"), second);
  expect_same_tensors(second, load(path("ckpt.safetensors")));
  EXPECT_EQ(scratch_.names(), std::vector<std::string>{"ckpt.safetensors"});
}

TEST_F(SafetensorsAtomicSave, MissingDirectoryThrowsAndCreatesNothing) {
  const std::string target = path("no_such_dir/ckpt.safetensors");
  EXPECT_TRUE(save_fails(target, sample_file(), "No such file or directory"));
  EXPECT_TRUE(scratch_.names().empty());
}

TEST_F(SafetensorsAtomicSave, PathThatIsADirectoryThrowsAndLeavesNoTempFile) {
  fs::create_directory(path("ckpt.safetensors"));
  EXPECT_TRUE(save_fails(path("ckpt.safetensors"), sample_file(), "is a directory"));
  EXPECT_TRUE(fs::is_directory(path("ckpt.safetensors")));
  EXPECT_TRUE(fs::is_empty(path("ckpt.safetensors")));
  EXPECT_EQ(scratch_.names(), std::vector<std::string>{"ckpt.safetensors"});
}

/// Lowers the file size limit and ignores SIGXFSZ, so that writes past
/// `bytes` fail with EFBIG as on a full disk; restores both when destroyed.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    EXPECT_EQ(::getrlimit(RLIMIT_FSIZE, &saved_), 0);
    previous_handler_ = ::signal(SIGXFSZ, SIG_IGN);
    rlimit lowered = saved_;
    lowered.rlim_cur = bytes;
    EXPECT_EQ(::setrlimit(RLIMIT_FSIZE, &lowered), 0);
  }
  FileSizeLimit(const FileSizeLimit&) = delete;
  FileSizeLimit& operator=(const FileSizeLimit&) = delete;
  ~FileSizeLimit() {
    ::setrlimit(RLIMIT_FSIZE, &saved_);
    ::signal(SIGXFSZ, previous_handler_);
  }

 private:
  rlimit saved_{};
  void (*previous_handler_)(int) = SIG_DFL;
};

TEST_F(SafetensorsAtomicSave, FailedWriteKeepsThePreviousFile) {
  const File first = sample_file();
  save(path("ckpt.safetensors"), first);
  const Bytes before = read_bytes(path("ckpt.safetensors"));
  File big;
  big.tensors.push_back({"w", DType::F32, {16384}, bytes_of(test::random_values(16384, 3))});
  {
    const FileSizeLimit limit(4096);
    EXPECT_TRUE(save_fails(path("ckpt.safetensors"), big, "File too large"));
  }
  EXPECT_EQ(read_bytes(path("ckpt.safetensors")), before);
  expect_same_tensors(first, load(path("ckpt.safetensors")));
  EXPECT_EQ(scratch_.names(), std::vector<std::string>{"ckpt.safetensors"});
}

TEST_F(SafetensorsSaveChecks, BadInputThrowsAndKeepsThePreviousFile) {
  const auto with = [](std::vector<Tensor> tensors) {
    File file;
    file.tensors = std::move(tensors);
    return file;
  };
  const Tensor good{"w", DType::F32, {2}, Bytes(8)};
  File reserved = with({good});
  reserved.metadata[kChecksumKey] = "00000000";
  File bad_utf8 = with({good});
  bad_utf8.metadata["note"] = "\xff";
  const struct {
    File file;
    const char* problem;
  } cases[] = {
      {with({good, good}), "two tensors are named \"w\""},
      {with({{"", DType::F32, {2}, Bytes(8)}}), "empty name"},
      {with({{"__metadata__", DType::F32, {2}, Bytes(8)}}), "\"__metadata__\" is reserved"},
      {with({{"w", DType::F32, {2}, Bytes(7)}}), "has 7 data bytes but shape [2] of F32 needs 8"},
      {with({{"w", DType::F64, {2}, Bytes(8)}}), "needs 16"},
      {with({{"w", DType::U8, {}, Bytes(0)}}), "needs 1"},
      {with({{"w", DType::F32, {-1, 0}, Bytes(0)}}), "negative dimension"},
      {with({{"w", DType::F32, {std::int64_t{1} << 62, 8}, Bytes(0)}}), "overflows"},
      {with({{"\xc3", DType::F32, {2}, Bytes(8)}}), "not valid UTF-8"},
      {reserved, "reserved for the checksum"},
      {bad_utf8, "not valid UTF-8"},
  };
  save(path("ckpt.safetensors"), sample_file());
  const Bytes before = read_bytes(path("ckpt.safetensors"));
  for (const auto& c : cases) {
    EXPECT_TRUE(save_fails(path("ckpt.safetensors"), c.file, c.problem)) << c.problem;
    EXPECT_EQ(read_bytes(path("ckpt.safetensors")), before) << c.problem;
  }
  EXPECT_EQ(scratch_.names(), std::vector<std::string>{"ckpt.safetensors"});
}

}  // namespace
}  // namespace lowbit::safetensors
