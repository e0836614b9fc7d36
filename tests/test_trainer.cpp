// The trainer end to end on the CPU with real Fashion-MNIST (CI installs it),
// and on the GPU where there is one.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "lowbit/error.hpp"
#include "lowbit/trainer.hpp"
#include "test_util.hpp"
#include "train/checkpoint.hpp"

namespace lowbit {
namespace {

namespace fs = std::filesystem;

/// A run small enough for CI: real images, a few epochs of a few steps, and
/// the default quant delay (a tenth of the steps).
TrainOptions small_run(int bits, std::int64_t limit_train = 512) {
  TrainOptions o;
  o.data_dir = test::fashion_mnist_dir();
  o.quantize.weight_bits = bits;
  o.quantize.activation_bits = bits;
  o.limit_train = limit_train;
  o.limit_test = 500;
  o.epochs = 1;
  o.batch = 64;
  return o;
}

class Recorder : public TrainObserver {
 public:
  void epoch_started(std::int64_t epoch, std::int64_t epochs, std::int64_t steps) override {
    started.push_back(epoch);
    total_epochs = epochs;
    steps_per_epoch = steps;
  }
  void progress(std::int64_t step, std::int64_t steps, double loss, double rate) override {
    EXPECT_LE(step, steps);
    EXPECT_TRUE(std::isfinite(loss));
    EXPECT_GT(rate, 0.0);
    last_step = step;
  }
  void epoch_finished(const EpochReport& report) override { finished.push_back(report); }

  std::vector<std::int64_t> started;
  std::vector<EpochReport> finished;
  std::int64_t total_epochs = 0, steps_per_epoch = 0, last_step = 0;
};

TEST(Trainer, LearnsFashionMnistAt4BitsOnTheCpu) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  TrainOptions o = small_run(4, 3072);
  o.epochs = 2;
  o.limit_test = 1000;
  const auto cpu = make_cpu_backend();
  Recorder recorder;
  const TrainReport r = train(o, *cpu, &recorder);
  ASSERT_EQ(r.epochs.size(), 2u);
  EXPECT_LT(r.epochs[1].loss, r.epochs[0].loss);
  EXPECT_LT(r.epochs[0].loss, 2.302585);  // below ln(10): better than guessing
  EXPECT_GT(r.test_accuracy, 0.60) << "chance is 0.10";
  EXPECT_EQ(r.test_accuracy, r.epochs[1].test_accuracy);
  EXPECT_EQ(r.weight_bits, 4);
  EXPECT_EQ(r.skipped_ema_batches, 0u);
  EXPECT_EQ(r.steps_done, 2 * 48);
  EXPECT_EQ(r.quant_delay, 9) << "a tenth of the run's 96 steps";
  EXPECT_EQ(r.first_quantized_step, 10);
  EXPECT_NE(r.device.find("cpu"), std::string::npos);
  EXPECT_GT(r.train_images_per_second, 0.0);
  EXPECT_EQ(recorder.started, (std::vector<std::int64_t>{1, 2}));
  EXPECT_EQ(recorder.steps_per_epoch, 3072 / 64);
  EXPECT_EQ(recorder.last_step, 3072 / 64);
  EXPECT_EQ(recorder.finished.size(), 2u);
}

TEST(Trainer, AutoQuantDelayQuantizesMostOfEveryRun) {
  EXPECT_EQ(auto_quant_delay(468, RangeMode::ema), 46);     // README's quick run: 1 epoch
  EXPECT_EQ(auto_quant_delay(3744, RangeMode::lagged), 374);  // the default 8 epochs
  EXPECT_EQ(auto_quant_delay(100000, RangeMode::ema), 500);
  EXPECT_EQ(auto_quant_delay(9, RangeMode::ema), 0);
  EXPECT_EQ(auto_quant_delay(3744, RangeMode::lsq), 0) << "lsq quantizes from the first step";
  EXPECT_EQ(TrainOptions{}.quantize.quant_delay, kAutoQuantDelay);
}

TEST(Trainer, ReportsWhenQuantizationStartedOrThatItNeverDid) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  const auto cpu = make_cpu_backend();
  TrainOptions o = small_run(4);  // 8 steps
  o.quantize.quant_delay = 8;
  TrainReport r = train(o, *cpu, nullptr);
  EXPECT_EQ(r.steps_done, 8);
  EXPECT_EQ(r.first_quantized_step, 0) << "the delay outlasted the run";
  o.quantize.quant_delay = 0;
  o.quantize.range = RangeMode::lagged;  // quantizes with the EMA of the batches before
  EXPECT_EQ(train(o, *cpu, nullptr).first_quantized_step, 2);
  o.quantize.range = RangeMode::lsq;
  r = train(o, *cpu, nullptr);
  EXPECT_EQ(r.first_quantized_step, 1);
  EXPECT_FALSE(r.skipped_ema_batches.has_value()) << "lsq has no EMA";
  o = small_run(0);
  r = train(o, *cpu, nullptr);
  EXPECT_EQ(r.first_quantized_step, 0) << "fp32";
  EXPECT_FALSE(r.skipped_ema_batches.has_value()) << "fp32 has no EMA";
  o = small_run(4);
  o.quantize.range = RangeMode::lsq;
  o.quantize.quant_delay = 3;
  EXPECT_THROW(train(o, *cpu, nullptr), Error) << "lsq quantizes from the first step";
}

