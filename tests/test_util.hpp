// Helpers shared by the test files: bit-exact comparison that reports the
// first mismatches, and seeded data.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "lowbit/cuda.hpp"
#include "lowbit/data.hpp"
#include "lowbit/device_buffer.hpp"
#include "lowbit/error.hpp"
#include "lowbit/types.hpp"

namespace lowbit::test {

inline std::uint32_t bits_of(float v) {
  std::uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  return u;
}

/// The channel of flat element i, by division (what the kernels' cursor avoids).
inline std::int64_t channel_of(const ChannelLayout& layout, std::int64_t i) {
  return (i / layout.inner) % layout.channels;
}

/// Compares two arrays element by element on their bit patterns (so NaN,
/// -0.0 and +0.0 count) and lists the first few mismatches.
template <class T>
::testing::AssertionResult same_bits(const std::vector<T>& expected, const std::vector<T>& got) {
  if (expected.size() != got.size())
    return ::testing::AssertionFailure()
           << "sizes differ: " << expected.size() << " vs " << got.size();
  std::ostringstream out;
  std::size_t mismatches = 0;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    if (std::memcmp(&expected[i], &got[i], sizeof(T)) == 0) continue;
    if (++mismatches <= 5) {
      out << "\n  [" << i << "] expected " << +expected[i] << " got " << +got[i];
      if constexpr (std::is_same_v<T, float>)
        out << std::hex << " (0x" << bits_of(expected[i]) << " vs 0x" << bits_of(got[i]) << ")"
            << std::dec;
    }
  }
  if (mismatches == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << mismatches << " of " << expected.size() << " elements differ:" << out.str();
}

/// Seeded normal values, scaled, with a sprinkle of exact grid points and
/// zeros so ties and boundaries occur.
inline std::vector<float> random_values(std::int64_t n, std::uint32_t seed, float stddev = 2.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, stddev);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (auto& x : v) {
    const std::uint32_t r = rng() % 16;
    x = r == 0 ? 0.0f : r == 1 ? std::round(normal(rng) * 8.0f) / 8.0f : normal(rng);
  }
  return v;
}

inline Workspace host_workspace(std::vector<float>& storage, const ChannelLayout& layout) {
  storage.assign(reduction_workspace_bytes(layout) / sizeof(float) + 1, 0.0f);
  return {storage.data(), storage.size() * sizeof(float)};
}

/// Whether this run must have a GPU and the dataset (scripts/gpu-check.sh sets
/// LOWBIT_EXPECT_GPU=1): then a test that would skip for want of either fails,
/// so a machine whose CUDA does not start cannot report a clean pass.
inline bool gpu_expected() {
  const char* expect = std::getenv("LOWBIT_EXPECT_GPU");
  return expect != nullptr && std::string(expect) == "1";
}

/// Skips the test, saying why; fails it instead when gpu_expected(). (A loop
/// that always returns: one statement with no `else` for an outer `if` to take.)
#define LOWBIT_SKIP_OR_FAIL(reason)                                                  \
  for (const std::string lowbit_reason = (reason);;) {                               \
    if (::lowbit::test::gpu_expected())                                              \
      GTEST_FAIL() << lowbit_reason << " (LOWBIT_EXPECT_GPU=1: this test must run)"; \
    GTEST_SKIP() << lowbit_reason;                                                   \
  }

/// For tests that need a CUDA device: the reason names the CUDA error.
#define LOWBIT_REQUIRE_GPU()                                                   \
  if (const std::string lowbit_gpu_problem = ::lowbit::cuda::device_problem(); \
      !lowbit_gpu_problem.empty())                                             \
  LOWBIT_SKIP_OR_FAIL(lowbit_gpu_problem)

/// Fashion-MNIST for the tests: $LOWBIT_DATA_DIR, else the Debian package's
/// directory (CI installs it: apt-get install dataset-fashion-mnist).
inline std::string fashion_mnist_dir() {
  const char* dir = std::getenv("LOWBIT_DATA_DIR");
  return dir != nullptr && *dir != '\0' ? dir : kDefaultDataDirectory;
}

inline bool fashion_mnist_present() {
  const std::string labels = fashion_mnist_dir() + "/t10k-labels-idx1-ubyte";
  return std::filesystem::exists(labels) || std::filesystem::exists(labels + ".gz");
}

/// For tests that train on Fashion-MNIST.
#define LOWBIT_REQUIRE_FASHION_MNIST()          \
  if (!::lowbit::test::fashion_mnist_present()) \
  LOWBIT_SKIP_OR_FAIL("Fashion-MNIST is not installed at " + ::lowbit::test::fashion_mnist_dir())

