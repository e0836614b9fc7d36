// IDX loading (DESIGN.md §5 Data): raw and gzipped round trips, limits, one
// clear error per malformed file, MNIST directories, and the installed
// Fashion-MNIST when present.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <numeric>
#include <string>
#include <tuple>
#include <vector>

#include "lowbit/data.hpp"
#include "lowbit/error.hpp"
#include "test_util.hpp"

namespace lowbit {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;
using Bytes = std::vector<std::uint8_t>;

constexpr std::uint32_t kImagesMagic = 0x00000803;
constexpr std::uint32_t kLabelsMagic = 0x00000801;

using test::idx_file;

// Three 2x4 images whose pixels differ, and their labels.
Bytes pixels(std::size_t n = 24) {
  Bytes p(n);
  for (std::size_t i = 0; i < n; ++i) p[i] = static_cast<std::uint8_t>(i * 37 + 11);
  return p;
}
const Bytes kLabels = {0, 9, 5};
Bytes valid_images() { return idx_file(kImagesMagic, {3, 2, 4}, pixels()); }
Bytes valid_labels() { return idx_file(kLabelsMagic, {3}, kLabels); }

template <class F>
std::string error_of(F&& load) {
  try {
    load();
  } catch (const Error& e) {
    return e.what();
  }
  return "no lowbit::Error was thrown";
}

// Each test gets its own directory: several builds may run the suite at once.
class IdxTest : public ::testing::Test {
 protected:

  std::string write_raw(const std::string& name, const Bytes& bytes) const {
    const std::string path = (dir_ / name).string();
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()),
              static_cast<std::streamsize>(bytes.size()));
    EXPECT_TRUE(out.good()) << path;
    return path;
  }

  std::string write_gz(const std::string& name, const Bytes& bytes) const {
    const std::string path = (dir_ / name).string();
    gzFile file = gzopen(path.c_str(), "wb");
    EXPECT_NE(file, nullptr) << path;
    if (file == nullptr) return path;
    if (!bytes.empty()) {
      EXPECT_EQ(gzwrite(file, bytes.data(), static_cast<unsigned>(bytes.size())),
                static_cast<int>(bytes.size()));
    }
    EXPECT_EQ(gzclose(file), Z_OK);
    return path;
  }

  std::string write(const std::string& name, const Bytes& bytes, bool gzipped) const {
    return gzipped ? write_gz(name + ".gz", bytes) : write_raw(name, bytes);
  }

  static Bytes read_back(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return Bytes(std::istreambuf_iterator<char>(in), {});
  }

  test::ScratchDirectory scratch_;
  fs::path dir_ = scratch_.path();
};

void expect_valid_set(const Dataset& set) {
  EXPECT_EQ(set.count, 3);
  EXPECT_EQ(set.rows, 2);
  EXPECT_EQ(set.cols, 4);
  EXPECT_EQ(set.example_size(), 8);
  EXPECT_EQ(set.images, pixels());
  EXPECT_EQ(set.labels, kLabels);
}

TEST_F(IdxTest, RoundTripRaw) {
  expect_valid_set(
      load_idx_dataset(write_raw("i", valid_images()), write_raw("l", valid_labels())));
}

TEST_F(IdxTest, RoundTripGzip) {
  expect_valid_set(
      load_idx_dataset(write_gz("i.gz", valid_images()), write_gz("l.gz", valid_labels())));
}

TEST_F(IdxTest, RoundTripMixed) {
  expect_valid_set(
      load_idx_dataset(write_gz("i.gz", valid_images()), write_raw("l", valid_labels())));
}

TEST_F(IdxTest, LimitKeepsTheFirstExamples) {
  const std::string images = write_raw("i", valid_images());
  const std::string labels = write_gz("l.gz", valid_labels());
  const Dataset two = load_idx_dataset(images, labels, 2);
  EXPECT_EQ(two.count, 2);
  EXPECT_EQ(two.rows, 2);
  EXPECT_EQ(two.cols, 4);
  EXPECT_EQ(two.images, pixels(16));
  EXPECT_EQ(two.labels, (Bytes{0, 9}));
  expect_valid_set(load_idx_dataset(images, labels, 3));
  expect_valid_set(load_idx_dataset(images, labels, 100));
}

TEST_F(IdxTest, NegativeLimitIsAnError) {
  const std::string images = write_raw("i", valid_images());
  const std::string labels = write_raw("l", valid_labels());
  EXPECT_THAT(error_of([&] { load_idx_dataset(images, labels, -1); }),
              AllOf(HasSubstr("limit"), HasSubstr("-1")));
}

