// Checkpoints of real training runs: bit-identical save/load and resume,
// corruption detection, and option checks on resume.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>

#include "train/checkpoint.hpp"
#include "lowbit/error.hpp"
#include "lowbit/graph.hpp"
#include "lowbit/quantize.hpp"
#include "lowbit/safetensors.hpp"
#include "lowbit/trainer.hpp"
#include "nn/network.hpp"
#include "test_util.hpp"

namespace lowbit {
namespace {

namespace fs = std::filesystem;

/// 6 steps an epoch; a quant delay of 8 (not for lsq, which has none), so
/// that resuming after one epoch lands inside the delay.
TrainOptions tiny_run(RangeMode mode) {
  TrainOptions o;
  o.data_dir = test::fashion_mnist_dir();
  o.quantize.range = mode;
  o.quantize.quant_delay = mode == RangeMode::lsq ? 0 : 8;
  o.limit_train = 384;
  o.limit_test = 256;
  o.batch = 64;
  o.epochs = 1;
  return o;
}

std::vector<std::uint8_t> file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

void write_bytes(const std::string& path, const std::vector<std::uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

/// Every tensor of two checkpoints, byte for byte.
void expect_same_state(const std::string& a, const std::string& b) {
  const Checkpoint x = read_checkpoint(a), y = read_checkpoint(b);
  ASSERT_EQ(x.file.tensors.size(), y.file.tensors.size());
  for (std::size_t i = 0; i < x.file.tensors.size(); ++i) {
    EXPECT_EQ(x.file.tensors[i].name, y.file.tensors[i].name);
    EXPECT_TRUE(x.file.tensors[i].data == y.file.tensors[i].data) << x.file.tensors[i].name;
  }
  EXPECT_EQ(x.progress.epochs_done, y.progress.epochs_done);
  EXPECT_EQ(x.progress.steps_done, y.progress.steps_done);
}

class CheckpointResume : public ::testing::TestWithParam<RangeMode> {};

// With a cosine schedule, so that the resumed epochs continue its rates.
TEST_P(CheckpointResume, ContinuesBitIdentically) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  const auto cpu = make_cpu_backend();
  TrainOptions straight = tiny_run(GetParam());
  straight.lr_schedule.kind = LrScheduleKind::cosine;
  straight.epochs = 3;
  straight.save_path = test::temp_path("straight");
  const TrainReport whole = train(straight, *cpu, nullptr);

  TrainOptions first = tiny_run(GetParam());
  first.lr_schedule.kind = LrScheduleKind::cosine;
  first.save_path = test::temp_path("resumed");
  train(first, *cpu, nullptr);
  EXPECT_EQ(read_checkpoint(first.save_path).progress.epochs_done, 1);
  EXPECT_EQ(checkpoint_options(first.save_path).lr_schedule.kind, LrScheduleKind::cosine);
  TrainOptions rest = tiny_run(GetParam());
  rest.lr_schedule.kind = LrScheduleKind::cosine;
  rest.epochs = 3;
  rest.resume_path = first.save_path;
  rest.save_path = first.save_path;
  const TrainReport r = train(rest, *cpu, nullptr);
  ASSERT_EQ(r.epochs.size(), 2u);
  EXPECT_EQ(r.epochs[0].epoch, 2);
  EXPECT_EQ(r.epochs[0].learning_rate, whole.epochs[1].learning_rate);
  EXPECT_EQ(r.epochs[1].learning_rate, whole.epochs[2].learning_rate);
  EXPECT_LT(r.epochs[1].learning_rate, r.epochs[0].learning_rate);
  expect_same_state(straight.save_path, rest.save_path);
  fs::remove(straight.save_path);
  fs::remove(first.save_path);
}

INSTANTIATE_TEST_SUITE_P(RangeModes, CheckpointResume,
                         ::testing::Values(RangeMode::ema, RangeMode::lagged, RangeMode::lsq),
                         [](const auto& info) { return std::string(to_string(info.param)); });

// Groups of 32 (per-group LSQ steps and per-group weight ranges): saved,
// resumed bit-identically, and a different group size refused on resume.
TEST(Checkpoint, WeightGroupsRoundTripAndResumeBitIdentically) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  const auto cpu = make_cpu_backend();
  for (const RangeMode mode : {RangeMode::ema, RangeMode::lsq}) {
    SCOPED_TRACE(to_string(mode));
    TrainOptions straight = tiny_run(mode);
    straight.quantize.weight_group = 32;
    straight.epochs = 2;
    straight.save_path = test::temp_path("grouped_straight");
    train(straight, *cpu, nullptr);
    const Checkpoint saved = read_checkpoint(straight.save_path);
    EXPECT_EQ(saved.options.quantize.weight_group, 32);
    if (mode == RangeMode::lsq) {  // one learned step per group: 80 for conv2's rows of 150
      bool found = false;
      for (const safetensors::Tensor& t : saved.file.tensors)
        if (t.name == "conv2/weight_quant.scale") {
          found = true;
          EXPECT_EQ(t.shape, std::vector<std::int64_t>{80});
        }
      EXPECT_TRUE(found);
    }

    TrainOptions first = tiny_run(mode);
    first.quantize.weight_group = 32;
    first.save_path = test::temp_path("grouped_resumed");
    train(first, *cpu, nullptr);
    TrainOptions rest = checkpoint_options(first.save_path);
    rest.epochs = 2;
    rest.resume_path = rest.save_path = first.save_path;
    TrainOptions other = rest;
    other.quantize.weight_group = 64;
    EXPECT_TRUE(test::throws_mentioning([&] { train(other, *cpu, nullptr); },
                                        "cannot resume with a different --weight-group"));
    train(rest, *cpu, nullptr);
    expect_same_state(straight.save_path, rest.save_path);
    fs::remove(straight.save_path);
    fs::remove(first.save_path);
  }
}

TEST(Checkpoint, EvaluationReproducesTheTrainingRunsAccuracy) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  const auto cpu = make_cpu_backend();
  TrainOptions o = tiny_run(RangeMode::ema);
  o.save_path = test::temp_path("eval");
  const TrainReport trained = train(o, *cpu, nullptr);
  const EvalReport evaluated = evaluate(o.save_path, o.data_dir, o.limit_test, *cpu);
  EXPECT_EQ(evaluated.test_accuracy, trained.test_accuracy);
  EXPECT_EQ(evaluated.examples, 256);
  EXPECT_EQ(evaluated.weight_bits, 4);
  // Saving what was loaded gives the same bytes.
  const TrainOptions saved = checkpoint_options(o.save_path);
  EXPECT_EQ(saved.quantize.weight_bits, o.quantize.weight_bits);
  EXPECT_EQ(saved.quantize.quant_delay, 8);
  EXPECT_EQ(saved.batch, 64);
  EXPECT_EQ(saved.seed, o.seed);
  fs::remove(o.save_path);
}

