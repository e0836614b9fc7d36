// Checkpoints of real training runs: bit-identical save/load and resume,
// corruption detection, and option checks on resume.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "checkpoint.hpp"
#include "lowbit/error.hpp"
#include "lowbit/trainer.hpp"
#include "test_util.hpp"

namespace lowbit {
namespace {

namespace fs = std::filesystem;

TrainOptions tiny_run(RangeMode mode) {
  TrainOptions o;
  o.data_dir = test::fashion_mnist_dir();
  o.quantize.range = mode;
  o.quantize.quant_delay = 3;
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

TEST_P(CheckpointResume, ContinuesBitIdentically) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  const auto cpu = make_cpu_backend();
  TrainOptions straight = tiny_run(GetParam());
  straight.epochs = 3;
  straight.save_path = test::temp_path("straight");
  train(straight, *cpu, nullptr);

  TrainOptions first = tiny_run(GetParam());
  first.save_path = test::temp_path("resumed");
  train(first, *cpu, nullptr);
  EXPECT_EQ(read_checkpoint(first.save_path).progress.epochs_done, 1);
  TrainOptions rest = tiny_run(GetParam());
  rest.epochs = 3;
  rest.resume_path = first.save_path;
  rest.save_path = first.save_path;
  const TrainReport r = train(rest, *cpu, nullptr);
  ASSERT_EQ(r.epochs.size(), 2u);
  EXPECT_EQ(r.epochs[0].epoch, 2);
  expect_same_state(straight.save_path, rest.save_path);
  fs::remove(straight.save_path);
  fs::remove(first.save_path);
}

INSTANTIATE_TEST_SUITE_P(RangeModes, CheckpointResume,
                         ::testing::Values(RangeMode::ema, RangeMode::lagged, RangeMode::lsq),
                         [](const auto& info) { return std::string(to_string(info.param)); });

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
  EXPECT_EQ(saved.quantize.quant_delay, 3);
  EXPECT_EQ(saved.batch, 64);
  EXPECT_EQ(saved.seed, o.seed);
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
  fs::remove(o.save_path);
}

}  // namespace
}  // namespace lowbit
