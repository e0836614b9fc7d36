// The integer model of trained checkpoints at 2, 4 and 8 bits: its weights
// are the fake-quant weights bit for bit, its file round-trips and refuses
// damage, and integer-only inference gives fake quant's top-1.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include "lowbit/data.hpp"
#include "lowbit/deploy.hpp"
#include "lowbit/quantize.hpp"
#include "lowbit/ref.hpp"
#include "lowbit/safetensors.hpp"
#include "nn/layers/layers.hpp"
#include "train/checkpoint.hpp"
#include "trained_models.hpp"

namespace lowbit {
namespace {

namespace fs = std::filesystem;

constexpr int kWidths[] = {2, 4, 8};

std::vector<float> checkpoint_floats(const Checkpoint& c, const std::string& name) {
  for (const safetensors::Tensor& t : c.file.tensors)
    if (t.name == name) {
      std::vector<float> v(t.data.size() / sizeof(float));
      std::memcpy(v.data(), t.data.data(), t.data.size());
      return v;
    }
  ADD_FAILURE() << "no tensor " << name;
  return {};
}

/// What the training graph's weight quantizer of `layer` outputs for the
/// checkpoint's weights: the ops of FakeQuantLayer::forward.
std::vector<float> fake_quant_weights(const Checkpoint& c, const std::string& layer) {
  const std::vector<std::int64_t>& in = c.input_shape;
  const Graph graph = quantize(lenet5(in[0], in[1], in[2]), c.options.quantize);
  const Node& node =
      graph.nodes()[static_cast<std::size_t>(graph.find_node(layer + "/weight_quant"))];
  const auto& a = std::get<FakeQuantAttrs>(node.attrs);
  const std::vector<float> w = checkpoint_floats(c, layer + ".weight");
  const ChannelLayout layout = ChannelLayout::per_channel(graph.tensor(node.inputs[0]).shape, 0);
  std::vector<float> y(w.size()), min(static_cast<std::size_t>(layout.channels)), max(min.size()),
      storage;
  if (a.range == RangeMode::lsq) {
    const std::vector<float> step = checkpoint_floats(c, layer + "/weight_quant.scale");
    ref::lsq_forward(w.data(), y.data(), layout, step.data(), affine_grid(a));
  } else if (a.rounding == Rounding::pytorch) {
    std::vector<float> scale(min.size());
    std::vector<std::int32_t> zero_point(min.size());
    ref::weight_range(w.data(), layout, a.symmetric, min.data(), max.data(),
                      test::host_workspace(storage, layout));
    ref::affine_params_from_range(min.data(), max.data(), layout.channels, affine_grid(a),
                                  a.symmetric, scale.data(), zero_point.data());
    ref::fake_quant_affine(w.data(), y.data(), layout, scale.data(), zero_point.data(),
                           affine_grid(a), nullptr);
  } else {
    ref::fake_quant_weights(w.data(), y.data(), layout, {a.bits, a.narrow_range}, a.symmetric,
                            min.data(), max.data(), nullptr, test::host_workspace(storage, layout));
  }
  return y;
}

TEST(Deploy, WeightCodesDequantizeToTheFakeQuantWeightsBitForBit) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  for (const int bits : kWidths) {
    const std::string& path = test::trained_checkpoint(bits);
    const IntegerModel model = integer_model(path);
    const Checkpoint checkpoint = read_checkpoint(path);
    ASSERT_EQ(model.layers.size(), 5u);
    for (const IntegerLayer& l : model.layers) {
      SCOPED_TRACE(std::to_string(bits) + " bits, " + l.name);
      EXPECT_EQ(l.weight_bits, bits);
      const std::vector<float> want = fake_quant_weights(checkpoint, l.name);
      ASSERT_EQ(want.size(), l.weight_codes.size());
      const std::size_t taps = want.size() / static_cast<std::size_t>(l.out_channels);
      std::vector<float> got;
      for (std::size_t i = 0; i < want.size(); ++i) {
        const std::size_t c = i / taps;
        ASSERT_LT(l.weight_codes[i], 1 << bits);
        got.push_back(static_cast<float>(l.weight_codes[i] - l.weight_zero_point[c]) *
                      l.weight_scale[c]);
      }
      EXPECT_TRUE(test::same_bits(want, got));
    }
    EXPECT_EQ(model.layers.back().output.bits, 8);  // the logits keep 8 bits
  }
}

// PyTorch's rounding family exports too: affine codes and zero points.
TEST(Deploy, PyTorchRoundingExportsBitExactWeightsAndAgrees) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  const auto cpu = make_cpu_backend();
  TrainOptions o;
  o.data_dir = test::fashion_mnist_dir();
  o.quantize.rounding = Rounding::pytorch;
  o.quantize.quant_delay = 0;  // PyTorch's observers have no delay
  o.limit_train = 3072;
  o.limit_test = 256;
  o.batch = 64;
  o.epochs = 1;
  o.save_path = test::temp_path("pytorch.safetensors");
  train(o, *cpu, nullptr);
  const IntegerModel model = integer_model(o.save_path);
  EXPECT_EQ(model.rounding, Rounding::pytorch);
  const Checkpoint checkpoint = read_checkpoint(o.save_path);
  for (const IntegerLayer& l : model.layers) {
    const std::vector<float> want = fake_quant_weights(checkpoint, l.name);
    const std::size_t taps = want.size() / static_cast<std::size_t>(l.out_channels);
    std::vector<float> got;
    for (std::size_t i = 0; i < want.size(); ++i)
      got.push_back(static_cast<float>(l.weight_codes[i] - l.weight_zero_point[i / taps]) *
                    l.weight_scale[i / taps]);
    EXPECT_TRUE(test::same_bits(want, got)) << l.name;
  }
  const IntegerEvalReport r = evaluate_integer(o.save_path, o.data_dir, 2000, *cpu);
  EXPECT_GE(r.agreeing, 1998) << r.disagreeing.size() << " disagree";
  fs::remove(o.save_path);
}

