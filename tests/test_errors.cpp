// lowbit::Error and the checking macros: messages name the failed call, the
// library's own name for the status, and the source line.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cudnn.h>
#include <gtest/gtest.h>

#include <string>

#include "lowbit/data.hpp"
#include "lowbit/error.hpp"
#include "lowbit/types.hpp"

namespace lowbit {
namespace {

std::string message_of(void (*f)()) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "no exception";
}

TEST(Errors, ExpectsNamesTheProblemAndTheLine) {
  const int line = __LINE__ + 1;
  const auto what = message_of([] { LOWBIT_EXPECTS(1 + 1 == 3, "arithmetic is broken"); });
  EXPECT_NE(what.find("lowbit: arithmetic is broken"), std::string::npos) << what;
  EXPECT_NE(what.find("test_errors.cpp:" + std::to_string(line)), std::string::npos) << what;
  try {
    LOWBIT_EXPECTS(false, "x");
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.file()).find("test_errors.cpp"), std::string::npos);
    EXPECT_GT(e.line(), 0);
  }
}

// The build maps the source root away (-fmacro-prefix-map), so that messages
// users see name the source file, not the build machine's directories.
TEST(Errors, LibraryLocationsAreRelativeToTheSourceTree) {
  const auto where = [](void (*f)()) -> std::string {
    try {
      f();
    } catch (const Error& e) {
      EXPECT_NE(e.file()[0], '/') << e.what();
      return e.file();
    }
    return "no exception";
  };
  EXPECT_EQ(where([] { ChannelLayout::per_channel({2, 3}, 5); }), "cuda/checks.cpp");
  EXPECT_EQ(where([] { load_idx_dataset("/nonexistent/images", "/nonexistent/labels"); }),
            "host/io/idx.cpp");
  const std::string what = message_of([] { ChannelLayout::per_channel({2, 3}, 5); });
  EXPECT_NE(what.find(" (at cuda/checks.cpp:"), std::string::npos) << what;
}

TEST(Errors, CudaTryNamesCallAndError) {
  const auto what = message_of([] { LOWBIT_CUDA_TRY(cudaErrorMemoryAllocation); });
  EXPECT_NE(what.find("cudaErrorMemoryAllocation"), std::string::npos) << what;
  EXPECT_NE(what.find("failed"), std::string::npos) << what;
  EXPECT_NO_THROW(LOWBIT_CUDA_TRY(cudaSuccess));
}

TEST(Errors, CudnnTryNamesTheStatus) {
  const auto what = message_of([] { LOWBIT_CUDNN_TRY(CUDNN_STATUS_BAD_PARAM); });
  EXPECT_NE(what.find("CUDNN_STATUS_BAD_PARAM"), std::string::npos) << what;
  EXPECT_NO_THROW(LOWBIT_CUDNN_TRY(CUDNN_STATUS_SUCCESS));
}

TEST(Errors, CublasTryNamesTheStatus) {
  const auto what = message_of([] { LOWBIT_CUBLAS_TRY(CUBLAS_STATUS_INVALID_VALUE); });
  EXPECT_NE(what.find("CUBLAS_STATUS_INVALID_VALUE"), std::string::npos) << what;
  EXPECT_NO_THROW(LOWBIT_CUBLAS_TRY(CUBLAS_STATUS_SUCCESS));
}

}  // namespace
}  // namespace lowbit