/// A scratch path unique to this process and test, so that tests running in
/// parallel (ctest -j) never share a file.
inline std::string temp_path(const std::string& name) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string test = std::string(info->test_suite_name()) + "_" + info->name();
  for (char& c : test)
    if (c == '/') c = '_';
  return (std::filesystem::path(::testing::TempDir()) /
          ("lowbit_" + std::to_string(::getpid()) + "_" + test + "_" + name))
      .string();
}

/// The OpenMP thread count (the CPU backend's) for one scope.
class ThreadCount {
 public:
  explicit ThreadCount(int threads) : saved_(omp_get_max_threads()) {
    omp_set_num_threads(threads);
  }
  ~ThreadCount() { omp_set_num_threads(saved_); }
  ThreadCount(const ThreadCount&) = delete;
  ThreadCount& operator=(const ThreadCount&) = delete;

 private:
  int saved_;
};

/// The whole of a file, as bytes (empty if it cannot be read).
inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// A fresh directory at temp_path(name), removed with everything in it when
/// the object goes (one per test fixture).
class ScratchDirectory {
 public:
  explicit ScratchDirectory(const std::string& name = "dir") : path_(temp_path(name)) {
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ScratchDirectory(const ScratchDirectory&) = delete;
  ScratchDirectory& operator=(const ScratchDirectory&) = delete;
  ~ScratchDirectory() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  const std::filesystem::path& path() const { return path_; }
  /// The names of the files in it, sorted (to see what a test left behind).
  std::vector<std::string> names() const {
    std::vector<std::string> names;
    for (const auto& entry : std::filesystem::directory_iterator(path_))
      names.push_back(entry.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }

 private:
  std::filesystem::path path_;
};

/// An IDX file: the magic and the dimensions as big-endian uint32, then the
/// payload.
inline std::vector<std::uint8_t> idx_file(std::uint32_t magic,
                                          const std::vector<std::uint32_t>& dims,
                                          const std::vector<std::uint8_t>& payload) {
  std::vector<std::uint32_t> words{magic};
  words.insert(words.end(), dims.begin(), dims.end());
  std::vector<std::uint8_t> out;
  for (const std::uint32_t word : words)
    for (int shift = 24; shift >= 0; shift -= 8)
      out.push_back(static_cast<std::uint8_t>(word >> shift));
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

/// Writes the raw IDX files of an MNIST-format split, `dir`/`split`-images-
/// idx3-ubyte and `split`-labels-idx1-ubyte ("train" or "t10k"): `count`
/// images of rows x cols seeded pixels, labels 0, 1, .., 9, 0, ...; returns
/// the images file's path.
inline std::string write_mnist_split(const std::filesystem::path& dir, const std::string& split,
                                     std::uint32_t count, std::uint32_t rows, std::uint32_t cols) {
  std::mt19937 rng(count * 31 + rows * 7 + cols);
  std::vector<std::uint8_t> pixels(std::size_t{count} * rows * cols);
  for (std::uint8_t& p : pixels) p = static_cast<std::uint8_t>(rng());
  std::vector<std::uint8_t> labels(count);
  for (std::uint32_t i = 0; i < count; ++i) labels[i] = static_cast<std::uint8_t>(i % 10);
  const auto write = [&](const std::string& name, const std::vector<std::uint8_t>& bytes) {
    const std::string path = (dir / name).string();
    std::ofstream(path, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()),
               static_cast<std::streamsize>(bytes.size()));
    return path;
  };
  write(split + "-labels-idx1-ubyte", idx_file(0x00000801, {count}, labels));
  return write(split + "-images-idx3-ubyte", idx_file(0x00000803, {count, rows, cols}, pixels));
}

/// Whether f throws a lowbit::Error whose message contains `needle`.
template <class F>
::testing::AssertionResult throws_mentioning(F&& f, const std::string& needle) {
  try {
    f();
  } catch (const Error& e) {
    if (std::string(e.what()).find(needle) != std::string::npos)
      return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure()
           << "\"" << e.what() << "\" does not mention \"" << needle << "\"";
  }
  return ::testing::AssertionFailure() << "no lowbit::Error was thrown";
}

using cuda::DeviceBuffer;

/// A CUDA stream for one test.
class Stream {
 public:
  explicit Stream(unsigned flags = cudaStreamDefault) {
    LOWBIT_CUDA_TRY(cudaStreamCreateWithFlags(&stream_, flags));
  }
  ~Stream() { cudaStreamDestroy(stream_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return stream_; }
  void sync() const { LOWBIT_CUDA_TRY(cudaStreamSynchronize(stream_)); }

 private:
  cudaStream_t stream_ = nullptr;
};

}  // namespace lowbit::test
