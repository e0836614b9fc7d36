// Fake-quantizes a few values at 4 bits with the CPU reference of an
// installed lowbit, and checks the result against the documented formula.
#include <lowbit/ref.hpp>

#include <cstdio>
#include <vector>

int main() {
  const std::vector<float> x = {-1.2f, -0.3f, 0.0f, 0.26f, 0.9f, 2.0f};
  std::vector<float> y(x.size());
  const float min = -1.0f, max = 1.0f;
  lowbit::ref::fake_quant_range(x.data(), y.data(),
                                lowbit::ChannelLayout::per_tensor(static_cast<long>(x.size())),
                                &min, &max, lowbit::RangeQuant{4, false}, nullptr);
  const lowbit::RangeParams p = lowbit::nudge_range(min, max, 0, 15);
  int wrong = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    std::printf("%6.3f -> %6.3f\n", x[i], y[i]);
    if (y[i] != lowbit::fake_quant(x[i], p, lowbit::RangeScaling::divide)) ++wrong;
  }
  if (y[2] != 0.0f) ++wrong;  // zero stays exactly zero
  std::printf("%s\n", wrong == 0 ? "consumer: ok" : "consumer: WRONG");
  return wrong == 0 ? 0 : 1;
}
