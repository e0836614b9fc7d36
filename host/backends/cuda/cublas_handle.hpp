// The cuBLAS handle of the CUDA backend, a move-only owner.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>

#include "backends/cuda/unique_handle.hpp"
#include "lowbit/error.hpp"

namespace lowbit::gpu {

inline void log_if_failed(cublasStatus_t status, const char* call) noexcept {
  if (status != CUBLAS_STATUS_SUCCESS) log_release_failure(call, cublasGetStatusName(status));
}

struct DestroyCublas {
  void operator()(cublasHandle_t h) const noexcept {
    log_if_failed(cublasDestroy(h), "cublasDestroy");
  }
};

using CublasHandle = UniqueHandle<cublasHandle_t, DestroyCublas>;

/// A cuBLAS handle for reproducible float GEMMs on `stream`: it uses the
/// caller's `workspace` (so nothing allocates while a graph is captured),
/// plain FP32 math (no TF32) and no atomics.
inline CublasHandle make_cublas_handle(cudaStream_t stream, void* workspace,
                                       std::size_t workspace_bytes) {
  cublasHandle_t raw = nullptr;
  LOWBIT_CUBLAS_TRY(cublasCreate(&raw));
  CublasHandle handle(raw);
  LOWBIT_CUBLAS_TRY(cublasSetStream(raw, stream));
  // After cublasSetStream, which resets the workspace to cuBLAS's own pool.
  LOWBIT_CUBLAS_TRY(cublasSetWorkspace(raw, workspace, workspace_bytes));
  LOWBIT_CUBLAS_TRY(cublasSetMathMode(raw, CUBLAS_DEFAULT_MATH));
  LOWBIT_CUBLAS_TRY(cublasSetAtomicsMode(raw, CUBLAS_ATOMICS_NOT_ALLOWED));
  return handle;
}

}  // namespace lowbit::gpu
