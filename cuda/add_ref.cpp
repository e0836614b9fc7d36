// CPU reference of add.cu.
#include "checks.hpp"
#include "lowbit/ref.hpp"

namespace lowbit::ref {

void add(const float* a, const float* b, std::int64_t n, float* y) {
  detail::check_add(a, b, n, y);
  for (std::int64_t i = 0; i < n; ++i) y[i] = a[i] + b[i];
}

}  // namespace lowbit::ref
