// Rewrites LeNet-5 for 4-bit training with an installed lowbit, keeping the
// first and last layers at 8 bits, and checks where the quantizers went.
#include <lowbit/quantize.hpp>
#include <lowbit/trainer.hpp>

#include <cstdio>

int main() {
  lowbit::QuantizeOptions options;  // 4-bit weights and activations
  options.layer_bits["conv1"] = {8, 8};
  options.layer_bits["fc3"] = {8, 8};
  const lowbit::Graph graph = lowbit::quantize(lowbit::lenet5(), options);
  std::printf("%s", graph.describe().c_str());
  int quantizers = 0;
  for (const lowbit::Node& node : graph.nodes())
    if (node.kind == lowbit::NodeKind::fake_quant) ++quantizers;
  // 5 weight quantizers, 4 after the ReLUs and 1 on the logits.
  const bool ok = quantizers == 10 && lowbit::make_cpu_backend() != nullptr;
  std::printf("%s\n", ok ? "consumer_graph: ok" : "consumer_graph: WRONG");
  return ok ? 0 : 1;
}
