// IDX (MNIST format) files, read through zlib so gzipped and raw files load
// alike. Every check names the file, because a bad dataset is a user error.
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "lowbit/data.hpp"
#include "lowbit/error.hpp"

namespace lowbit {
namespace {

// Far above any image dataset, far below what an int64 product or a corrupt
// header could claim: such a header is rejected before anything is allocated.
constexpr std::int64_t kMaxPayloadBytes = std::int64_t{1} << 34;
// gzread takes an unsigned int count; reading in chunks also means a header
// that promises more than the file holds costs no more memory than the file.
constexpr std::size_t kReadChunk = std::size_t{16} << 20;
constexpr std::uint8_t kUnsignedByte = 0x08;

std::string hex32(std::uint32_t value) {
  char text[11];
  std::snprintf(text, sizeof text, "0x%08X", value);
  return text;
}

struct GzCloser {
  void operator()(gzFile file) const { gzclose(file); }
};
using GzFile = std::unique_ptr<gzFile_s, GzCloser>;

class IdxReader {
 public:
  explicit IdxReader(std::string path) : path_(std::move(path)) {
    errno = 0;
    file_.reset(gzopen(path_.c_str(), "rb"));
    LOWBIT_EXPECTS(file_ != nullptr, fail(std::string("cannot open: ") +
                                          (errno != 0 ? std::strerror(errno) : "out of memory")));
    gzbuffer(file_.get(), 1u << 20);
  }

  std::string fail(const std::string& problem) const { return path_ + ": " + problem; }

  // Reads up to n bytes; fewer only at the end of the file.
  std::size_t read(std::uint8_t* into, std::size_t n) {
    const int got = gzread(file_.get(), into, static_cast<unsigned>(n));
    int code = Z_OK;
    std::string message = gzerror(file_.get(), &code);
    if (code == Z_OK) return static_cast<std::size_t>(std::max(got, 0));
    // zlib prefixes its message with the path, which fail() adds already.
    if (message.rfind(path_ + ": ", 0) == 0) message.erase(0, path_.size() + 2);
    throw Error(fail((code == Z_ERRNO ? "read failed: " : "corrupt gzip stream: ") + message),
                __FILE__, __LINE__);
  }

  // The header: magic (0, 0, element type, rank), then rank big-endian
  // uint32 dimensions. Returns the dimensions, each nonzero.
  std::vector<std::int64_t> header(std::uint32_t expected_magic) {
    std::array<std::uint8_t, 4> magic{};
    const std::size_t magic_bytes = read(magic.data(), magic.size());
    LOWBIT_EXPECTS(magic_bytes > 0, fail("empty file"));
    LOWBIT_EXPECTS(magic_bytes == magic.size(),
                   fail("truncated header: " + std::to_string(magic_bytes) +
                        " bytes, the magic alone takes 4"));
    const std::uint32_t found = big_endian(magic.data());
    const std::string expected = hex32(expected_magic);
    LOWBIT_EXPECTS(magic[0] == 0 && magic[1] == 0,
                   fail("bad magic " + hex32(found) + ", expected " + expected));
    LOWBIT_EXPECTS(magic[2] == kUnsignedByte,
                   fail("bad magic " + hex32(found) + ": element type " + std::to_string(magic[2]) +
                        " is not unsigned byte (8), expected " + expected));
    const std::size_t rank = expected_magic & 0xFF;
    LOWBIT_EXPECTS(magic[3] == rank,
                   fail("wrong rank " + std::to_string(magic[3]) + " (magic " + hex32(found) +
                        "), expected " + std::to_string(rank) + " (magic " + expected + ")"));

    std::vector<std::uint8_t> raw(4 * rank);
    const std::size_t dim_bytes = read(raw.data(), raw.size());
    LOWBIT_EXPECTS(dim_bytes == raw.size(),
                   fail("truncated header: " + std::to_string(rank) + " dimensions take " +
                        std::to_string(raw.size()) + " bytes, found " + std::to_string(dim_bytes)));
    std::vector<std::int64_t> dims(rank);
    std::string shape;
    std::int64_t bytes = 1;
    bool too_large = false;
    for (std::size_t d = 0; d < rank; ++d) {
      dims[d] = big_endian(raw.data() + 4 * d);
      LOWBIT_EXPECTS(dims[d] != 0, fail("dimension " + std::to_string(d) + " is zero"));
      shape += (d == 0 ? "" : " x ") + std::to_string(dims[d]);
      // Dividing first keeps the product of up to three 2^32 factors from overflowing.
      too_large = too_large || bytes > kMaxPayloadBytes / dims[d];
      if (!too_large) bytes *= dims[d];
    }
    LOWBIT_EXPECTS(!too_large, fail("dimension overflow: " + shape + " is more than 2^34 (" +
                                    std::to_string(kMaxPayloadBytes) + ") bytes"));
    return dims;
  }