// Each quantizer's final state, with the clip counts of the last epoch only.
TEST(Trainer, ReportsEveryQuantizerAfterTheLastEpoch) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  const auto cpu = make_cpu_backend();
  TrainOptions o = small_run(4, 1024);
  o.epochs = 2;
  o.quantize.quant_delay = 0;
  const TrainReport r = train(o, *cpu, nullptr);
  const std::vector<std::string> layers = {"conv1", "conv2", "fc1", "fc2", "fc3"};
  const std::vector<std::string> outputs = {"relu1", "relu2", "relu3", "relu4", "fc3"};
  const std::vector<std::int64_t> per_example = {6 * 28 * 28, 16 * 10 * 10, 120, 84, 10};
  ASSERT_EQ(r.quantizers.size(), 10u);
  for (std::size_t k = 0; k < layers.size(); ++k) {
    const QuantizerReport& w = r.quantizers[2 * k];
    const QuantizerReport& a = r.quantizers[2 * k + 1];
    EXPECT_EQ(w.name, layers[k] + "/weight_quant");
    EXPECT_EQ(a.name, outputs[k] + "/act_quant");
    EXPECT_TRUE(w.weights);
    EXPECT_FALSE(a.weights);
    EXPECT_EQ(w.bits, 4);
    EXPECT_EQ(a.bits, k == 4 ? 8 : 4);
    EXPECT_EQ(w.min.size(), w.max.size());
    EXPECT_GT(w.max.size(), 1u);
    // 16 steps of 64 in the last epoch, every one quantized (no delay).
    EXPECT_EQ(a.quantized, static_cast<unsigned long long>(1024 * per_example[k])) << a.name;
    EXPECT_LE(a.clipped, a.quantized) << a.name;
  }
  EXPECT_TRUE(train(small_run(0, 128), *cpu, nullptr).quantizers.empty());
}

TEST(Trainer, DivergenceStopsTrainingAndKeepsTheLastCheckpoint) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  const auto cpu = make_cpu_backend();
  TrainOptions o = small_run(4, 3072);  // 48 steps, a sync every 2
  o.sgd.learning_rate = 1e30f;
  EXPECT_TRUE(test::throws_mentioning([&] { train(o, *cpu, nullptr); },
                                      "training diverged: the loss became non-finite in epoch 1 "
                                      "between steps 1 and 2; try a lower --lr than 1e+30"));

  // A run that diverges in its second epoch leaves the first epoch's checkpoint.
  o = small_run(4, 3072);
  o.save_path = test::temp_path("diverged");
  train(o, *cpu, nullptr);
  const Checkpoint saved = read_checkpoint(o.save_path);
  o.resume_path = o.save_path;
  o.epochs = 2;
  o.sgd.learning_rate = 1e30f;
  EXPECT_TRUE(test::throws_mentioning([&] { train(o, *cpu, nullptr); },
                                      "non-finite in epoch 2 between steps 1 and 2; try a lower "
                                      "--lr than 1e+30; " + o.save_path + " keeps epoch 1"));
  const Checkpoint kept = read_checkpoint(o.save_path);
  EXPECT_EQ(kept.progress.epochs_done, 1);
  ASSERT_EQ(kept.file.tensors.size(), saved.file.tensors.size());
  for (std::size_t i = 0; i < kept.file.tensors.size(); ++i)
    EXPECT_TRUE(kept.file.tensors[i].data == saved.file.tensors[i].data)
        << kept.file.tensors[i].name;
  fs::remove(o.save_path);
}

