// The EMA observer of an activation quantizer, as layers use it: the config
// from the node's attributes, and for evaluation a frozen copy of the state,
// so that evaluating never moves a range or a step count.
#pragma once

#include "lowbit/backend.hpp"
#include "lowbit/graph.hpp"
#include "nn/layers/layer.hpp"

namespace lowbit {

class EmaRange {
 public:
  EmaRange(Backend& backend, const FakeQuantAttrs& attrs, EmaRangeState* state);

  struct Use {
    EmaRangeState* state;
    EmaConfig config;
  };
  /// The state and config a pass quantizes with (eval: the frozen copy).
  Use for_pass(Pass pass);

 private:
  Backend& backend_;
  EmaConfig config_;
  EmaRangeState* state_;
  Buffer eval_state_;
};

}  // namespace lowbit
