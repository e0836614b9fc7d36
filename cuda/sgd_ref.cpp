// CPU reference of sgd.cu.
#include "checks.hpp"
#include "lowbit/nn_element.hpp"
#include "lowbit/ref.hpp"

namespace lowbit::ref {

void sgd_step(float* params, const float* grads, float* velocity, std::int64_t n,
              std::int64_t decay_count, SgdConfig config) {
  detail::check_sgd_step(params, grads, velocity, n, decay_count, config);
  for (std::int64_t i = 0; i < n; ++i)
    sgd_update(params[i], grads[i], velocity[i], i < decay_count, config);
}

}  // namespace lowbit::ref