TEST(Trainer, EveryRangeModeAndWidthTrains) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  const auto cpu = make_cpu_backend();
  for (const RangeMode mode : {RangeMode::ema, RangeMode::lagged, RangeMode::lsq}) {
    for (const int bits : {0, 2, 8}) {
      TrainOptions o = small_run(bits, 3072);
      o.quantize.range = mode;
      const TrainReport r = train(o, *cpu, nullptr);
      EXPECT_GT(r.test_accuracy, 0.35) << to_string(mode) << " " << bits << " bits";
      EXPECT_TRUE(std::isfinite(r.epochs[0].loss));
    }
  }
}

TEST(Trainer, GroupedWeightsTrainAndReportTheirGroups) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  const auto cpu = make_cpu_backend();
  // Rows of 25, 150, 400, 120 and 84 weights at G = 32.
  const std::vector<std::int64_t> sizes = {25, 30, 25, 30, 28};
  const std::vector<std::int64_t> rows = {6 * 25, 16 * 150, 120 * 400, 84 * 120, 10 * 84};
  for (const int bits : {4, 2}) {
    SCOPED_TRACE(std::to_string(bits) + " bits");
    TrainOptions o = small_run(bits, 3072);
    o.quantize.range = recommended_range(bits, bits);  // lsq at 2 bits
    o.quantize.quant_delay = 0;
    o.quantize.weight_group = 32;
    const TrainReport grouped = train(o, *cpu, nullptr);
    // 48 steps: well above chance (per channel: 62% at 4 bits, 37% at 2).
    EXPECT_GT(grouped.test_accuracy, 0.25);
    ASSERT_EQ(grouped.quantizers.size(), 10u);
    for (std::size_t k = 0; k < 5; ++k) {
      const QuantizerReport& w = grouped.quantizers[2 * k];
      EXPECT_EQ(w.group, sizes[k]) << w.name;
      const std::size_t groups = static_cast<std::size_t>(rows[k] / sizes[k]);
      EXPECT_EQ(bits == 2 ? w.step.size() : w.max.size(), groups) << w.name;
      EXPECT_EQ(grouped.quantizers[2 * k + 1].group, 0);
    }
    o.quantize.weight_group = 0;
    const TrainReport per_channel = train(o, *cpu, nullptr);
    EXPECT_EQ(per_channel.quantizers[0].group, 0);
    EXPECT_NE(per_channel.epochs[0].loss, grouped.epochs[0].loss)
        << "groups must change the computation";
  }
}

TEST(Trainer, PyTorchRoundingTrains) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  const auto cpu = make_cpu_backend();
  TrainOptions o = small_run(4, 3072);
  o.quantize.rounding = Rounding::pytorch;
  o.quantize.quant_delay = 0;  // PyTorch's observers have no delay
  const TrainReport r = train(o, *cpu, nullptr);
  EXPECT_GT(r.test_accuracy, 0.35);
}

TEST(Trainer, SameSeedGivesIdenticalWeights) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  const auto cpu = make_cpu_backend();
  const auto weights = [&](std::uint64_t seed, const std::string& name) {
    TrainOptions o = small_run(4);
    o.seed = seed;
    o.save_path = test::temp_path(name);
    train(o, *cpu, nullptr);
    std::vector<std::uint8_t> all;
    for (const auto& t : read_checkpoint(o.save_path).file.tensors)
      all.insert(all.end(), t.data.begin(), t.data.end());
    fs::remove(o.save_path);
    return all;
  };
  const std::vector<std::uint8_t> a = weights(7, "seed_a"), b = weights(7, "seed_b");
  EXPECT_TRUE(a == b);
  EXPECT_FALSE(a == weights(8, "seed_c"));
}

