// One call sequence on either side of the contract: a test written once as a
// template over Api runs lowbit::ref on host vectors (HostOps) and
// lowbit::cuda on device buffers (DeviceOps). Both have the same ops with the
// same arguments (DeviceOps adds its stream), upload() to make a buffer and
// download() to read one back.
#pragma once

#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "lowbit/cuda.hpp"
#include "lowbit/ref.hpp"
#include "test_util.hpp"

namespace lowbit::test {

// The ops both sides offer, as an X-macro.
#define LOWBIT_TEST_OP_LIST(X)                                                                    \
  X(fake_quant_range)                                                                             \
  X(fake_quant_affine) X(ste_backward) X(ste_backward_range) X(ema_fake_quant)                    \
      X(bias_relu_ema_fake_quant) X(weight_range) X(fake_quant_weights) X(lsq_forward)            \
          X(lsq_backward) X(lsq_init_scale) X(bias_activation) X(bias_activation_backward) X(add) \
              X(sgd_step) X(affine_params_from_range) X(integer_conv2d) X(max_pool_codes)

#define LOWBIT_TEST_HOST_OP(op) \
  template <class... A>         \
  void op(A... a) {             \
    ref::op(a...);              \
  }
#define LOWBIT_TEST_DEVICE_OP(op) \
  template <class... A>           \
  void op(A... a) {               \
    cuda::op(a..., stream.get()); \
  }

struct HostOps {
  static constexpr const char* kName = "cpu reference";
  template <class T>
  std::vector<T> upload(const std::vector<T>& v) {
    return v;
  }
  template <class T>
  std::vector<T> download(const std::vector<T>& v) {
    return v;
  }
  LOWBIT_TEST_OP_LIST(LOWBIT_TEST_HOST_OP)
};

struct DeviceOps {
  static constexpr const char* kName = "cuda";
  Stream stream;
  template <class T>
  DeviceBuffer<T> upload(const std::vector<T>& v) {
    return DeviceBuffer<T>(v);
  }
  template <class T>
  std::vector<T> download(const DeviceBuffer<T>& b) {
    stream.sync();
    return b.download();
  }
  LOWBIT_TEST_OP_LIST(LOWBIT_TEST_DEVICE_OP)
};

#undef LOWBIT_TEST_DEVICE_OP
#undef LOWBIT_TEST_HOST_OP
#undef LOWBIT_TEST_OP_LIST

/// A workspace buffer of reduction_workspace_bytes(layout) on Api's side.
template <class Api>
auto workspace_buffer(Api& api, const ChannelLayout& layout) {
  return api.upload(std::vector<std::uint8_t>(reduction_workspace_bytes(layout)));
}

template <class Buffer>
Workspace as_workspace(Buffer& buffer) {
  return {buffer.data(), buffer.size()};
}

/// Base of a typed test over Sides: the Gpu side needs a CUDA device.
template <class Api>
class BothSides : public ::testing::Test {
 protected:
  void SetUp() override {
    if constexpr (std::is_same_v<Api, DeviceOps>) LOWBIT_REQUIRE_GPU();
  }
};

using Sides = ::testing::Types<HostOps, DeviceOps>;

/// Names the typed tests' sides Cpu and Gpu (so the Gpu* filters find them).
struct SideNames {
  template <class Api>
  static std::string GetName(int) {
    return std::is_same_v<Api, DeviceOps> ? "Gpu" : "Cpu";
  }
};

}  // namespace lowbit::test
