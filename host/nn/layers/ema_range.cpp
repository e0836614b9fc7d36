#include "nn/layers/ema_range.hpp"

#include "lowbit/error.hpp"

namespace lowbit {

EmaRange::EmaRange(Backend& backend, const FakeQuantAttrs& attrs, EmaRangeState* state)
    : backend_(backend), state_(state) {
  LOWBIT_EXPECTS(state != nullptr, "an EMA quantizer needs its observer state");
  config_.quant = {attrs.bits, false};
  config_.decay = attrs.ema_decay;
  config_.mode = attrs.range == RangeMode::lagged ? EmaMode::lagged : EmaMode::exact;
  config_.quant_delay = attrs.quant_delay;
  config_.freeze_step = attrs.freeze_step;
  eval_state_ = backend.allocate(sizeof(EmaRangeState));
}

EmaRange::Use EmaRange::for_pass(Pass pass) {
  if (pass != Pass::eval) return {state_, config_};
  // Evaluation quantizes exactly as training would now, on a frozen copy.
  backend_.copy(eval_state_.data(), state_, sizeof(EmaRangeState));
  EmaConfig frozen = config_;
  frozen.freeze_step = 0;
  return {eval_state_.as<EmaRangeState>(), frozen};
}

}  // namespace lowbit