// The CPU backend shares its work out among threads without changing a bit:
// a run's checkpoint is the same file with 1, 2 and 3 threads, at every
// width and range mode. Batch 200 puts every op of the step over the size
// at which it goes parallel, and leaves uneven shares.
TEST(Trainer, CheckpointBytesDoNotDependOnTheCpuThreadCount) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  struct Config {
    int bits;
    RangeMode range;
  };
  for (const Config config :
       {Config{0, RangeMode::ema}, Config{8, RangeMode::ema}, Config{4, RangeMode::ema},
        Config{4, RangeMode::lagged}, Config{2, RangeMode::lsq}, Config{3, RangeMode::ema}}) {
    const std::string what = std::to_string(config.bits) + " bits, " + to_string(config.range);
    std::vector<std::string> files;
    for (const int threads : {1, 2, 3}) {
      const test::ThreadCount scope(threads);
      const auto cpu = make_cpu_backend();
      TrainOptions o = small_run(config.bits, 600);
      o.batch = 200;
      o.limit_test = 200;
      o.quantize.range = config.range;
      if (config.range != RangeMode::lsq) o.quantize.quant_delay = 1;
      o.save_path = test::temp_path("threads_" + std::to_string(threads));
      train(o, *cpu, nullptr);
      files.push_back(test::read_file(o.save_path));
      fs::remove(o.save_path);
    }
    EXPECT_TRUE(files[0] == files[1]) << what << ": 1 and 2 threads";
    EXPECT_TRUE(files[0] == files[2]) << what << ": 1 and 3 threads";
  }
}

TEST(Trainer, EachEpochTrainsAtItsScheduledRate) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  const auto cpu = make_cpu_backend();
  TrainOptions o = small_run(4, 128);
  o.limit_test = 128;
  o.epochs = 4;
  const TrainReport constant = train(o, *cpu, nullptr);
  o.lr_schedule.kind = LrScheduleKind::cosine;
  const TrainReport cosine = train(o, *cpu, nullptr);
  o.lr_schedule = {LrScheduleKind::step, {1, 3}, 0.5f};
  const TrainReport step = train(o, *cpu, nullptr);
  const float lr = o.sgd.learning_rate;
  ASSERT_EQ(cosine.epochs.size(), 4u);
  ASSERT_EQ(step.epochs.size(), 4u);
  for (std::size_t e = 0; e < 4; ++e) EXPECT_EQ(constant.epochs[e].learning_rate, lr);
  EXPECT_EQ(cosine.epochs[0].learning_rate, lr);
  EXPECT_FLOAT_EQ(cosine.epochs[1].learning_rate, lr * 0.5f * (1.0f + std::sqrt(0.5f)));
  EXPECT_FLOAT_EQ(cosine.epochs[2].learning_rate, lr * 0.5f);
  EXPECT_EQ(step.epochs[0].learning_rate, lr);
  EXPECT_FLOAT_EQ(step.epochs[1].learning_rate, lr * 0.5f);
  EXPECT_FLOAT_EQ(step.epochs[2].learning_rate, lr * 0.5f);
  EXPECT_FLOAT_EQ(step.epochs[3].learning_rate, lr * 0.25f);
  // The rate reaches the steps: the first epoch trains alike, the second not.
  EXPECT_EQ(step.epochs[0].loss, constant.epochs[0].loss);
  EXPECT_NE(step.epochs[1].loss, constant.epochs[1].loss);
  EXPECT_GT(step.test_loss, 0.0);
  EXPECT_EQ(step.test_loss, step.epochs.back().test_loss);
}

