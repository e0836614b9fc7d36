// The executable form of a graph node. A Network binds each layer to its
// tensors' memory once; forward/backward then only queue backend calls.
// Public forward/backward validate the call sequence, *_impl computes.
#pragma once

#include <cstdint>
#include <string>

#include "lowbit/backend.hpp"
#include "lowbit/graph.hpp"

namespace lowbit {

enum class Pass {
  train,      ///< updates range state, keeps what backward needs
  eval,       ///< leaves every range state as it is
  calibrate,  ///< train, and LSQ quantizers first set their step size from this batch
};

/// A tensor's memory: values, and the gradient (null when none is needed).
struct Binding {
  float* value = nullptr;
  float* grad = nullptr;
};

class Layer {
 public:
  Layer(std::string name, Backend& backend) : name_(std::move(name)), backend_(backend) {}
  virtual ~Layer() = default;
  Layer(const Layer&) = delete;
  Layer& operator=(const Layer&) = delete;

  void forward(Pass pass);
  /// Gradients of the inputs (and parameters) from the output gradient.
  /// Throws unless the last forward was a training pass.
  void backward();
  const std::string& name() const { return name_; }

 protected:
  virtual void forward_impl(Pass pass) = 0;
  virtual void backward_impl() = 0;
  /// Throws lowbit::Error naming this layer when `condition` fails.
  void expect(bool condition, const std::string& what) const;

  std::string name_;
  Backend& backend_;

 private:
  bool backward_ready_ = false;
};

}  // namespace lowbit
