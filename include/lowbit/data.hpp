// Image-classification datasets in IDX (MNIST) format, gzipped or raw.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lowbit {

/// Examples as stored: row-major 8-bit pixels and labels in [0, 10).
struct Dataset {
  std::int64_t count = 0;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::vector<std::uint8_t> images;  ///< count · rows · cols pixels
  std::vector<std::uint8_t> labels;  ///< count labels
  std::string images_path;  ///< the file the images came from, for messages

  std::int64_t example_size() const { return rows * cols; }
};

/// Loads an IDX image file (magic 0x00000803, dims [count, rows, cols]) and
/// its IDX label file (magic 0x00000801, dims [count]); either may be gzipped.
/// Both files are validated whole, then the first `limit` examples are kept
/// when limit > 0 (0 keeps all; a negative limit throws). Validation is
/// strict: an unreadable file or corrupt gzip stream, an empty file, bad magic
/// (element type other than unsigned byte), wrong rank, a truncated header, a
/// zero dimension, dimensions whose product exceeds 2^34 bytes, a truncated
/// payload, trailing bytes, an image/label count mismatch or a label >= 10
/// (naming the example) throw lowbit::Error naming the file and the problem.
Dataset load_idx_dataset(const std::string& images_path, const std::string& labels_path,
                         std::int64_t limit = 0);

/// The training and test splits of an MNIST-format directory.
struct DatasetSplits {
  Dataset train;
  Dataset test;
};

/// Loads `dir`/{train-images-idx3-ubyte, train-labels-idx1-ubyte,
/// t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte}, each with or without
/// ".gz" (the raw file wins when both exist), with load_idx_dataset's
/// validation and limits. A missing file throws lowbit::Error naming the
/// paths it tried and how to get the dataset, before anything is loaded.
DatasetSplits load_mnist_directory(const std::string& dir, std::int64_t limit_train = 0,
                                   std::int64_t limit_test = 0);

/// The test split alone (t10k-*), as load_mnist_directory() loads it: for
/// evaluation, which needs no training files.
Dataset load_mnist_test_split(const std::string& dir, std::int64_t limit = 0);

/// Where `lowbit train` looks without --data (Debian's dataset-fashion-mnist).
inline constexpr const char* kDefaultDataDirectory = "/usr/share/datasets/fashion-mnist";

}  // namespace lowbit