TEST(Trainer, RejectsBadOptionsAndData) {
  const auto cpu = make_cpu_backend();
  TrainOptions o = small_run(4);
  o.epochs = 0;
  EXPECT_THROW(train(o, *cpu, nullptr), Error);
  o = small_run(4);
  o.sgd.momentum = 1.0f;
  EXPECT_THROW(train(o, *cpu, nullptr), Error);
  o = small_run(4);
  o.lr_schedule = {LrScheduleKind::step, {3, 2}, 0.1f};
  EXPECT_TRUE(test::throws_mentioning([&] { train(o, *cpu, nullptr); }, "milestones"));
  o = small_run(4);
  o.init_path = o.resume_path = test::temp_path("both.safetensors");
  EXPECT_TRUE(test::throws_mentioning([&] { train(o, *cpu, nullptr); }, "give one of them"));
  o = small_run(4);
  o.data_dir = test::temp_path("no_such_directory");
  try {
    train(o, *cpu, nullptr);
    ADD_FAILURE() << "missing data must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no_such_directory"), std::string::npos) << e.what();
  }
  if (!fs::exists(test::fashion_mnist_dir())) return;
  o = small_run(4);
  o.batch = 1000;  // more than the 512 training examples
  EXPECT_THROW(train(o, *cpu, nullptr), Error);
}

TEST(GpuTrainer, GraphAndEagerAreBitIdenticalAndDeterministic) {
  LOWBIT_REQUIRE_GPU();
  LOWBIT_REQUIRE_FASHION_MNIST();
  const auto gpu = make_cuda_backend();
  // The checkpoint's bytes, then each quantizer's clip counts.
  const auto run = [&](bool graph, const std::string& name) {
    TrainOptions o = small_run(4, 2048);
    o.use_graph = graph;
    o.save_path = test::temp_path(name);
    const TrainReport r = train(o, *gpu, nullptr);
    std::vector<std::uint8_t> all;
    for (const auto& t : read_checkpoint(o.save_path).file.tensors)
      all.insert(all.end(), t.data.begin(), t.data.end());
    fs::remove(o.save_path);
    EXPECT_GT(r.test_accuracy, 0.5);
    std::vector<unsigned long long> counts;
    for (const QuantizerReport& q : r.quantizers)
      counts.insert(counts.end(), {q.quantized, q.clipped});
    return std::pair(all, counts);
  };
  const auto graph = run(true, "gpu_graph");
  EXPECT_TRUE(graph == run(true, "gpu_graph_again"));
  EXPECT_TRUE(graph == run(false, "gpu_eager"));
}

// A new rate drops the captured step graph: replayed, it would keep the old one.
TEST(GpuTrainer, GraphAndEagerFollowTheScheduleAlike) {
  LOWBIT_REQUIRE_GPU();
  LOWBIT_REQUIRE_FASHION_MNIST();
  const auto gpu = make_cuda_backend();
  const auto run = [&](bool graph) {
    TrainOptions o = small_run(4, 1024);
    o.epochs = 2;
    o.lr_schedule = {LrScheduleKind::step, {1}, 0.1f};
    o.use_graph = graph;
    return train(o, *gpu, nullptr);
  };
  const TrainReport graph = run(true), eager = run(false);
  ASSERT_EQ(graph.epochs.size(), 2u);
  EXPECT_EQ(graph.epochs[1].loss, eager.epochs[1].loss);
  EXPECT_EQ(graph.test_accuracy, eager.test_accuracy);
}

TEST(GpuTrainer, MatchesTheCpuClosely) {
  LOWBIT_REQUIRE_GPU();
  LOWBIT_REQUIRE_FASHION_MNIST();
  const TrainOptions o = small_run(8, 1024);
  const auto cpu = make_cpu_backend();
  const auto gpu = make_cuda_backend();
  const TrainReport a = train(o, *cpu, nullptr);
  const TrainReport b = train(o, *gpu, nullptr);
  // Different summation orders (cuDNN, cuBLAS) move single predictions only.
  EXPECT_NEAR(a.epochs[0].loss, b.epochs[0].loss, 0.05);
  EXPECT_NEAR(a.test_accuracy, b.test_accuracy, 0.05);
}

TEST(GpuTrainer, HugeBatchFailsCleanly) {
  LOWBIT_REQUIRE_GPU();
  LOWBIT_REQUIRE_FASHION_MNIST();
  const auto gpu = make_cuda_backend();
  TrainOptions o = small_run(4);
  o.batch = std::int64_t{1} << 34;  // activations far beyond any GPU's memory
  o.limit_train = 0;
  EXPECT_THROW(train(o, *gpu, nullptr), Error);
  o = small_run(4);  // and the device still works afterwards
  EXPECT_GT(train(o, *gpu, nullptr).test_accuracy, 0.3);
}

}  // namespace
}  // namespace lowbit