TEST_F(IdxTest, LimitStillValidatesTheWholeFile) {
  const std::string images = write_raw("i", valid_images());
  const std::string labels = write_raw("l", idx_file(kLabelsMagic, {3}, {0, 1, 10}));
  EXPECT_THAT(error_of([&] { load_idx_dataset(images, labels, 1); }),
              AllOf(HasSubstr(labels), HasSubstr("label 10 of example 2")));
}

TEST_F(IdxTest, CountMismatchNamesBothFiles) {
  const std::string images = write_raw("i", valid_images());
  const std::string labels = write_raw("l", idx_file(kLabelsMagic, {2}, {0, 9}));
  EXPECT_THAT(error_of([&] { load_idx_dataset(images, labels); }),
              AllOf(HasSubstr(images), HasSubstr(labels), HasSubstr("2 labels"),
                    HasSubstr("3 images"), HasSubstr("count mismatch")));
}

TEST_F(IdxTest, MissingFileIsAnError) {
  const std::string images = (dir_ / "absent").string();
  const std::string labels = write_raw("l", valid_labels());
  EXPECT_THAT(error_of([&] { load_idx_dataset(images, labels); }),
              AllOf(HasSubstr(images), HasSubstr("cannot open"), HasSubstr("No such file")));
}

TEST_F(IdxTest, DirectoryIsNotAFile) {
  const std::string labels = write_raw("l", valid_labels());
  EXPECT_THAT(error_of([&] { load_idx_dataset(dir_.string(), labels); }),
              AllOf(HasSubstr(dir_.string()), HasSubstr("read failed")));
}

// The deflate data decodes, but the CRC-32 in the trailer no longer matches.
TEST_F(IdxTest, CorruptGzipChecksum) {
  const std::string images = write_gz("i.gz", valid_images());
  Bytes bytes = read_back(images);
  ASSERT_GT(bytes.size(), 8u);
  bytes[bytes.size() - 8] ^= 0x01;
  write_raw("i.gz", bytes);
  const std::string labels = write_raw("l", valid_labels());
  EXPECT_THAT(error_of([&] { load_idx_dataset(images, labels); }),
              AllOf(HasSubstr(images), HasSubstr("corrupt gzip stream")));
}

TEST_F(IdxTest, CorruptGzipHeader) {
  const std::string labels = write_gz("l.gz", valid_labels());
  Bytes bytes = read_back(labels);
  bytes[2] = 9;  // compression method: only 8 (deflate) exists
  write_raw("l.gz", bytes);
  const std::string images = write_raw("i", valid_images());
  EXPECT_THAT(error_of([&] { load_idx_dataset(images, labels); }),
              AllOf(HasSubstr(labels), HasSubstr("corrupt gzip stream")));
}

TEST_F(IdxTest, TruncatedGzipStream) {
  const std::string images = write_gz("i.gz", valid_images());
  Bytes bytes = read_back(images);
  bytes.resize(bytes.size() / 2);
  write_raw("i.gz", bytes);
  const std::string labels = write_raw("l", valid_labels());
  EXPECT_THAT(error_of([&] { load_idx_dataset(images, labels); }),
              AllOf(HasSubstr(images), HasSubstr("corrupt gzip stream")));
}

// One malformed file (the other one valid), raw and gzipped: the error names
// that file and the problem.
struct BadFile {
  const char* name;
  bool is_labels;  // which of the two files is malformed
  Bytes bytes;
  const char* problem;
};

Bytes with_extra(Bytes b, std::uint8_t extra) {
  b.push_back(extra);
  return b;
}
Bytes first_bytes(Bytes b, std::size_t n) {
  b.resize(n);
  return b;
}
Bytes without_last(Bytes b) { return first_bytes(b, b.size() - 1); }

