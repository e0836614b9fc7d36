// Self-tests of the CPU SIMT emulator: a harness that never fails proves
// nothing. Each kernel of broken_kernels.cu must run clean as written and,
// with its deliberate bug, be reported with the file:line of the bug (the
// line marked "site:") and the CUDA thread. Built three times: plain, and
// under AddressSanitizer and ThreadSanitizer for the two memory bugs the
// emulator cannot see by itself.
#include <cuda_runtime_api.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstddef>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "broken_kernels.hpp"

#ifndef LOWBIT_SIMT_BROKEN_KERNELS
#error "LOWBIT_SIMT_BROKEN_KERNELS must name broken_kernels.cu"
#endif

#if defined(__SANITIZE_THREAD__)
// A data race ends the process, so that a death test can see the report.
extern "C" const char* __tsan_default_options() { return "halt_on_error=1"; }
#endif
#if defined(__SANITIZE_ADDRESS__)
// A failing kernel's fibers are abandoned mid-frame (as a GPU abandons a
// faulted grid), with the strings of their messages: not leaks to report.
extern "C" const char* __asan_default_options() { return "detect_leaks=0"; }
#endif

namespace {

using ::testing::ContainsRegex;
using ::testing::HasSubstr;

/// "broken_kernels.cu:<line>" of the line marked "// site: <marker>".
std::string site(const std::string& marker) {
  std::ifstream in(LOWBIT_SIMT_BROKEN_KERNELS);
  std::string line;
  for (int number = 1; std::getline(in, line); ++number)
    if (line.find("// site: " + marker) != std::string::npos)
      return "broken_kernels.cu:" + std::to_string(number);
  throw std::runtime_error("no line marked \"site: " + marker + "\"");
}

/// The last launch's error as "name: message", or "" if it succeeded.
std::string launch_error() {
  const cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) return "";
  return std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
}

const char* const kCudaThread = "thread \\([0-9]+,0,0\\)";

