// Errors: every failure in lowbit is a lowbit::Error that names where it was raised.
#pragma once

#include <stdexcept>
#include <string>

namespace lowbit {

/// Thrown for bad arguments and for failed CUDA, cuDNN or cuBLAS calls.
/// what() reads "lowbit: <message> (at <file>:<line>)".
class Error : public std::runtime_error {
 public:
  Error(const std::string& message, const char* file, int line);
  /// The message alone, without the "lowbit: " prefix and the location.
  const std::string& message() const noexcept { return message_; }
  const char* file() const noexcept { return file_; }
  int line() const noexcept { return line_; }

 private:
  std::string message_;
  const char* file_;
  int line_;
};

}  // namespace lowbit

/// Precondition check: throws lowbit::Error with `message` (a std::string
/// expression, only built when the check fails).
#define LOWBIT_EXPECTS(condition, message)                         \
  do {                                                             \
    if (!(condition)) throw ::lowbit::Error((message), __FILE__, __LINE__); \
  } while (0)

/// Wraps a CUDA runtime call; the error names the call and the CUDA error.
#define LOWBIT_CUDA_TRY(call)                                                   \
  do {                                                                          \
    const cudaError_t lowbit_status = (call);                                   \
    if (lowbit_status != cudaSuccess)                                           \
      throw ::lowbit::Error(std::string(#call) + " failed: " +                  \
                                cudaGetErrorName(lowbit_status) + ": " +        \
                                cudaGetErrorString(lowbit_status),              \
                            __FILE__, __LINE__);                                \
  } while (0)

/// Checks the launch just made (configuration errors surface here, not later).
#define LOWBIT_LAUNCH_CHECK() LOWBIT_CUDA_TRY(cudaGetLastError())

/// Wraps a cuDNN call; the error names the call and the cuDNN status.
#define LOWBIT_CUDNN_TRY(call)                                                  \
  do {                                                                          \
    const cudnnStatus_t lowbit_status = (call);                                 \
    if (lowbit_status != CUDNN_STATUS_SUCCESS)                                  \
      throw ::lowbit::Error(std::string(#call) + " failed: " +                  \
                                cudnnGetErrorString(lowbit_status),             \
                            __FILE__, __LINE__);                                \
  } while (0)

/// Wraps a cuBLAS call; the error names the call and the cuBLAS status.
#define LOWBIT_CUBLAS_TRY(call)                                                 \
  do {                                                                          \
    const cublasStatus_t lowbit_status = (call);                                \
    if (lowbit_status != CUBLAS_STATUS_SUCCESS)                                 \
      throw ::lowbit::Error(std::string(#call) + " failed: " +                  \
                                cublasGetStatusName(lowbit_status),             \
                            __FILE__, __LINE__);                                \
  } while (0)