// A checkpoint whose weights are not all finite (its run diverged) is
// refused for evaluation and for resuming, naming the parameter.
TEST(Checkpoint, NonFiniteWeightsAreRefused) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  const auto cpu = make_cpu_backend();
  TrainOptions o = tiny_run(RangeMode::ema);
  o.save_path = test::temp_path("nonfinite");
  train(o, *cpu, nullptr);
  const Checkpoint c = read_checkpoint(o.save_path);
  Network net(quantize(lenet5(), c.options.quantize), *cpu, c.options.batch);
  restore_checkpoint(c, net, *cpu, nullptr);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (const ParameterSlot& slot : net.parameter_slots())
    if (slot.name == "fc2.weight")
      cpu->upload(net.parameters() + slot.offset + 5, &nan, sizeof nan);
  const std::vector<float> velocity(static_cast<std::size_t>(net.parameter_count()));
  save_checkpoint(o.save_path, c.options, c.progress, net, *cpu, velocity.data());

  const std::string problem = o.save_path + ": fc2.weight holds NaN or infinite values";
  EXPECT_TRUE(test::throws_mentioning([&] { evaluate(o.save_path, o.data_dir, 64, *cpu); },
                                      problem));
  TrainOptions resume = o;
  resume.resume_path = o.save_path;
  resume.epochs = 2;
  EXPECT_TRUE(test::throws_mentioning([&] { train(resume, *cpu, nullptr); }, problem));
  fs::remove(o.save_path);
}