  // The payload must hold exactly `bytes` bytes: no fewer, no trailing ones.
  std::vector<std::uint8_t> payload(std::int64_t bytes) {
    const auto size = static_cast<std::size_t>(bytes);
    std::vector<std::uint8_t> data;
    while (data.size() < size) {
      const std::size_t offset = data.size();
      const std::size_t want = std::min(size - offset, kReadChunk);
      data.resize(offset + want);
      const std::size_t got = read(data.data() + offset, want);
      LOWBIT_EXPECTS(got == want,
                     fail("truncated payload: the dimensions promise " + std::to_string(size) +
                          " bytes, the file holds " + std::to_string(offset + got)));
    }
    std::vector<std::uint8_t> rest(64 << 10);
    std::size_t trailing = 0;
    for (std::size_t got; (got = read(rest.data(), rest.size())) > 0;) trailing += got;
    LOWBIT_EXPECTS(trailing == 0, fail("trailing bytes: " + std::to_string(trailing) +
                                       " after the " + std::to_string(size) + "-byte payload"));
    return data;
  }

 private:
  static std::uint32_t big_endian(const std::uint8_t* p) {
    return std::uint32_t{p[0]} << 24 | std::uint32_t{p[1]} << 16 | std::uint32_t{p[2]} << 8 |
           std::uint32_t{p[3]};
  }

  std::string path_;
  GzFile file_;
};

void expect_limit(std::int64_t limit) {
  LOWBIT_EXPECTS(limit >= 0,
                 "the example limit must be >= 0 (0 keeps all), got " + std::to_string(limit));
}

// dir/name if it exists, else dir/name.gz; otherwise an error that says what
// was tried and how to get the dataset.
std::string find_dataset_file(const std::string& dir, const std::string& name) {
  const std::string raw = (std::filesystem::path(dir) / name).string();
  const std::string gz = raw + ".gz";
  std::error_code ignored;
  if (std::filesystem::exists(raw, ignored)) return raw;
  if (std::filesystem::exists(gz, ignored)) return gz;
  throw Error("missing dataset file: tried " + raw + " and " + gz +
                  " (install Fashion-MNIST with `apt-get install dataset-fashion-mnist`, or "
                  "point --data DIR at an MNIST-format directory)",
              __FILE__, __LINE__);
}

}  // namespace

Dataset load_idx_dataset(const std::string& images_path, const std::string& labels_path,
                         std::int64_t limit) {
  expect_limit(limit);
  Dataset set;
  set.images_path = images_path;
  {
    IdxReader images(images_path);
    const std::vector<std::int64_t> dims = images.header(0x00000803);
    set.count = dims[0];
    set.rows = dims[1];
    set.cols = dims[2];
    set.images = images.payload(set.count * set.rows * set.cols);
  }
  IdxReader labels(labels_path);
  const std::int64_t label_count = labels.header(0x00000801)[0];
  LOWBIT_EXPECTS(label_count == set.count,
                 labels.fail(std::to_string(label_count) + " labels, but " + images_path +
                             " holds " + std::to_string(set.count) + " images (count mismatch)"));
  set.labels = labels.payload(label_count);
  for (std::int64_t i = 0; i < set.count; ++i)
    LOWBIT_EXPECTS(set.labels[i] < 10,
                   labels.fail("label " + std::to_string(set.labels[i]) + " of example " +
                               std::to_string(i) + " is not a class in [0, 10)"));

  if (limit > 0 && limit < set.count) {
    set.count = limit;
    set.images.resize(static_cast<std::size_t>(limit * set.example_size()));
    set.labels.resize(static_cast<std::size_t>(limit));
    set.images.shrink_to_fit();
    set.labels.shrink_to_fit();
  }
  return set;
}

DatasetSplits load_mnist_directory(const std::string& dir, std::int64_t limit_train,
                                   std::int64_t limit_test) {
  expect_limit(limit_train);
  expect_limit(limit_test);
  // Resolve all four first, so that a missing test file fails before a long load.
  const std::string train_images = find_dataset_file(dir, "train-images-idx3-ubyte");
  const std::string train_labels = find_dataset_file(dir, "train-labels-idx1-ubyte");
  const std::string test_images = find_dataset_file(dir, "t10k-images-idx3-ubyte");
  const std::string test_labels = find_dataset_file(dir, "t10k-labels-idx1-ubyte");
  return {load_idx_dataset(train_images, train_labels, limit_train),
          load_idx_dataset(test_images, test_labels, limit_test)};
}

Dataset load_mnist_test_split(const std::string& dir, std::int64_t limit) {
  expect_limit(limit);
  const std::string images = find_dataset_file(dir, "t10k-images-idx3-ubyte");
  const std::string labels = find_dataset_file(dir, "t10k-labels-idx1-ubyte");
  return load_idx_dataset(images, labels, limit);
}

}  // namespace lowbit
