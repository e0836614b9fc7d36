// cuDNN objects of the CUDA backend: the handle and the NCHW float
// descriptors of its convolutions, each a move-only owner.
#pragma once

#include <cuda_runtime_api.h>
#include <cudnn.h>

#include "backends/cuda/unique_handle.hpp"
#include "lowbit/error.hpp"

namespace lowbit::gpu {

inline void log_if_failed(cudnnStatus_t status, const char* call) noexcept {
  if (status != CUDNN_STATUS_SUCCESS) log_release_failure(call, cudnnGetErrorString(status));
}

struct DestroyCudnn {
  void operator()(cudnnHandle_t h) const noexcept {
    log_if_failed(cudnnDestroy(h), "cudnnDestroy");
  }
};
struct DestroyTensorDescriptor {
  void operator()(cudnnTensorDescriptor_t d) const noexcept {
    log_if_failed(cudnnDestroyTensorDescriptor(d), "cudnnDestroyTensorDescriptor");
  }
};
struct DestroyFilterDescriptor {
  void operator()(cudnnFilterDescriptor_t d) const noexcept {
    log_if_failed(cudnnDestroyFilterDescriptor(d), "cudnnDestroyFilterDescriptor");
  }
};
struct DestroyConvolutionDescriptor {
  void operator()(cudnnConvolutionDescriptor_t d) const noexcept {
    log_if_failed(cudnnDestroyConvolutionDescriptor(d), "cudnnDestroyConvolutionDescriptor");
  }
};

using CudnnHandle = UniqueHandle<cudnnHandle_t, DestroyCudnn>;
using TensorDescriptor = UniqueHandle<cudnnTensorDescriptor_t, DestroyTensorDescriptor>;
using FilterDescriptor = UniqueHandle<cudnnFilterDescriptor_t, DestroyFilterDescriptor>;
using ConvolutionDescriptor =
    UniqueHandle<cudnnConvolutionDescriptor_t, DestroyConvolutionDescriptor>;

/// A cuDNN handle whose work goes to `stream`.
inline CudnnHandle make_cudnn_handle(cudaStream_t stream) {
  cudnnHandle_t raw = nullptr;
  LOWBIT_CUDNN_TRY(cudnnCreate(&raw));
  CudnnHandle handle(raw);
  LOWBIT_CUDNN_TRY(cudnnSetStream(raw, stream));
  return handle;
}

/// A dense NCHW float tensor.
inline TensorDescriptor make_tensor_descriptor(int n, int c, int h, int w) {
  cudnnTensorDescriptor_t raw = nullptr;
  LOWBIT_CUDNN_TRY(cudnnCreateTensorDescriptor(&raw));
  TensorDescriptor descriptor(raw);
  LOWBIT_CUDNN_TRY(
      cudnnSetTensor4dDescriptor(raw, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, n, c, h, w));
  return descriptor;
}

/// Float KCRS convolution weights.
inline FilterDescriptor make_filter_descriptor(int k, int c, int r, int s) {
  cudnnFilterDescriptor_t raw = nullptr;
  LOWBIT_CUDNN_TRY(cudnnCreateFilterDescriptor(&raw));
  FilterDescriptor descriptor(raw);
  LOWBIT_CUDNN_TRY(
      cudnnSetFilter4dDescriptor(raw, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, k, c, r, s));
  return descriptor;
}

/// Float cross-correlation (what deep learning calls convolution) with square
/// stride and symmetric padding, on plain FMA math: no TF32 tensor cores, so
/// results stay within float rounding of the CPU reference.
inline ConvolutionDescriptor make_convolution_descriptor(int padding, int stride) {
  cudnnConvolutionDescriptor_t raw = nullptr;
  LOWBIT_CUDNN_TRY(cudnnCreateConvolutionDescriptor(&raw));
  ConvolutionDescriptor descriptor(raw);
  LOWBIT_CUDNN_TRY(cudnnSetConvolution2dDescriptor(raw, padding, padding, stride, stride, 1, 1,
                                                   CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
  LOWBIT_CUDNN_TRY(cudnnSetConvolutionMathType(raw, CUDNN_FMA_MATH));
  return descriptor;
}

}  // namespace lowbit::gpu