TEST(Checkpoint, CorruptionIsDetectedAndThePreviousFileSurvives) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  const auto cpu = make_cpu_backend();
  TrainOptions o = tiny_run(RangeMode::ema);
  o.save_path = test::temp_path("good");
  train(o, *cpu, nullptr);
  const std::vector<std::uint8_t> good = file_bytes(o.save_path);
  const std::string bad = test::temp_path("bad");

  std::vector<std::uint8_t> flipped = good;
  flipped[flipped.size() / 2] ^= 0x10;
  write_bytes(bad, flipped);
  EXPECT_THROW(evaluate(bad, o.data_dir, 64, *cpu), Error);
  TrainOptions resume = o;
  resume.resume_path = bad;
  resume.save_path.clear();
  EXPECT_THROW(train(resume, *cpu, nullptr), Error);

  write_bytes(bad, std::vector<std::uint8_t>(good.begin(), good.begin() + good.size() / 3));
  EXPECT_THROW(evaluate(bad, o.data_dir, 64, *cpu), Error);

  // A save that cannot complete leaves the last good checkpoint in place.
  TrainOptions failing = o;
  failing.save_path = test::temp_path("no_such_dir") + "/checkpoint.safetensors";
  EXPECT_THROW(train(failing, *cpu, nullptr), Error);
  EXPECT_TRUE(file_bytes(o.save_path) == good);
  EXPECT_NO_THROW(evaluate(o.save_path, o.data_dir, 64, *cpu));
  fs::remove(bad);
  fs::remove(o.save_path);
}

TEST(Checkpoint, ResumeRejectsDifferentTrainingOptions) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  const auto cpu = make_cpu_backend();
  TrainOptions o = tiny_run(RangeMode::ema);
  o.save_path = test::temp_path("options");
  train(o, *cpu, nullptr);
  TrainOptions other = o;
  other.resume_path = o.save_path;
  other.epochs = 2;
  other.quantize.weight_bits = 8;
  try {
    train(other, *cpu, nullptr);
    ADD_FAILURE() << "resuming with other bits must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--weight-bits"), std::string::npos) << e.what();
  }
  other = o;
  other.resume_path = o.save_path;
  other.epochs = 2;
  other.batch = 32;
  EXPECT_THROW(train(other, *cpu, nullptr), Error);
  other = o;
  other.resume_path = o.save_path;
  other.epochs = 2;
  other.lr_schedule = {LrScheduleKind::step, {1}, 0.1f};
  EXPECT_TRUE(test::throws_mentioning([&] { train(other, *cpu, nullptr); },
                                      "cannot resume with a different learning-rate schedule"));
  fs::remove(o.save_path);
}

// Files that pass the checksum yet make no sense: written by another tool,
// by hand, or by a bug. Each is refused naming the file and the field.
class CheckpointContents : public ::testing::Test {
 protected:
  /// A checkpoint of an untrained LeNet-5 on 28x28 images after "1 epoch of
  /// 10 steps": no dataset needed.
  void SetUp() override {
    options_.quantize.quant_delay = 3;  // a run's, as train() resolves it
    const auto cpu = make_cpu_backend();
    Network network(quantize(lenet5(), options_.quantize), *cpu, 1);
    network.initialize_parameters(options_.seed);
    const Buffer velocity =
        cpu->allocate(static_cast<std::size_t>(network.parameter_count()) * sizeof(float));
    save_checkpoint(path_, options_, {1, 10}, network, *cpu, velocity.as<float>());
  }

  /// Rewrites the checkpoint through `edit` with a valid checksum.
  void rewrite(const std::function<void(safetensors::File&)>& edit) const {
    safetensors::File file = safetensors::load(path_);
    file.metadata.erase(safetensors::kChecksumKey);
    edit(file);
    safetensors::save(path_, file);
  }

  void set_option(const std::string& key, const nlohmann::json& value) const {
    rewrite([&](safetensors::File& file) {
      nlohmann::json options = nlohmann::json::parse(file.metadata.at("lowbit.options"));
      options[key] = value;
      file.metadata["lowbit.options"] = options.dump();
    });
  }

  /// Overwrites the values of the first tensor whose name ends with `suffix`
  /// and returns its name.
  template <class T>
  std::string set_tensor(const std::string& suffix, const std::vector<T>& values) const {
    std::string name;
    rewrite([&](safetensors::File& file) {
      for (safetensors::Tensor& t : file.tensors) {
        if (t.name.size() < suffix.size() ||
            t.name.compare(t.name.size() - suffix.size(), suffix.size(), suffix) != 0)
          continue;
        EXPECT_EQ(t.data.size(), values.size() * sizeof(T)) << t.name;
        std::memcpy(t.data.data(), values.data(), t.data.size());
        name = t.name;
        return;
      }
      ADD_FAILURE() << "no tensor ends with " << suffix;
    });
    return name;
  }