TEST(Deploy, ModelFileRoundTripsAndIsAFractionOfTheCheckpoint) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  for (const int bits : kWidths) {
    SCOPED_TRACE(std::to_string(bits) + " bits");
    const std::string& checkpoint = test::trained_checkpoint(bits);
    const IntegerModel model = integer_model(checkpoint);
    const std::string path = test::temp_path(std::to_string(bits) + ".lowbit");
    save_integer_model(path, model);
    const IntegerModel loaded = load_integer_model(path);
    EXPECT_EQ(loaded.input_shape, model.input_shape);
    EXPECT_EQ(loaded.input.scale, model.input.scale);
    EXPECT_EQ(loaded.input.zero_point, model.input.zero_point);
    EXPECT_EQ(loaded.rounding, model.rounding);
    EXPECT_EQ(loaded.range, model.range);
    ASSERT_EQ(loaded.layers.size(), model.layers.size());
    for (std::size_t k = 0; k < model.layers.size(); ++k) {
      const IntegerLayer &a = model.layers[k], &b = loaded.layers[k];
      EXPECT_EQ(a.name, b.name);
      EXPECT_EQ(a.weight_codes, b.weight_codes);
      EXPECT_TRUE(test::same_bits(a.weight_scale, b.weight_scale));
      EXPECT_EQ(a.weight_zero_point, b.weight_zero_point);
      EXPECT_EQ(a.bias, b.bias);
      EXPECT_EQ(a.accumulator_shift, b.accumulator_shift);
      EXPECT_EQ(a.relu, b.relu);
      EXPECT_EQ(a.pool, b.pool);
      EXPECT_EQ(a.output.scale, b.output.scale);
      EXPECT_EQ(a.output.zero_point, b.output.zero_point);
      EXPECT_EQ(a.output.qmin, b.output.qmin);
      EXPECT_EQ(a.output.qmax, b.output.qmax);
    }
    // Packed codes: at 4 bits well under a sixth of the checkpoint (weights
    // and momentum in fp32), and they shrink with the width.
    const auto file = fs::file_size(path), trained = fs::file_size(checkpoint);
    if (bits == 4) {
      EXPECT_LE(file * 6, trained);
    } else if (bits == 2) {
      EXPECT_LE(file * 10, trained);
    }
    fs::remove(path);
  }
}

TEST(Deploy, DamagedOrForeignModelFilesAreRefused) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  const std::string& checkpoint = test::trained_checkpoint(4);
  const std::string path = test::temp_path("model.lowbit");
  save_integer_model(path, integer_model(checkpoint));
  const safetensors::File good = safetensors::load(path);
  const auto damaged = [&](const std::string& tensor, auto change) {
    safetensors::File file = good;
    file.metadata.erase(safetensors::kChecksumKey);
    for (safetensors::Tensor& t : file.tensors)
      if (t.name == tensor) change(t);
    safetensors::save(path, file);
  };
  damaged("fc1.requant.multiplier", [](safetensors::Tensor& t) { t.data[0] ^= 1; });
  EXPECT_TRUE(test::throws_mentioning([&] { load_integer_model(path); },
                                      "fc1's requantization of channel 0 does not follow"));
  damaged("conv2.weight.scale", [](safetensors::Tensor& t) { std::memset(t.data.data(), 0, 4); });
  EXPECT_TRUE(test::throws_mentioning([&] { load_integer_model(path); },
                                      "conv2's weight grid of channel 0 is invalid"));
  damaged("conv1.bias", [](safetensors::Tensor& t) {
    t.shape = {5};
    t.data.resize(20);
  });
  EXPECT_TRUE(test::throws_mentioning([&] { load_integer_model(path); }, "conv1.bias should hold"));
  EXPECT_TRUE(test::throws_mentioning([&] { load_integer_model(checkpoint); },
                                      "not a lowbit integer model"));
  fs::remove(path);
}