const BadFile kBadFiles[] = {
    {"EmptyImages", false, {}, "empty file"},
    {"EmptyLabels", true, {}, "empty file"},
    {"BadMagicByteOrder", false, idx_file(0x03080000, {3, 2, 4}, pixels()), "bad magic 0x03080000"},
    {"BadMagicLabels", true, idx_file(0x12340801, {3}, kLabels), "bad magic 0x12340801"},
    {"FloatElements", false, idx_file(0x00000D03, {3, 2, 4}, pixels()), "not unsigned byte"},
    {"LabelsAsImages", false, valid_labels(), "wrong rank 1"},
    {"ImagesAsLabels", true, valid_images(), "wrong rank 3"},
    {"TruncatedMagic", false, {0, 0, 8}, "truncated header"},
    {"TruncatedDimensions", false, first_bytes(valid_images(), 14), "truncated header"},
    {"TruncatedLabelHeader", true, first_bytes(valid_labels(), 6), "truncated header"},
    {"ZeroCount", false, idx_file(kImagesMagic, {0, 2, 4}, {}), "dimension 0 is zero"},
    {"ZeroColumns", false, idx_file(kImagesMagic, {3, 2, 0}, {}), "dimension 2 is zero"},
    {"ZeroLabels", true, idx_file(kLabelsMagic, {0}, {}), "dimension 0 is zero"},
    {"DimensionsOverflowInt64", false,
     idx_file(kImagesMagic, {0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF}, pixels()), "dimension overflow"},
    {"DimensionsOver16GiB", false, idx_file(kImagesMagic, {65536, 512, 513}, pixels()),
     "dimension overflow"},
    // Exactly 2^34 bytes passes the size check and fails on what is there.
    {"DimensionsAt16GiB", false, idx_file(kImagesMagic, {65536, 512, 512}, pixels()),
     "truncated payload: the dimensions promise 17179869184 bytes, the file holds 24"},
    {"TruncatedImagePayload", false, without_last(valid_images()), "truncated payload"},
    {"TruncatedLabelPayload", true, without_last(valid_labels()), "truncated payload"},
    {"TrailingImageBytes", false, with_extra(valid_images(), 0),
     "trailing bytes: 1 after the 24-byte payload"},
    {"TrailingLabelBytes", true, with_extra(with_extra(valid_labels(), 1), 2),
     "trailing bytes: 2 after the 3-byte payload"},
    {"CountMismatch", true, idx_file(kLabelsMagic, {4}, {1, 2, 3, 4}), "count mismatch"},
    {"LabelTen", true, idx_file(kLabelsMagic, {3}, {0, 10, 5}), "label 10 of example 1"},
    {"Label255", true, idx_file(kLabelsMagic, {3}, {0, 1, 255}), "label 255 of example 2"},
};

class IdxBadFile : public IdxTest,
                   public ::testing::WithParamInterface<std::tuple<BadFile, bool>> {};

TEST_P(IdxBadFile, IsRejectedNamingFileAndProblem) {
  const auto& [bad, gzipped] = GetParam();
  const std::string images = write("i", bad.is_labels ? valid_images() : bad.bytes, gzipped);
  const std::string labels = write("l", bad.is_labels ? bad.bytes : valid_labels(), gzipped);
  EXPECT_THAT(error_of([&] { load_idx_dataset(images, labels); }),
              AllOf(HasSubstr(bad.is_labels ? labels : images), HasSubstr(bad.problem)));
}

INSTANTIATE_TEST_SUITE_P(Idx, IdxBadFile,
                         ::testing::Combine(::testing::ValuesIn(kBadFiles), ::testing::Bool()),
                         [](const auto& info) {
                           return std::string(std::get<0>(info.param).name) +
                                  (std::get<1>(info.param) ? "Gzip" : "Raw");
                         });

class IdxDirectory : public IdxTest {
 protected:
  void write_split(const std::string& prefix, const Bytes& images, const Bytes& labels,
                   bool gzipped) const {
    write(prefix + "-images-idx3-ubyte", images, gzipped);
    write(prefix + "-labels-idx1-ubyte", labels, gzipped);
  }
};

TEST_F(IdxDirectory, LoadsRawAndGzippedSplits) {
  write_split("train", valid_images(), valid_labels(), false);
  write_split("t10k", idx_file(kImagesMagic, {2, 2, 4}, pixels(16)),
              idx_file(kLabelsMagic, {2}, {7, 8}), true);
  const DatasetSplits splits = load_mnist_directory(dir_.string());
  expect_valid_set(splits.train);
  EXPECT_EQ(splits.test.count, 2);
  EXPECT_EQ(splits.test.labels, (Bytes{7, 8}));

  const DatasetSplits limited = load_mnist_directory(dir_.string(), 1, 1);
  EXPECT_EQ(limited.train.count, 1);
  EXPECT_EQ(limited.train.labels, (Bytes{0}));
  EXPECT_EQ(limited.test.count, 1);
  EXPECT_EQ(limited.test.labels, (Bytes{7}));
}

