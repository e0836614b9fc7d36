// CPU reference of affine_params.cu.
#include "checks.hpp"
#include "lowbit/nn_element.hpp"
#include "lowbit/ref.hpp"

namespace lowbit::ref {

void affine_params_from_range(const float* min, const float* max, std::int64_t channels,
                              AffineQuant quant, bool symmetric, float* scale,
                              std::int32_t* zero_point) {
  detail::check_affine_params_from_range(min, max, channels, quant, scale, zero_point);
  detail::check_ranges(min, max, channels);
  for (std::int64_t c = 0; c < channels; ++c) {
    const AffineQparams p = affine_qparams(min[c], max[c], quant.qmin, quant.qmax, symmetric);
    scale[c] = p.scale;
    zero_point[c] = p.zero_point;
  }
}

}  // namespace lowbit::ref
