// CUDA runtime objects of the CUDA backend: its stream, the graph and
// executable graph that capture() records a training step into, and the
// events of a Timeline.
#pragma once

#include <cuda_runtime_api.h>

#include "backends/cuda/unique_handle.hpp"
#include "lowbit/error.hpp"

namespace lowbit::gpu {

inline void log_if_failed(cudaError_t status, const char* call) noexcept {
  if (status != cudaSuccess) log_release_failure(call, cudaGetErrorString(status));
}

struct DestroyStream {
  void operator()(cudaStream_t s) const noexcept {
    log_if_failed(cudaStreamDestroy(s), "cudaStreamDestroy");
  }
};
struct DestroyGraph {
  void operator()(cudaGraph_t g) const noexcept {
    log_if_failed(cudaGraphDestroy(g), "cudaGraphDestroy");
  }
};
struct DestroyGraphExec {
  void operator()(cudaGraphExec_t g) const noexcept {
    log_if_failed(cudaGraphExecDestroy(g), "cudaGraphExecDestroy");
  }
};

struct DestroyEvent {
  void operator()(cudaEvent_t e) const noexcept {
    log_if_failed(cudaEventDestroy(e), "cudaEventDestroy");
  }
};

using Stream = UniqueHandle<cudaStream_t, DestroyStream>;
using Event = UniqueHandle<cudaEvent_t, DestroyEvent>;
using Graph = UniqueHandle<cudaGraph_t, DestroyGraph>;
using GraphExec = UniqueHandle<cudaGraphExec_t, DestroyGraphExec>;

/// A stream that does not synchronize with the legacy default stream.
inline Stream make_non_blocking_stream() {
  cudaStream_t stream = nullptr;
  LOWBIT_CUDA_TRY(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  return Stream(stream);
}

inline Event make_timing_event() {
  cudaEvent_t event = nullptr;
  LOWBIT_CUDA_TRY(cudaEventCreate(&event));
  return Event(event);
}

/// The executable form of `graph` (the graph itself may be destroyed after).
inline GraphExec instantiate(const Graph& graph) {
  cudaGraphExec_t exec = nullptr;
  LOWBIT_CUDA_TRY(cudaGraphInstantiate(&exec, graph.get(), 0));
  return GraphExec(exec);
}

}  // namespace lowbit::gpu