TEST_F(IdxDirectory, RawWinsOverGzip) {
  write_split("train", valid_images(), valid_labels(), false);
  write_split("train", valid_images(), idx_file(kLabelsMagic, {3}, {1, 1, 1}), true);
  write_split("t10k", valid_images(), valid_labels(), true);
  write("t10k-labels-idx1-ubyte", idx_file(kLabelsMagic, {3}, {4, 4, 4}), false);
  const DatasetSplits splits = load_mnist_directory(dir_.string());
  EXPECT_EQ(splits.train.labels, kLabels);
  EXPECT_EQ(splits.test.labels, (Bytes{4, 4, 4}));
}

TEST_F(IdxDirectory, MissingFileListsThePathsTriedAndTheFix) {
  write_split("train", valid_images(), valid_labels(), true);
  const std::string tried = (dir_ / "t10k-images-idx3-ubyte").string();
  EXPECT_THAT(error_of([&] { load_mnist_directory(dir_.string()); }),
              AllOf(HasSubstr(tried + " and " + tried + ".gz"),
                    HasSubstr("apt-get install dataset-fashion-mnist"), HasSubstr("--data DIR")));
}

TEST_F(IdxDirectory, TestSplitAloneNeedsOnlyTheTestFiles) {
  write_split("t10k", valid_images(), valid_labels(), true);
  const Dataset test = load_mnist_test_split(dir_.string(), 2);
  EXPECT_EQ(test.count, 2);
  EXPECT_EQ(test.labels, (Bytes{0, 9}));
  EXPECT_EQ(test.images_path, (dir_ / "t10k-images-idx3-ubyte.gz").string());
  EXPECT_THAT(error_of([&] { load_mnist_directory(dir_.string()); }),
              HasSubstr("train-images-idx3-ubyte"));
  EXPECT_THAT(error_of([&] { load_mnist_test_split(dir_.string(), -1); }), HasSubstr("-1"));
}

TEST_F(IdxDirectory, NegativeLimitIsAnError) {
  write_split("train", valid_images(), valid_labels(), false);
  write_split("t10k", valid_images(), valid_labels(), false);
  EXPECT_THAT(error_of([&] { load_mnist_directory(dir_.string(), 0, -5); }), HasSubstr("-5"));
}

std::array<std::int64_t, 10> histogram(const Bytes& labels) {
  std::array<std::int64_t, 10> counts{};
  for (const std::uint8_t label : labels) ++counts.at(label);
  return counts;
}

std::uint64_t pixel_sum(const Bytes& images) {
  return std::accumulate(images.begin(), images.end(), std::uint64_t{0});
}

// Facts about Fashion-MNIST, counted independently (Python's gzip module).
TEST(IdxFashionMnist, LoadsTheInstalledDataset) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  const DatasetSplits splits = load_mnist_directory(test::fashion_mnist_dir());
  const Dataset& train = splits.train;
  const Dataset& test = splits.test;
  EXPECT_EQ(train.count, 60000);
  EXPECT_EQ(test.count, 10000);
  for (const Dataset* set : {&train, &test}) {
    EXPECT_EQ(set->rows, 28);
    EXPECT_EQ(set->cols, 28);
    EXPECT_EQ(set->images.size(), static_cast<std::size_t>(set->count * 28 * 28));
    EXPECT_EQ(set->labels.size(), static_cast<std::size_t>(set->count));
  }
  std::array<std::int64_t, 10> train_counts;
  std::array<std::int64_t, 10> test_counts;
  train_counts.fill(6000);
  test_counts.fill(1000);
  EXPECT_EQ(histogram(train.labels), train_counts);
  EXPECT_EQ(histogram(test.labels), test_counts);
  EXPECT_EQ(Bytes(train.labels.begin(), train.labels.begin() + 10),
            (Bytes{9, 0, 0, 3, 0, 2, 7, 2, 5, 5}));
  EXPECT_EQ(Bytes(test.labels.begin(), test.labels.begin() + 10),
            (Bytes{9, 2, 1, 1, 6, 1, 4, 6, 5, 7}));
  // The training mean is the 0.2860 that the trainer normalises by.
  EXPECT_EQ(pixel_sum(train.images), 3431114169u);
  EXPECT_EQ(pixel_sum(test.images), 573469082u);
  EXPECT_EQ(pixel_sum(Bytes(train.images.begin(), train.images.begin() + 784)), 76247u);

  const DatasetSplits limited = load_mnist_directory(test::fashion_mnist_dir(), 100, 10);
  EXPECT_EQ(limited.train.count, 100);
  EXPECT_EQ(limited.test.count, 10);
  ASSERT_EQ(limited.train.images.size(), 100u * 784u);
  EXPECT_TRUE(
      std::equal(limited.train.images.begin(), limited.train.images.end(), train.images.begin()));
}

}  // namespace
}  // namespace lowbit