TEST(Deploy, CheckpointsWithoutIntegerFormAreRefused) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  const auto cpu = make_cpu_backend();
  TrainOptions o;
  o.data_dir = test::fashion_mnist_dir();
  o.limit_train = 256;
  o.limit_test = 64;
  o.batch = 64;
  o.epochs = 1;
  o.save_path = test::temp_path("refused.safetensors");
  const auto refused = [&](int weight_bits, int act_bits, std::int64_t delay, const char* needle) {
    o.quantize.weight_bits = weight_bits;
    o.quantize.activation_bits = act_bits;
    o.quantize.range = recommended_range(weight_bits, act_bits);
    o.quantize.quant_delay = o.quantize.range == RangeMode::lsq ? 0 : delay;
    train(o, *cpu, nullptr);
    return test::throws_mentioning([&] { integer_model(o.save_path); }, needle);
  };
  EXPECT_TRUE(refused(0, 0, 0, "float weights or activations"));
  EXPECT_TRUE(refused(4, 0, 0, "float weights or activations"));
  EXPECT_TRUE(refused(4, 4, 100, "not past its quant delay of 100"));
  EXPECT_TRUE(refused(3, 3, 0, "conv1's weight is 3-bit; the integer model takes 2, 4 or 8"));
  o.quantize.weight_group = 32;
  EXPECT_TRUE(refused(4, 4, 0,
                      "quantizes its weights in groups (--weight-group 32), and the integer "
                      "model holds one weight scale per output channel"));
  EXPECT_TRUE(refused(2, 2, 0, "quantizes its weights in groups (--weight-group 32)"));
  fs::remove(o.save_path);
}

// Integer-only inference against the fake-quant model it came from, on 2,000
// test images: the same top-1 on at least 99.9% of them.
TEST(Deploy, IntegerInferenceGivesFakeQuantsTop1) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  const auto cpu = make_cpu_backend();
  for (const int bits : kWidths) {
    SCOPED_TRACE(std::to_string(bits) + " bits");
    const IntegerEvalReport r =
        evaluate_integer(test::trained_checkpoint(bits), test::fashion_mnist_dir(), 2000, *cpu);
    ASSERT_TRUE(r.compared);
    EXPECT_EQ(r.examples, 2000);
    EXPECT_GE(r.agreeing, 1998) << r.disagreeing.size() << " disagree";
    EXPECT_EQ(r.agreeing + static_cast<std::int64_t>(r.disagreeing.size()), r.examples);
    EXPECT_LE(std::fabs(r.accuracy - r.fake_quant_accuracy), 0.001 + 1e-12);  // 0.1 point
    EXPECT_GT(r.accuracy, 0.3);  // 48 steps: trained, if little
  }
}

TEST(Deploy, TheExportedFileInfersAsTheCheckpointDoes) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  const auto cpu = make_cpu_backend(1);
  const Dataset test = load_mnist_test_split(test::fashion_mnist_dir(), 300);
  const IntegerModel model = integer_model(test::trained_checkpoint(2));
  const std::string path = test::temp_path("two.lowbit");
  save_integer_model(path, model);
  const auto codes = integer_inference(model, test.images, test.count, *cpu);
  EXPECT_EQ(integer_inference(load_integer_model(path), test.images, test.count, *cpu), codes);
  // Any thread count, any batch split: integers.
  const auto two_threads = make_cpu_backend(2);
  EXPECT_EQ(integer_inference(model, test.images, test.count, *two_threads), codes);
  EXPECT_TRUE(test::throws_mentioning(
      [&] { integer_inference(model, test.images, test.count + 1, *cpu); }, "pixels are not"));
  fs::remove(path);
}

TEST(GpuDeploy, IntegerInferenceEqualsTheCpus) {
  LOWBIT_REQUIRE_GPU();
  LOWBIT_REQUIRE_FASHION_MNIST();
  const Dataset test = load_mnist_test_split(test::fashion_mnist_dir(), 1000);
  const auto cpu = make_cpu_backend();
  const auto gpu = make_cuda_backend();
  for (const int bits : kWidths) {
    const IntegerModel model = integer_model(test::trained_checkpoint(bits));
    EXPECT_EQ(integer_inference(model, test.images, test.count, *gpu),
              integer_inference(model, test.images, test.count, *cpu))
        << bits << " bits";
  }
}

}  // namespace
}  // namespace lowbit