  /// read_checkpoint() fails naming the file and saying `problem`.
  ::testing::AssertionResult refused(const std::string& problem) const {
    return test::throws_mentioning([&] { read_checkpoint(path_); }, path_ + ": " + problem);
  }

  TrainOptions options_;
  test::ScratchDirectory scratch_;
  std::string path_ = (scratch_.path() / "checkpoint.safetensors").string();
};

TEST_F(CheckpointContents, AValidCheckpointLoads) {
  const Checkpoint c = read_checkpoint(path_);
  EXPECT_EQ(c.path, path_);
  EXPECT_EQ(c.input_shape, (std::vector<std::int64_t>{1, 28, 28}));
  EXPECT_EQ(c.progress.epochs_done, 1);
  EXPECT_EQ(c.progress.steps_done, 10);
}

TEST_F(CheckpointContents, NegativeProgressIsRefused) {
  set_tensor<std::int64_t>("trainer.progress", {-5, 10, 1});
  EXPECT_TRUE(refused("trainer.progress epochs_done is -5, expected in [0, " +
                      std::to_string(options_.epochs) + "]"));
}

TEST_F(CheckpointContents, ProgressBeyondTheRunIsRefused) {
  const std::int64_t beyond = options_.epochs + 1;
  set_tensor<std::int64_t>("trainer.progress", {beyond, 10 * beyond, 1});
  EXPECT_TRUE(refused("trainer.progress epochs_done is " + std::to_string(beyond) +
                      ", expected in [0, " + std::to_string(options_.epochs) +
                      "] (the run's epochs)"));
  set_tensor<std::int64_t>("trainer.progress", {2, 1, 1});
  EXPECT_TRUE(refused("trainer.progress steps_done is 1, expected >= epochs_done (2)"));
  set_tensor<std::int64_t>("trainer.progress", {1, 10, 7});
  EXPECT_TRUE(refused("trainer.progress seed is 7, expected the options' seed 1"));
}

TEST_F(CheckpointContents, ProgressOfTheWrongTypeIsRefused) {
  rewrite([](safetensors::File& file) {
    for (safetensors::Tensor& t : file.tensors)
      if (t.name == "trainer.progress") t.dtype = safetensors::DType::F64;
  });
  EXPECT_TRUE(refused("trainer.progress must hold 3 int64 values"));
}

TEST_F(CheckpointContents, InvertedOrNonFiniteEmaRangesAreRefused) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::string name = set_tensor<float>(".ema.range", {1.0f, -1.0f});
  ASSERT_FALSE(name.empty());
  EXPECT_TRUE(refused(name + " is [1, -1], expected a finite [min, max] with min <= 0 <= max"));
  set_tensor<float>(".ema.range", {nan, 2.0f});
  EXPECT_TRUE(refused(name + " is [nan, 2]"));
  set_tensor<float>(".ema.range", {0.5f, 2.0f});  // an EMA of min(x, 0) is never above 0
  EXPECT_TRUE(refused(name + " is [0.5, 2]"));
}

TEST_F(CheckpointContents, EmaCountersAndPowerOutsideTheirInvariantsAreRefused) {
  const std::string power = set_tensor<float>(".ema.decay_pow", {2.0f});
  EXPECT_TRUE(refused(power + " is 2, expected in [0, 1]"));
  set_tensor<float>(".ema.decay_pow", {1.0f});
  const std::string counters = set_tensor<std::int64_t>(".ema.counters", {3, 4, 0});
  EXPECT_TRUE(refused(counters + " is [3, 4, 0], expected [steps, updates, skipped] with "
                                 "updates + skipped <= steps"));
  set_tensor<std::int64_t>(".ema.counters", {-1, 0, 0});
  EXPECT_TRUE(refused(counters + " is [-1, 0, 0]"));
}

TEST_F(CheckpointContents, AnotherModelIsRefused) {
  set_option("model", "resnet18");
  EXPECT_TRUE(refused("the model is \"resnet18\", expected \"lenet5\""));
}

TEST_F(CheckpointContents, AnInputShapeLeNet5CannotTakeIsRefused) {
  set_option("input_shape", {1, 8, 8});
  EXPECT_TRUE(refused("input_shape is [1, 8, 8], expected [1, H, W] with H, W >= 12"));
  set_option("input_shape", {3, 28, 28});
  EXPECT_TRUE(refused("input_shape is [3, 28, 28]"));
  set_option("input_shape", {28, 28});
  EXPECT_TRUE(refused("input_shape is [28, 28]"));
}