/// n elements of device memory holding `value`.
template <class T>
class Buffer {
 public:
  explicit Buffer(std::size_t n, T value = T{}) : n_(n) {
    if (cudaMalloc(reinterpret_cast<void**>(&data_), n * sizeof(T)) != cudaSuccess)
      throw std::runtime_error("cudaMalloc failed");
    const std::vector<T> host(n, value);
    cudaMemcpy(data_, host.data(), n * sizeof(T), cudaMemcpyHostToDevice);
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { cudaFree(data_); }
  T* get() const { return data_; }
  std::vector<T> download() const {
    std::vector<T> host(n_);
    cudaMemcpy(host.data(), data_, n_ * sizeof(T), cudaMemcpyDeviceToHost);
    return host;
  }

 private:
  T* data_ = nullptr;
  std::size_t n_;
};

TEST(SimtHarness, DivergentWarpCollectiveIsCaught) {
  Buffer<unsigned> out(32);
  simt_selftest::divergent_collective(out.get(), false);
  ASSERT_EQ(launch_error(), "");
  EXPECT_EQ(out.download()[0], 0x55555555u);
  simt_selftest::divergent_collective(out.get(), true);
  const std::string error = launch_error();
  EXPECT_THAT(error, HasSubstr("cudaErrorLaunchFailure"));
  EXPECT_THAT(error, HasSubstr("warp divergence"));
  EXPECT_THAT(error, HasSubstr(site("divergent shuffle")));
  EXPECT_THAT(error, HasSubstr(site("divergent ballot")));
  EXPECT_THAT(error, ContainsRegex(kCudaThread));
}

TEST(SimtHarness, ThreadExitingWhileItsBlockWaitsAtABarrierIsCaught) {
  Buffer<float> out(64);
  simt_selftest::exit_at_barrier(out.get(), false);
  ASSERT_EQ(launch_error(), "");
  EXPECT_EQ(out.download()[0], 63.0f);
  simt_selftest::exit_at_barrier(out.get(), true);
  const std::string error = launch_error();
  EXPECT_THAT(error, HasSubstr("cudaErrorLaunchFailure"));
  EXPECT_THAT(error, HasSubstr(site("the barrier the block waits at")));
  EXPECT_THAT(error, ContainsRegex(kCudaThread));
}

TEST(SimtHarness, ShuffleFromALaneOutsideTheMaskIsCaught) {
  Buffer<float> out(16);
  simt_selftest::shuffle_outside_mask(out.get(), false);
  ASSERT_EQ(launch_error(), "");
  EXPECT_EQ(out.download()[0], 1.0f);
  simt_selftest::shuffle_outside_mask(out.get(), true);
  const std::string error = launch_error();
  EXPECT_THAT(error, HasSubstr("not in the mask"));
  EXPECT_THAT(error, HasSubstr(site("shuffle")));
  EXPECT_THAT(error, ContainsRegex(kCudaThread));
}

TEST(SimtHarness, DeadlockIsCaught) {
  Buffer<float> out(64);
  simt_selftest::deadlock(out.get(), false);
  ASSERT_EQ(launch_error(), "");
  simt_selftest::deadlock(out.get(), true);
  const std::string error = launch_error();
  EXPECT_THAT(error, HasSubstr("deadlock"));
  EXPECT_THAT(error, ContainsRegex("__syncwarp at [^;]*" + site("lane 0 waits for its warp")));
  EXPECT_THAT(error, HasSubstr(site("the others wait for the block")));
  EXPECT_THAT(error, ContainsRegex(kCudaThread));
}

TEST(SimtHarness, InvalidLaunchConfigurationIsCaught) {
  Buffer<float> in(100, 1.0f), out(100);
  simt_selftest::invalid_launch(in.get(), out.get(), 100, false);
  ASSERT_EQ(launch_error(), "");
  simt_selftest::invalid_launch(in.get(), out.get(), 100, true);
  const std::string error = launch_error();
  EXPECT_THAT(error, HasSubstr("cudaErrorInvalidConfiguration"));
  EXPECT_THAT(error, HasSubstr(site("invalid launch")));
  EXPECT_THAT(error, HasSubstr("block (2048,1,1)"));
}

#if defined(__SANITIZE_ADDRESS__)
// cudaMalloc gives exactly the bytes asked for, so reading element n is a
// heap-buffer-overflow; the emulator names the CUDA thread that made it.
TEST(SimtHarnessAddressSanitizer, OutOfBoundsGlobalAccessIsCaught) {
  Buffer<float> in(100, 1.0f), out(100);
  simt_selftest::out_of_bounds(in.get(), out.get(), 100, false);
  ASSERT_EQ(launch_error(), "");
  EXPECT_DEATH(simt_selftest::out_of_bounds(in.get(), out.get(), 100, true),
               "heap-buffer-overflow.*" + site("off by one") +
                   ".*made by thread \\(100,0,0\\) \\[warp 3 lane 4\\] of block \\(0,0,0\\)");
}
#endif

#if defined(__SANITIZE_THREAD__)
// Without the barrier, warp 1's write of the second round races with thread
// 0's read of the first; only __syncthreads orders CUDA threads here.
TEST(SimtHarnessThreadSanitizer, MissingBarrierBeforeSharedMemoryReuseIsCaught) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  Buffer<float> in(512, 1.0f), out(2);
  simt_selftest::shared_reuse(in.get(), out.get(), false);
  ASSERT_EQ(launch_error(), "");
  EXPECT_EQ(out.download(), (std::vector<float>{256.0f, 256.0f}));
  const std::string write = site("the next round's write");
  const std::string read = site("this round's read");
  EXPECT_DEATH(simt_selftest::shared_reuse(in.get(), out.get(), true),
               "data race.*(" + write + ".*" + read + "|" + read + ".*" + write +
                   ").*CUDA thread \\([0-9]+,0,0\\)");
}
#endif

}  // namespace