TEST_F(CheckpointContents, OptionsOutOfRangeAreRefused) {
  set_option("batch", 0);
  EXPECT_TRUE(refused("batch is 0, expected >= 1"));
  set_option("batch", 128);
  set_option("normalization_std", 0.0);
  EXPECT_TRUE(refused("normalization_std is 0, expected > 0"));
  set_option("normalization_std", 0.353);
  set_option("momentum", 1.5);
  EXPECT_TRUE(refused("momentum is 1.5, expected in [0, 1)"));
  set_option("momentum", 0.9);
  set_option("weight_bits", 1);
  EXPECT_TRUE(refused("the checkpoint's quantization options are invalid: "));
  set_option("weight_bits", 4);
  set_option("rounding", "bankers");
  EXPECT_TRUE(refused("bad options in the checkpoint: unknown rounding 'bankers'"));
}

TEST_F(CheckpointContents, TheWeightGroupLoadsAndIsChecked) {
  EXPECT_EQ(read_checkpoint(path_).options.quantize.weight_group, 0);
  set_option("weight_group", 32);
  EXPECT_EQ(read_checkpoint(path_).options.quantize.weight_group, 32);
  set_option("weight_group", 1);
  EXPECT_TRUE(
      refused("the checkpoint's quantization options are invalid: quantize: "
              "weight_group must be 0"));
  set_option("weight_group", 4);  // conv1's rows of 25 have no group in 2..4
  EXPECT_TRUE(refused("the checkpoint's quantization options are invalid: quantize: "
                      "weight_group 4 leaves the rows of conv1 (25 weights) no group size"));
  // Checkpoints from before weight groups quantized per channel.
  rewrite([](safetensors::File& file) {
    nlohmann::json options = nlohmann::json::parse(file.metadata.at("lowbit.options"));
    options.erase("weight_group");
    file.metadata["lowbit.options"] = options.dump();
  });
  EXPECT_EQ(read_checkpoint(path_).options.quantize.weight_group, 0);
}

TEST_F(CheckpointContents, TheLearningRateScheduleLoadsAndIsChecked) {
  const auto schedule = [](const char* kind, std::vector<std::int64_t> milestones,
                           double factor) {
    return nlohmann::json{{"kind", kind}, {"milestones", milestones}, {"factor", factor}};
  };
  set_option("lr_schedule", schedule("step", {2, 5}, 0.5));
  const LrSchedule loaded = read_checkpoint(path_).options.lr_schedule;
  EXPECT_EQ(loaded.kind, LrScheduleKind::step);
  EXPECT_EQ(loaded.milestones, (std::vector<std::int64_t>{2, 5}));
  EXPECT_EQ(loaded.factor, 0.5f);
  set_option("lr_schedule", schedule("step", {5, 2}, 0.5));
  EXPECT_TRUE(refused("lr_schedule milestones is [5, 2], expected increasing epochs >= 1"));
  set_option("lr_schedule", schedule("step", {0}, 0.5));
  EXPECT_TRUE(refused("lr_schedule milestones is [0]"));
  set_option("lr_schedule", schedule("step", {2}, 0.0));
  EXPECT_TRUE(refused("lr_schedule factor is 0, expected in (0, 1]"));
  set_option("lr_schedule", schedule("linear", {}, 0.1));
  EXPECT_TRUE(refused("bad options in the checkpoint: unknown learning-rate schedule 'linear'"));
  // Checkpoints from before schedules trained at a constant rate.
  rewrite([](safetensors::File& file) {
    nlohmann::json options = nlohmann::json::parse(file.metadata.at("lowbit.options"));
    options.erase("lr_schedule");
    file.metadata["lowbit.options"] = options.dump();
  });
  EXPECT_EQ(read_checkpoint(path_).options.lr_schedule.kind, LrScheduleKind::constant);
}

TEST_F(CheckpointContents, DataOfAnotherSizeThanTheModelTakesIsRefused) {
  const Checkpoint c = read_checkpoint(path_);
  Dataset data;
  data.rows = 32;
  data.cols = 32;
  data.images_path = "data/t10k-images-idx3-ubyte";
  EXPECT_TRUE(test::throws_mentioning(
      [&] { expect_input_matches(c, data); },
      "data/t10k-images-idx3-ubyte holds 32x32 images, but the model in " + path_ +
          " takes 28x28"));
  data.rows = data.cols = 28;
  EXPECT_NO_THROW(expect_input_matches(c, data));
}

}  // namespace
}  // namespace lowbit
