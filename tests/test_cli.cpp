// The `lowbit` command line as scripts see it: run the built binary, check the
// exit status (0 success, 1 runtime error, 2 usage error), stdout, stderr and
// the files it writes.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "train/checkpoint.hpp"
#include "lowbit/data.hpp"
#include "lowbit/graph.hpp"
#include "lowbit/quantize.hpp"
#include "lowbit/trainer.hpp"
#include "nn/network.hpp"
#include "test_util.hpp"

namespace lowbit {
namespace {

namespace fs = std::filesystem;

struct CliResult {
  int status = -1;  ///< exit status; 128 + signal when killed by one
  std::string out;
  std::string err;
};

std::string quoted(const std::string& arg) {
  std::string text = "'";
  for (char c : arg) text += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return text + "'";
}

nlohmann::json read_json(const fs::path& path) {
  return nlohmann::json::parse(test::read_file(path));
}

std::string percent_text(double fraction) {
  char text[32];
  std::snprintf(text, sizeof text, "%.2f%%", 100.0 * fraction);
  return text;
}

/// One line on stderr, "error: ...", and nothing else there.
::testing::AssertionResult one_error_line(const CliResult& result) {
  const auto lines = std::count(result.err.begin(), result.err.end(), '\n');
  if (result.err.rfind("error: ", 0) == 0 && lines == 1 && result.err.back() == '\n')
    return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "stderr is not one \"error:\" line:\n" << result.err;
}

class Cli : public ::testing::Test {
 protected:

  /// Runs lowbit with `args`; `environment` ("NAME=value ...") is added to ours.
  CliResult run(const std::vector<std::string>& args, const std::string& environment = "") const {
    std::string command = "env " + environment + " " + quoted(LOWBIT_CLI_PATH);
    for (const std::string& arg : args) command += " " + quoted(arg);
    const fs::path out = dir_ / "stdout.txt";
    const fs::path err = dir_ / "stderr.txt";
    command += " >" + quoted(out.string()) + " 2>" + quoted(err.string()) + " </dev/null";
    const int raw = std::system(command.c_str());
    CliResult result;
    result.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : 128 + WTERMSIG(raw);
    result.out = test::read_file(out);
    result.err = test::read_file(err);
    return result;
  }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  test::ScratchDirectory scratch_;
  fs::path dir_ = scratch_.path();
  const std::string data_ = test::fashion_mnist_dir();
};

using CliHelp = Cli;
using CliUsage = Cli;
using CliRuntime = Cli;
using CliTrain = Cli;

TEST_F(CliHelp, TopLevelListsTheSubcommands) {
  const CliResult result = run({"--help"});
  EXPECT_EQ(result.status, 0) << result.err;
  EXPECT_NE(result.out.find("train"), std::string::npos) << result.out;
  EXPECT_NE(result.out.find("eval"), std::string::npos) << result.out;
  EXPECT_NE(result.out.find("export"), std::string::npos) << result.out;
}

TEST_F(CliHelp, ExportAndEvalExplainTheDeploymentFlags) {
  const CliResult exported = run({"export", "--help"});
  EXPECT_EQ(exported.status, 0) << exported.err;
  for (const char* text : {"--checkpoint", "--format", "lowbit", "onnx", "--out", "opset 21"})
    EXPECT_NE(exported.out.find(text), std::string::npos) << text << "\n" << exported.out;
  const CliResult eval = run({"eval", "--help"});
  EXPECT_NE(eval.out.find("--integer"), std::string::npos) << eval.out;
}

TEST_F(CliHelp, TrainListsEveryFlagWithItsDefault) {
  const CliResult result = run({"train", "--help"});
  EXPECT_EQ(result.status, 0) << result.err;
  for (const char* flag :
       {"--data",        "--device", "--weight-bits",  "--act-bits",     "--epochs",
        "--batch",       "--lr",     "--momentum",     "--weight-decay", "--ema-decay",
        "--quant-delay", "--range",  "--seed",         "--limit-train",  "--limit-test",
        "--save",        "--resume", "--metrics-json", "--graph",        "--eager",
        "--help",        "--lr-schedule", "--lr-milestones", "--lr-factor", "--layer-bits",
        "--init",        "--weight-group"})
    EXPECT_NE(result.out.find(flag), std::string::npos) << flag << " missing from\n" << result.out;
  const TrainOptions defaults;
  EXPECT_NE(result.out.find(defaults.data_dir), std::string::npos);
  EXPECT_NE(result.out.find("--quant-delay STEPS|auto"), std::string::npos) << result.out;
  EXPECT_NE(result.out.find("a tenth of the run's steps, at most 500"), std::string::npos);
  EXPECT_NE(result.out.find("--threads"), std::string::npos);
  EXPECT_NE(result.out.find(std::to_string(defaults.batch)), std::string::npos);
  EXPECT_NE(result.out.find("[0, 1]"), std::string::npos) << "--metrics-json should say accuracies "
                                                             "are fractions";
}

TEST_F(CliHelp, EvalListsItsFlags) {
  const CliResult result = run({"eval", "--help"});
  EXPECT_EQ(result.status, 0) << result.err;
  for (const char* flag :
       {"--checkpoint", "--data", "--device", "--limit-test", "--metrics-json", "--threads"})
    EXPECT_NE(result.out.find(flag), std::string::npos) << flag << " missing from\n" << result.out;
}

TEST_F(CliHelp, VersionPrintsTheProjectVersion) {
  const CliResult result = run({"--version"});
  EXPECT_EQ(result.status, 0) << result.err;
  EXPECT_EQ(result.out.rfind("lowbit 0.", 0), 0u) << result.out;
  EXPECT_EQ(std::count(result.out.begin(), result.out.end(), '\n'), 1) << result.out;
}

TEST_F(CliUsage, NoSubcommandPrintsHelpAndExits2) {
  const CliResult result = run({});
  EXPECT_EQ(result.status, 2);
  EXPECT_NE(result.err.find("train"), std::string::npos) << result.err;
  EXPECT_NE(result.err.find("eval"), std::string::npos) << result.err;
}

TEST_F(CliUsage, UnknownFlagOrSubcommandIsOneLine) {
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"train", "--no-such-flag"},
        std::vector<std::string>{"eval", "--checkpoint", "c", "--no-such-flag"},
        std::vector<std::string>{"frobnicate"}}) {
    const CliResult result = run(args);
    EXPECT_EQ(result.status, 2) << args.back();
    EXPECT_TRUE(one_error_line(result));
    EXPECT_NE(result.err.find(args.back()), std::string::npos) << result.err;
  }
}

TEST_F(CliUsage, BadValuesAreOneLineNamingTheFlag) {
  struct Case {
    std::vector<std::string> args;
    const char* named;
  };
  const std::vector<Case> cases = {
      {{"--weight-bits", "1"}, "--weight-bits"},
      {{"--weight-bits", "17"}, "--weight-bits"},
      {{"--act-bits", "1"}, "--act-bits"},
      {{"--act-bits", "4.5"}, "--act-bits"},
      {{"--range", "foo"}, "--range"},
      {{"--device", "gpu"}, "--device"},
      {{"--batch", "0"}, "--batch"},
      {{"--batch", "many"}, "--batch"},
      {{"--epochs", "-1"}, "--epochs"},
      {{"--epochs=-1"}, "--epochs"},
      {{"--epochs", "0"}, "--epochs"},
      {{"--lr", "0"}, "--lr"},
      {{"--lr", "nan"}, "--lr"},
      {{"--momentum", "1"}, "--momentum"},
      {{"--ema-decay", "1.5"}, "--ema-decay"},
      {{"--quant-delay=-5"}, "--quant-delay"},
      {{"--limit-train=-1"}, "--limit-train"},
      {{"--seed=-1"}, "--seed"},
      {{"--graph", "--eager"}, "--eager"},
      {{"--quant-delay", "soon"}, "--quant-delay"},
      {{"--threads", "0"}, "--threads"},
      {{"--batch", "0x10"}, "--batch"},     // CLI11 would read 16
      {{"--limit-test", "1e3"}, "--limit-test"},
      {{"--weight-group", "1"}, "--weight-group"},
      {{"--weight-group=-32"}, "--weight-group"},
      {{"--weight-group", "32.5"}, "--weight-group"},
      {{"--weight-group", "groups"}, "--weight-group"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = {"train"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    const CliResult result = run(args);
    EXPECT_EQ(result.status, 2) << c.args.front();
    EXPECT_TRUE(one_error_line(result)) << c.args.front();
    EXPECT_NE(result.err.find(c.named), std::string::npos) << result.err;
    EXPECT_EQ(result.out, "") << "a usage error must not start any work";
  }
}

TEST_F(CliUsage, BadLearningRateSchedulesAreOneLine) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--lr-schedule", "linear"}, "error: --lr-schedule: linear not in {constant,cosine,step}"},
      {{"--lr-schedule", "step", "--lr-milestones", "5,3"},
       "error: --lr-milestones: '5,3' is not increasing (give E1,E2,... such as 5,8)"},
      {{"--lr-schedule", "step", "--lr-milestones", "0,3"},
       "error: --lr-milestones: '0' is not an epoch >= 1 (give E1,E2,... such as 5,8)"},
      {{"--lr-schedule", "step", "--lr-milestones", "2,,4"},
       "error: --lr-milestones: '' is not an epoch >= 1"},
      {{"--lr-milestones", "2,4"},
       "error: --lr-milestones: only --lr-schedule step has milestones"},
      {{"--lr-schedule", "cosine", "--lr-milestones", "2"},
       "error: --lr-milestones: only --lr-schedule step has milestones"},
      {{"--lr-factor", "0.5"}, "error: --lr-factor: only --lr-schedule step has a factor"},
      {{"--lr-schedule", "step"},
       "error: --lr-schedule step needs --lr-milestones, the epochs after which the rate is "
       "multiplied by --lr-factor"},
      {{"--lr-schedule", "step", "--lr-milestones", "2", "--lr-factor", "1.5"},
       "error: --lr-factor: 1.5 is not in (0, 1]"},
      {{"--lr-schedule", "step", "--lr-milestones", "2", "--lr-factor", "0"},
       "error: --lr-factor: 0 is not in (0, 1]"},
  };
  for (const auto& [flags, message] : cases) {
    std::vector<std::string> args = {"train"};
    args.insert(args.end(), flags.begin(), flags.end());
    const CliResult result = run(args);
    EXPECT_EQ(result.status, 2) << message;
    EXPECT_TRUE(one_error_line(result)) << message;
    EXPECT_EQ(result.err.rfind(message, 0), 0u) << "expected " << message << "\ngot " << result.err;
    EXPECT_EQ(result.out, "") << "a usage error must not start any work";
  }
}

TEST_F(CliUsage, BadLayerBitsAreOneLineNamingTheProblem) {
  const Graph graph = lenet5();
  std::string layers;
  for (const Node& node : graph.nodes())
    if (node.kind == NodeKind::conv2d || node.kind == NodeKind::linear)
      layers += (layers.empty() ? "" : " ") + node.name;
  ASSERT_EQ(layers, "conv1 conv2 fc1 fc2 fc3");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"conv9=8", "error: --layer-bits: unknown layer 'conv9' (the layers are " + layers + ")"},
      {"conv1=8,fc=4", "error: --layer-bits: unknown layer 'fc' (the layers are " + layers + ")"},
      {"conv1", "error: --layer-bits: 'conv1' is not LAYER=BITS or LAYER=W/A (such as "
                "conv1=8,fc3=8/4)"},
      {"conv1=1", "error: --layer-bits: conv1=1: '1' is not a width (2..16 bits, or 0 for float)"},
      {"conv1=17", "error: --layer-bits: conv1=17: '17' is not a width (2..16 bits, or 0 for "
                   "float)"},
      {"fc3=8/x", "error: --layer-bits: fc3=8/x: 'x' is not a width"},
      {"fc3=", "error: --layer-bits: fc3=: '' is not a width"},
      {"fc3=8/4/2", "error: --layer-bits: 'fc3=8/4/2' has more than two widths (give W or W/A)"},
      {"fc3=8,fc3=4", "error: --layer-bits: layer fc3 is given twice"},
  };
  for (const auto& [value, message] : cases) {
    const CliResult result = run({"train", "--layer-bits", value});
    EXPECT_EQ(result.status, 2) << value;
    EXPECT_TRUE(one_error_line(result)) << value;
    EXPECT_EQ(result.err.rfind(message, 0), 0u) << "expected " << message << "\ngot " << result.err;
    EXPECT_EQ(result.out, "") << "a usage error must not start any work";
  }
}

// CLI11 alone clamps numbers its type cannot hold, and reads "" as 0.
TEST_F(CliUsage, NumbersOutOfRangeOrEmptyAreRefusedNotClamped) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"train", "--epochs", "99999999999999999999"},
       "error: --epochs: 99999999999999999999 is too large (the most is 9223372036854775807)"},
      {{"train", "--seed", "18446744073709551616"},
       "error: --seed: 18446744073709551616 is too large (the most is 18446744073709551615)"},
      {{"train", "--seed", "-1"}, "error: --seed: -1 is negative"},
      {{"train", "--weight-bits", ""}, "error: --weight-bits: '' is not a whole number"},
      {{"train", "--weight-bits", "99999999999"},
       "error: --weight-bits: 99999999999 is too large (the most is 2147483647)"},
      {{"train", "--lr", ""}, "error: --lr: '' is not a number"},
      {{"eval", "--checkpoint", "c", "--limit-test", "99999999999999999999"},
       "error: --limit-test: 99999999999999999999 is too large"},
  };
  for (const auto& [args, message] : cases) {
    const CliResult result = run(args);
    EXPECT_EQ(result.status, 2) << args[1];
    EXPECT_TRUE(one_error_line(result)) << args[1];
    EXPECT_EQ(result.err.rfind(message, 0), 0u) << "expected " << message << "\ngot " << result.err;
  }
}

// lsq learns its step sizes from the first batch on: a delay is refused, also
// where lsq is the default (below 4 bits).
TEST_F(CliUsage, QuantDelayWithLsqRangesIsRefused) {
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"train", "--range", "lsq", "--quant-delay", "5"},
        std::vector<std::string>{"train", "--weight-bits", "2", "--quant-delay", "5"}}) {
    const CliResult result = run(args);
    EXPECT_EQ(result.status, 2);
    EXPECT_TRUE(one_error_line(result));
    EXPECT_NE(result.err.find("error: --quant-delay 5: lsq ranges"), std::string::npos)
        << result.err;
    EXPECT_NE(result.err.find("quantize from the first step; give --range ema or lagged to "
                              "delay quantization"),
              std::string::npos)
        << result.err;
    EXPECT_EQ(result.out, "");
  }
}

TEST_F(CliUsage, EvalRequiresACheckpoint) {
  const CliResult result = run({"eval", "--device", "cpu"});
  EXPECT_EQ(result.status, 2);
  EXPECT_TRUE(one_error_line(result));
  EXPECT_NE(result.err.find("--checkpoint"), std::string::npos) << result.err;
}

TEST_F(CliUsage, EvalRejectsABadDevice) {
  const CliResult result = run({"eval", "--checkpoint", path("c"), "--device", "gpu"});
  EXPECT_EQ(result.status, 2);
  EXPECT_TRUE(one_error_line(result));
}

TEST_F(CliRuntime, MissingDataDirectoryNamesThePath) {
  const std::string missing = path("no-such-dataset");
  const CliResult result = run({"train", "--device", "cpu", "--epochs", "1", "--data", missing});
  EXPECT_EQ(result.status, 1);
  EXPECT_TRUE(one_error_line(result));
  EXPECT_NE(result.err.find(missing), std::string::npos) << result.err;
}

TEST_F(CliRuntime, EmptyDataDirectoryIsARuntimeError) {
  const CliResult result = run({"train", "--device", "cpu", "--epochs", "1", "--data", path("")});
  EXPECT_EQ(result.status, 1);
  EXPECT_TRUE(one_error_line(result));
}

TEST_F(CliRuntime, UnwritableMetricsFailBeforeTraining) {
  const std::string missing_dir = path("missing");
  const CliResult result = run({"train", "--device", "cpu", "--data", path(""), "--metrics-json",
                                missing_dir + "/metrics.json"});
  EXPECT_EQ(result.status, 1);
  EXPECT_TRUE(one_error_line(result));
  EXPECT_NE(result.err.find(missing_dir), std::string::npos) << result.err;
}

TEST_F(CliRuntime, AutoDeviceSaysWhichAndWhy) {
  const DeviceSelection expected = select_device(DeviceChoice::automatic);
  const CliResult result =
      run({"train", "--device", "auto", "--epochs", "1", "--data", path("no-such-dataset")});
  EXPECT_EQ(result.status, 1);
  const std::string line =
      "device: " + expected.backend->description() + " (" + expected.reason + ")\n";
  EXPECT_NE(result.out.find(line), std::string::npos) << "expected " << line << "in\n"
                                                      << result.out;
}

// CUDA_VISIBLE_DEVICES= hides every GPU, so this runs on any machine.
TEST_F(CliRuntime, CudaWithoutADeviceSaysWhyAndSuggestsTheCpu) {
  const CliResult result = run({"train", "--device", "cuda", "--epochs", "1", "--data", path("")},
                               "CUDA_VISIBLE_DEVICES=");
  EXPECT_EQ(result.status, 1);
  EXPECT_TRUE(one_error_line(result));
  EXPECT_NE(result.err.find("--device cuda: no "), std::string::npos) << result.err;
  EXPECT_NE(result.err.find("(use --device cpu)"), std::string::npos) << result.err;
}

TEST_F(CliRuntime, AutoWithoutADeviceTrainsOnTheCpuAndSaysWhy) {
  const CliResult result =
      run({"train", "--device", "auto", "--epochs", "1", "--data", path("no-such-dataset")},
          "CUDA_VISIBLE_DEVICES=");
  EXPECT_EQ(result.status, 1);  // the dataset is missing; the device line comes first
  EXPECT_NE(result.out.find("device: cpu"), std::string::npos) << result.out;
  EXPECT_NE(result.out.find("(auto: no "), std::string::npos) << result.out;
}

TEST_F(CliRuntime, EvalOfAMissingCheckpointNamesIt) {
  const std::string missing = path("missing.safetensors");
  const CliResult result = run({"eval", "--device", "cpu", "--checkpoint", missing});
  EXPECT_EQ(result.status, 1);
  EXPECT_TRUE(one_error_line(result));
  EXPECT_NE(result.err.find(missing), std::string::npos) << result.err;
}

TEST_F(CliRuntime, EvalOfACorruptCheckpointNamesIt) {
  const std::string corrupt = path("corrupt.safetensors");
  const char bytes[] = "\x17\0\0\0\0\0\0\0{\"not\": \"a checkpoint\"}";
  std::ofstream(corrupt, std::ios::binary).write(bytes, sizeof bytes - 1);
  const CliResult result = run({"eval", "--device", "cpu", "--checkpoint", corrupt});
  EXPECT_EQ(result.status, 1);
  EXPECT_TRUE(one_error_line(result));
  EXPECT_NE(result.err.find("corrupt.safetensors"), std::string::npos) << result.err;
}

TEST_F(CliTrain, TinyRunWritesMetricsAndACheckpointThatEvalReproduces) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  const std::string metrics = path("metrics.json");
  const std::string checkpoint = path("tiny.safetensors");
  const CliResult trained = run({"train", "--device", "cpu", "--data", data_, "--epochs", "1",
                                 "--limit-train", "512", "--limit-test", "256", "--batch", "64",
                                 "--metrics-json", metrics, "--save", checkpoint});
  ASSERT_EQ(trained.status, 0) << trained.err;
  EXPECT_NE(trained.out.find("\nepoch 1/1  loss "), std::string::npos) << trained.out;
  EXPECT_NE(trained.out.find(checkpoint), std::string::npos) << trained.out;
  for (const auto& entry : fs::directory_iterator(dir_))
    EXPECT_EQ(entry.path().filename().string().find(".tmp"), std::string::npos)
        << "temporary file left behind: " << entry.path();

  const nlohmann::json json = read_json(metrics);
  const TrainOptions defaults;
  for (const char* key : {"lowbit_version", "test_accuracy", "test_loss",
                          "train_images_per_second", "device", "weight_bits", "act_bits", "range",
                          "hyperparameters", "epochs"})
    EXPECT_TRUE(json.contains(key)) << key;
  EXPECT_EQ("lowbit " + json.at("lowbit_version").get<std::string>() + "\n",
            run({"--version"}).out);
  EXPECT_GT(json.at("test_loss").get<double>(), 0.0);
  const nlohmann::json& hyper = json.at("hyperparameters");
  for (const char* key :
       {"epochs", "batch", "lr", "momentum", "weight_decay", "lr_schedule", "lr_milestones",
        "lr_factor", "seed", "limit_train", "limit_test", "normalization_mean",
        "normalization_std", "weight_bits", "act_bits", "output_bits", "layer_bits", "range",
        "rounding", "per_channel", "weight_group", "symmetric_weights", "ema_decay",
        "quant_delay", "threads", "graph"})
    EXPECT_TRUE(hyper.contains(key)) << key;
  EXPECT_EQ(hyper.at("epochs").get<int>(), 1);
  EXPECT_EQ(hyper.at("batch").get<int>(), 64);
  EXPECT_EQ(hyper.at("limit_train").get<int>(), 512);
  EXPECT_EQ(hyper.at("lr").get<double>(), 0.05);  // as given, not as the float reads in double
  EXPECT_EQ(hyper.at("lr_schedule").get<std::string>(), "constant");
  EXPECT_EQ(hyper.at("quant_delay"), json.at("quant_delay"));  // resolved, not "auto"
  EXPECT_EQ(hyper.at("threads").get<int>(), 0);                // one per core
  EXPECT_EQ(hyper.at("graph").get<bool>(), defaults.use_graph);
  const double accuracy = json.at("test_accuracy").get<double>();
  EXPECT_GE(accuracy, 0.0);
  EXPECT_LE(accuracy, 1.0);
  EXPECT_GT(json.at("train_images_per_second").get<double>(), 0.0);
  EXPECT_NE(json.at("device").get<std::string>().find("cpu"), std::string::npos);
  EXPECT_EQ(json.at("weight_bits").get<int>(), defaults.quantize.weight_bits);
  EXPECT_EQ(json.at("act_bits").get<int>(), defaults.quantize.activation_bits);
  EXPECT_EQ(json.at("range").get<std::string>(), to_string(defaults.quantize.range));
  ASSERT_EQ(json.at("epochs").size(), 1u);
  const nlohmann::json& epoch = json.at("epochs").at(0);
  EXPECT_EQ(epoch.at("epoch").get<int>(), 1);
  EXPECT_TRUE(std::isfinite(epoch.at("loss").get<double>()));
  EXPECT_GT(epoch.at("loss").get<double>(), 0.0);
  EXPECT_EQ(epoch.at("test_accuracy").get<double>(), accuracy);
  EXPECT_EQ(epoch.at("test_loss"), json.at("test_loss"));
  EXPECT_EQ(epoch.at("learning_rate").get<double>(), 0.05);
  EXPECT_GT(epoch.at("images_per_second").get<double>(), 0.0);

  // Every quantizer's final state, in graph order, in the summary and the metrics.
  EXPECT_NE(
      trained.out.find("\n  quantizers          final range or step; clipped: of the last "
                       "epoch's activations\n    conv1/weight_quant  4-bit  6 ranges within ["),
      std::string::npos)
      << trained.out;
  EXPECT_NE(trained.out.find("\n    relu1/act_quant     4-bit  range [0, "), std::string::npos)
      << trained.out;
  EXPECT_NE(trained.out.find("\n    fc3/act_quant       8-bit  range ["), std::string::npos)
      << trained.out;
  const nlohmann::json& quantizers = json.at("quantizers");
  ASSERT_EQ(quantizers.size(), 10u);
  const std::vector<std::int64_t> channels = {6, 16, 120, 84, 10};
  // Per example: conv1 (padded) and conv2 outputs before pooling, fc1..fc3 outputs.
  const std::vector<std::int64_t> activations = {6 * 28 * 28, 16 * 10 * 10, 120, 84, 10};
  const unsigned long long examples = 512;  // one epoch, quantized from step 1 (delay 0)
  EXPECT_EQ(json.at("quant_delay").get<int>(), 0);
  for (std::size_t layer = 0; layer < 5; ++layer) {
    const nlohmann::json& w = quantizers.at(2 * layer);
    const nlohmann::json& a = quantizers.at(2 * layer + 1);
    EXPECT_TRUE(w.at("weights").get<bool>()) << w;
    EXPECT_EQ(w.at("range").get<std::string>(), "last_value");
    EXPECT_EQ(w.at("min").size(), static_cast<std::size_t>(channels[layer])) << w;
    EXPECT_EQ(w.at("max").size(), static_cast<std::size_t>(channels[layer])) << w;
    EXPECT_FALSE(w.contains("clipped")) << w;
    EXPECT_FALSE(a.at("weights").get<bool>()) << a;
    EXPECT_EQ(a.at("range").get<std::string>(), "ema");
    EXPECT_EQ(a.at("bits").get<int>(), layer == 4 ? 8 : 4);
    EXPECT_LE(a.at("min").at(0).get<double>(), 0.0) << a;
    EXPECT_GE(a.at("max").at(0).get<double>(), 0.0) << a;
    const auto quantized = a.at("quantized").get<unsigned long long>();
    const auto clipped = a.at("clipped").get<unsigned long long>();
    EXPECT_EQ(quantized, examples * static_cast<unsigned long long>(activations[layer])) << a;
    EXPECT_LE(clipped, quantized) << a;
    EXPECT_EQ(a.at("clipped_fraction").get<double>(),
              static_cast<double>(clipped) / static_cast<double>(quantized));
  }
  EXPECT_EQ(quantizers.at(0).at("name").get<std::string>(), "conv1/weight_quant");
  EXPECT_EQ(quantizers.at(9).at("name").get<std::string>(), "fc3/act_quant");
  EXPECT_NE(trained.out.find("test accuracy       " + percent_text(accuracy)), std::string::npos)
      << trained.out;

  const std::string eval_metrics = path("eval.json");
  const CliResult evaluated = run({"eval", "--checkpoint", checkpoint, "--data", data_, "--device",
                                   "cpu", "--limit-test", "256", "--metrics-json", eval_metrics});
  ASSERT_EQ(evaluated.status, 0) << evaluated.err;
  EXPECT_NE(evaluated.out.find("test accuracy " + percent_text(accuracy)), std::string::npos)
      << evaluated.out;
  const nlohmann::json eval_json = read_json(eval_metrics);
  for (const char* key : {"lowbit_version", "test_accuracy", "test_loss", "loss", "examples",
                          "device", "weight_bits", "act_bits", "hyperparameters"})
    EXPECT_TRUE(eval_json.contains(key)) << key;
  EXPECT_EQ(eval_json.at("lowbit_version"), json.at("lowbit_version"));
  EXPECT_EQ(eval_json.at("test_loss").get<double>(), json.at("test_loss").get<double>());
  EXPECT_EQ(eval_json.at("hyperparameters").at("seed"), hyper.at("seed"));
  EXPECT_EQ(eval_json.at("hyperparameters").at("quant_delay"), hyper.at("quant_delay"));
  EXPECT_DOUBLE_EQ(eval_json.at("test_accuracy").get<double>(), accuracy);
  EXPECT_EQ(eval_json.at("examples").get<int>(), 256);
  EXPECT_EQ(eval_json.at("weight_bits"), json.at("weight_bits"));
  EXPECT_EQ(eval_json.at("act_bits"), json.at("act_bits"));

  // A truncated checkpoint is a runtime error, not a crash.
  fs::resize_file(checkpoint, fs::file_size(checkpoint) / 2);
  const CliResult truncated = run({"eval", "--checkpoint", checkpoint, "--device", "cpu"});
  EXPECT_EQ(truncated.status, 1);
  EXPECT_TRUE(one_error_line(truncated));
}

TEST_F(CliTrain, ResumeTakesTheOptionsNotGivenFromTheCheckpoint) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  const std::string checkpoint = path("eight.safetensors");
  const CliResult first = run({"train", "--device", "cpu", "--data", data_, "--epochs", "1",
                               "--limit-train", "256", "--limit-test", "128", "--batch", "64",
                               "--weight-bits", "8", "--act-bits", "6", "--range", "lagged",
                               "--save", checkpoint});
  ASSERT_EQ(first.status, 0) << first.err;

  const std::string metrics = path("resumed.json");
  const CliResult resumed = run({"train", "--device", "cpu", "--data", data_, "--resume",
                                 checkpoint, "--epochs", "2", "--metrics-json", metrics});
  ASSERT_EQ(resumed.status, 0) << resumed.err;
  const nlohmann::json json = read_json(metrics);
  EXPECT_EQ(json.at("weight_bits").get<int>(), 8);
  EXPECT_EQ(json.at("act_bits").get<int>(), 6);
  EXPECT_EQ(json.at("range").get<std::string>(), "lagged");

  // An explicit option that contradicts the checkpoint reaches the trainer,
  // which refuses it.
  const CliResult conflicting = run({"train", "--device", "cpu", "--data", data_, "--resume",
                                     checkpoint, "--epochs", "2", "--weight-bits", "2"});
  EXPECT_EQ(conflicting.status, 1);
  EXPECT_TRUE(one_error_line(conflicting));
}

TEST_F(CliTrain, WeightGroupsShapeTheRunItsReportsAndItsResume) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  const std::string checkpoint = path("grouped.safetensors");
  const std::string metrics = path("grouped.json");
  const CliResult first = run({"train", "--device", "cpu", "--data", data_, "--epochs", "1",
                               "--limit-train", "256", "--limit-test", "128", "--batch", "64",
                               "--quant-delay", "0", "--weight-group", "32", "--save",
                               checkpoint, "--metrics-json", metrics});
  ASSERT_EQ(first.status, 0) << first.err;
  EXPECT_NE(first.out.find(", weight groups of up to 32"), std::string::npos) << first.out;
  EXPECT_NE(first.out.find("\n    conv2/weight_quant  4-bit  80 groups of 30, ranges within ["),
            std::string::npos)
      << first.out;
  EXPECT_NE(first.out.find("\n    fc3/weight_quant    4-bit  30 groups of 28, ranges within ["),
            std::string::npos)
      << first.out;
  const nlohmann::json json = read_json(metrics);
  EXPECT_EQ(json.at("hyperparameters").at("weight_group").get<int>(), 32);
  const std::vector<std::pair<std::int64_t, std::size_t>> groups = {
      {25, 6}, {30, 80}, {25, 1920}, {30, 336}, {28, 30}};
  const nlohmann::json& quantizers = json.at("quantizers");
  ASSERT_EQ(quantizers.size(), 10u);
  for (std::size_t layer = 0; layer < 5; ++layer) {
    const nlohmann::json& w = quantizers.at(2 * layer);
    EXPECT_EQ(w.at("group").get<std::int64_t>(), groups[layer].first) << w.at("name");
    EXPECT_EQ(w.at("max").size(), groups[layer].second) << w.at("name");
    EXPECT_FALSE(quantizers.at(2 * layer + 1).contains("group"));
  }

  // Resume takes the group size from the checkpoint; another one is refused.
  const std::string resumed_metrics = path("resumed.json");
  const CliResult resumed = run({"train", "--device", "cpu", "--data", data_, "--resume",
                                 checkpoint, "--epochs", "2", "--metrics-json", resumed_metrics});
  ASSERT_EQ(resumed.status, 0) << resumed.err;
  EXPECT_EQ(read_json(resumed_metrics).at("hyperparameters").at("weight_group").get<int>(), 32);
  const CliResult conflicting = run({"train", "--device", "cpu", "--data", data_, "--resume",
                                     checkpoint, "--epochs", "2", "--weight-group", "0"});
  EXPECT_EQ(conflicting.status, 1);
  EXPECT_TRUE(one_error_line(conflicting));
  EXPECT_NE(conflicting.err.find("cannot resume with a different --weight-group"),
            std::string::npos)
      << conflicting.err;

  // Per channel, the default: no group in the metrics.
  const std::string plain = path("plain.json");
  ASSERT_EQ(run({"train", "--device", "cpu", "--data", data_, "--epochs", "1", "--limit-train",
                 "128", "--limit-test", "64", "--batch", "64", "--metrics-json", plain})
                .status,
            0);
  const nlohmann::json plain_json = read_json(plain);
  EXPECT_EQ(plain_json.at("hyperparameters").at("weight_group").get<int>(), 0);
  EXPECT_TRUE(plain_json.at("quantizers").at(0).at("group").is_null());

  // Groups that leave conv1's rows of 25 in groups of 1: a runtime error naming it.
  const CliResult ungroupable = run({"train", "--device", "cpu", "--data", data_, "--epochs", "1",
                                     "--limit-train", "128", "--weight-group", "4"});
  EXPECT_EQ(ungroupable.status, 1);
  EXPECT_TRUE(one_error_line(ungroupable));
  EXPECT_NE(ungroupable.err.find("rows of conv1 (25 weights)"), std::string::npos)
      << ungroupable.err;
}

TEST_F(CliTrain, LayerBitsAndTheScheduleShapeTheRunAndItsResume) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  const std::string checkpoint = path("scheduled.safetensors");
  const std::string metrics = path("scheduled.json");
  const CliResult first =
      run({"train", "--device", "cpu", "--data", data_, "--epochs", "2", "--limit-train", "128",
           "--limit-test", "128", "--batch", "64", "--layer-bits", "conv1=8,fc3=8/0",
           "--lr-schedule", "step", "--lr-milestones", "1,2", "--lr-factor", "0.5", "--save",
           checkpoint, "--metrics-json", metrics});
  ASSERT_EQ(first.status, 0) << first.err;
  EXPECT_NE(first.out.find(", lr 0.05 step x0.5 after epochs 1 2, layers conv1 8/8 fc3 8/0\n"),
            std::string::npos)
      << first.out;
  const nlohmann::json json = read_json(metrics);
  ASSERT_EQ(json.at("epochs").size(), 2u);
  EXPECT_EQ(json.at("epochs").at(0).at("learning_rate").get<double>(), 0.05);
  EXPECT_EQ(json.at("epochs").at(1).at("learning_rate").get<double>(), 0.025);
  const nlohmann::json& hyper = json.at("hyperparameters");
  EXPECT_EQ(hyper.at("lr_milestones"), nlohmann::json({1, 2}));
  EXPECT_EQ(hyper.at("lr_factor").get<double>(), 0.5);
  EXPECT_EQ(hyper.at("layer_bits").at("fc3"),
            nlohmann::json({{"weight_bits", 8}, {"act_bits", 0}}));
  const TrainOptions saved = checkpoint_options(checkpoint);
  ASSERT_EQ(saved.quantize.layer_bits.count("conv1"), 1u);
  EXPECT_EQ(saved.quantize.layer_bits.at("conv1").weight_bits, 8);
  EXPECT_EQ(saved.quantize.layer_bits.at("conv1").activation_bits, 8);
  EXPECT_EQ(saved.quantize.layer_bits.at("fc3").activation_bits, 0);

  // Without the flags the resumed run takes them from the checkpoint.
  const CliResult resumed = run({"train", "--device", "cpu", "--data", data_, "--resume",
                                 checkpoint, "--epochs", "3", "--metrics-json", metrics});
  ASSERT_EQ(resumed.status, 0) << resumed.err;
  EXPECT_NE(resumed.out.find("step x0.5 after epochs 1 2, layers conv1 8/8 fc3 8/0"),
            std::string::npos)
      << resumed.out;
  const nlohmann::json rest = read_json(metrics);
  ASSERT_EQ(rest.at("epochs").size(), 1u);
  EXPECT_EQ(rest.at("epochs").at(0).at("learning_rate").get<double>(), 0.0125);

  const CliResult other = run({"train", "--device", "cpu", "--data", data_, "--resume",
                               checkpoint, "--epochs", "4", "--lr-schedule", "cosine"});
  EXPECT_EQ(other.status, 1);
  EXPECT_TRUE(one_error_line(other));
  EXPECT_NE(other.err.find("cannot resume with a different learning-rate schedule"),
            std::string::npos)
      << other.err;
}

TEST_F(CliTrain, RangeDefaultsToLsqBelowFourBits) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  const auto range_of = [&](std::vector<std::string> extra) {
    const std::string metrics = path("range.json");
    std::vector<std::string> args = {"train", "--device", "cpu", "--data", data_, "--epochs",
                                     "1", "--limit-train", "128", "--limit-test", "64",
                                     "--batch", "64", "--metrics-json", metrics};
    args.insert(args.end(), extra.begin(), extra.end());
    const CliResult result = run(args);
    EXPECT_EQ(result.status, 0) << result.err;
    const nlohmann::json json = read_json(metrics);
    // Learned steps are reported as steps, one per output channel of the weights.
    const bool lsq = json.at("range").get<std::string>() == "lsq";
    const nlohmann::json& conv1 = json.at("quantizers").at(0);
    EXPECT_EQ(conv1.contains("step"), lsq) << conv1;
    EXPECT_EQ(conv1.contains("min"), !lsq) << conv1;
    if (lsq) {
      EXPECT_EQ(conv1.at("step").size(), 6u) << conv1;
      EXPECT_NE(result.out.find("-bit  6 steps in ["), std::string::npos) << result.out;
    }
    return json.at("range").get<std::string>();
  };
  EXPECT_EQ(range_of({}), "ema");
  EXPECT_EQ(range_of({"--weight-bits", "2", "--act-bits", "2"}), "lsq");
  EXPECT_EQ(range_of({"--weight-bits", "8", "--act-bits", "3"}), "lsq");
  EXPECT_EQ(range_of({"--weight-bits", "2", "--act-bits", "2", "--range", "ema"}), "ema");
}

// The summary tells the truth about the quant delay: the default (auto) is a
// tenth of the run's steps, so a short run quantizes for most of them; a
// delay the run never reaches is said so, by train and by eval.
TEST_F(CliTrain, SummarySaysWhenQuantizationStarted) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  const std::vector<std::string> run_of_20_steps = {"train", "--device", "cpu", "--data", data_,
                                                    "--epochs", "1", "--limit-train", "1280",
                                                    "--limit-test", "128", "--batch", "64"};
  const std::string metrics = path("auto.json");
  std::vector<std::string> args = run_of_20_steps;
  args.insert(args.end(), {"--metrics-json", metrics});
  CliResult result = run(args);
  ASSERT_EQ(result.status, 0) << result.err;
  EXPECT_NE(result.out.find("\n  quantized from      step 3 of 20 (quant delay 2)\n"),
            std::string::npos)
      << result.out;
  EXPECT_EQ(read_json(metrics).at("quant_delay").get<int>(), 2);
  EXPECT_EQ(read_json(metrics).at("first_quantized_step").get<int>(), 3);

  const std::string checkpoint = path("delayed.safetensors");
  args = run_of_20_steps;
  args.insert(args.end(), {"--quant-delay", "100", "--save", checkpoint});
  result = run(args);
  ASSERT_EQ(result.status, 0) << result.err;
  EXPECT_NE(result.out.find("\n  quantized from      never: 20 steps trained (quant delay 100)\n"),
            std::string::npos)
      << result.out;
  result = run({"eval", "--device", "cpu", "--data", data_, "--limit-test", "128",
                "--checkpoint", checkpoint});
  ASSERT_EQ(result.status, 0) << result.err;
  EXPECT_NE(result.out.find("checkpoint: " + checkpoint +
                            " (weights 4-bit, activations 4-bit, logits 8-bit; evaluated in "
                            "float: 20 steps trained, quant delay 100)\n"),
            std::string::npos)
      << result.out;
}

// fp32 has no range mode, no EMA and no quantizer: the header, the summary
// and the metrics say "none" and leave out the skipped-EMA count.
TEST_F(CliTrain, Fp32ReportsNoRangeAndNoEma) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  const std::string metrics = path("fp32.json");
  const CliResult result = run({"train", "--device", "cpu", "--data", data_, "--epochs", "1",
                                "--limit-train", "128", "--limit-test", "64", "--batch", "64",
                                "--weight-bits", "0", "--act-bits", "0", "--metrics-json",
                                metrics});
  ASSERT_EQ(result.status, 0) << result.err;
  EXPECT_NE(result.out.find(": fp32, range none, epochs 1"), std::string::npos) << result.out;
  EXPECT_NE(result.out.find("\n  range               none\n"), std::string::npos) << result.out;
  EXPECT_EQ(result.out.find("EMA"), std::string::npos) << result.out;
  EXPECT_EQ(result.out.find("quantized from"), std::string::npos) << result.out;
  EXPECT_EQ(result.out.find("quantizers"), std::string::npos) << result.out;
  const nlohmann::json json = read_json(metrics);
  EXPECT_EQ(json.at("range").get<std::string>(), "none");
  EXPECT_FALSE(json.contains("skipped_ema_batches"));
  EXPECT_EQ(json.at("quantizers"), nlohmann::json::array());
}

TEST_F(CliTrain, DivergenceExits1NamingTheStepsAndKeepsTheCheckpoint) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  const std::string checkpoint = path("good.safetensors");
  std::vector<std::string> args = {
      "train", "--device",     "cpu", "--data",  data_, "--epochs", "1",       "--limit-train",
      "640",   "--limit-test", "64",  "--batch", "64",  "--save",   checkpoint};
  ASSERT_EQ(run(args).status, 0);
  const std::string good = test::read_file(checkpoint);
  args = {"train", "--device", "cpu", "--data", data_, "--resume", checkpoint, "--epochs", "2",
          "--lr", "1e30", "--save", checkpoint};
  const CliResult result = run(args);
  EXPECT_EQ(result.status, 1);
  EXPECT_EQ(result.err,
            "error: training diverged: the loss became non-finite in epoch 2 at step "
            "2; try a lower --lr than 1e+30; " +
                checkpoint + " keeps epoch 1\n");
  EXPECT_EQ(result.out.find("summary"), std::string::npos) << result.out;
  EXPECT_TRUE(test::read_file(checkpoint) == good) << "the checkpoint must not be overwritten";
}

TEST_F(CliTrain, EvalRefusesACheckpointWithNonFiniteWeights) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  const std::string checkpoint = path("nan.safetensors");
  ASSERT_EQ(run({"train", "--device", "cpu", "--data", data_, "--epochs", "1", "--limit-train",
                 "128", "--limit-test", "64", "--batch", "64", "--save", checkpoint})
                .status,
            0);
  // What a diverged run would have saved, had it not stopped: NaN in fc1.
  const Checkpoint saved = read_checkpoint(checkpoint);
  const auto cpu = make_cpu_backend();
  Network network(quantize(lenet5(), saved.options.quantize), *cpu, saved.options.batch);
  restore_checkpoint(saved, network, *cpu, nullptr);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (const ParameterSlot& slot : network.parameter_slots())
    if (slot.name == "fc1.weight")
      cpu->upload(network.parameters() + slot.offset, &nan, sizeof nan);
  const std::vector<float> velocity(static_cast<std::size_t>(network.parameter_count()));
  save_checkpoint(checkpoint, saved.options, saved.progress, network, *cpu, velocity.data());

  const CliResult result = run({"eval", "--device", "cpu", "--data", data_, "--checkpoint",
                                checkpoint});
  EXPECT_EQ(result.status, 1);
  EXPECT_EQ(result.err, "error: " + checkpoint + ": fc1.weight holds NaN or infinite values (the "
                        "run that saved it diverged)\n");
}

// Resuming a finished run is no failure (a preempted job can resume blindly),
// but it says that nothing was trained, and shows no speed.
TEST_F(CliTrain, ResumingAFinishedRunSaysThereIsNothingToTrain) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  const std::string checkpoint = path("done.safetensors");
  ASSERT_EQ(run({"train", "--device", "cpu", "--data", data_, "--epochs", "1", "--limit-train",
                 "128", "--limit-test", "64", "--batch", "64", "--save", checkpoint})
                .status,
            0);
  const CliResult result = run({"train", "--device", "cpu", "--resume", checkpoint});
  EXPECT_EQ(result.status, 0) << result.err;
  EXPECT_EQ(result.out, "nothing to train: " + checkpoint +
                            " already holds 1 epoch of the 1 asked for; give --epochs N with N > 1 "
                            "to train further\n");
  EXPECT_EQ(result.err, "");
}

TEST_F(CliTrain, EvalPrintsTheLossWithFourDecimalsAndHonoursThreads) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  const std::string checkpoint = path("loss.safetensors");
  ASSERT_EQ(run({"train", "--device", "cpu", "--data", data_, "--epochs", "1", "--limit-train",
                 "128", "--limit-test", "64", "--batch", "64", "--save", checkpoint})
                .status,
            0);
  const std::string metrics = path("loss.json");
  const CliResult result = run({"eval", "--device", "cpu", "--threads", "1", "--checkpoint",
                                checkpoint, "--metrics-json", metrics});
  ASSERT_EQ(result.status, 0) << result.err;
  EXPECT_EQ(result.out.rfind("device: cpu (1 thread)\n", 0), 0u) << result.out;
  char loss[32];
  std::snprintf(loss, sizeof loss, ", loss %.4f\n", read_json(metrics).at("loss").get<double>());
  EXPECT_NE(result.out.find(loss), std::string::npos) << "expected \"" << loss << "\" in\n"
                                                      << result.out;
}

using CliData = Cli;
using CliOutput = Cli;

std::string image_size(std::uint32_t side) {
  return std::to_string(side) + "x" + std::to_string(side);
}

// The model takes the test images' size and both splits go through it: a
// training split of another size was read past its end (1x1 against 200x200
// crashed; 28x28 against 32x32 trained on garbage).
TEST_F(CliData, TrainRefusesSplitsOfDifferentImageSizes) {
  for (const auto& [train_side, test_side] : {std::pair{1u, 200u}, std::pair{28u, 32u}}) {
    const fs::path data = dir_ / ("data" + std::to_string(train_side));
    fs::create_directory(data);
    const std::string train_images =
        test::write_mnist_split(data, "train", 8, train_side, train_side);
    const std::string test_images = test::write_mnist_split(data, "t10k", 4, test_side, test_side);
    const CliResult result = run({"train", "--device", "cpu", "--data", data.string(), "--epochs",
                                  "1", "--batch", "8"});
    EXPECT_EQ(result.status, 1);
    EXPECT_EQ(result.err, "error: " + train_images + " holds " + image_size(train_side) +
                              " images but " + test_images + " holds " + image_size(test_side) +
                              ": the training and test images must have the same size\n");
  }
}

TEST_F(CliData, TrainRefusesImagesTooSmallForLeNet5) {
  test::write_mnist_split(dir_, "train", 8, 8, 8);
  const std::string test_images = test::write_mnist_split(dir_, "t10k", 4, 8, 8);
  const CliResult result =
      run({"train", "--device", "cpu", "--data", dir_.string(), "--epochs", "1", "--batch", "8"});
  EXPECT_EQ(result.status, 1);
  EXPECT_EQ(result.err, "error: " + test_images +
                            " holds 8x8 images, smaller than the 12x12 LeNet-5 needs\n");
}

// A checkpoint's model takes one image size; eval reads only the test files.
TEST_F(CliData, EvalNeedsOnlyTheTestFilesOfTheCheckpointsImageSize) {
  const fs::path small = dir_ / "small";
  fs::create_directory(small);
  test::write_mnist_split(small, "train", 16, 12, 12);
  test::write_mnist_split(small, "t10k", 8, 12, 12);
  const std::string checkpoint = path("small.safetensors");
  const CliResult trained = run({"train", "--device", "cpu", "--data", small.string(), "--epochs",
                                 "1", "--batch", "8", "--save", checkpoint});
  ASSERT_EQ(trained.status, 0) << trained.err;

  const fs::path test_only = dir_ / "test-only";
  fs::create_directory(test_only);
  test::write_mnist_split(test_only, "t10k", 8, 12, 12);
  const CliResult evaluated =
      run({"eval", "--device", "cpu", "--data", test_only.string(), "--checkpoint", checkpoint});
  EXPECT_EQ(evaluated.status, 0) << evaluated.err;
  EXPECT_NE(evaluated.out.find("test accuracy"), std::string::npos) << evaluated.out;

  const fs::path larger = dir_ / "larger";
  fs::create_directory(larger);
  test::write_mnist_split(larger, "train", 16, 16, 16);
  const std::string larger_images = test::write_mnist_split(larger, "t10k", 8, 16, 16);
  const std::string expected = "error: " + larger_images +
                               " holds 16x16 images, but the model in " + checkpoint +
                               " takes 12x12\n";
  const CliResult eval_larger =
      run({"eval", "--device", "cpu", "--data", larger.string(), "--checkpoint", checkpoint});
  EXPECT_EQ(eval_larger.status, 1);
  EXPECT_EQ(eval_larger.err, expected);
  const CliResult resume_larger = run({"train", "--device", "cpu", "--data", larger.string(),
                                       "--resume", checkpoint, "--epochs", "2"});
  EXPECT_EQ(resume_larger.status, 1);
  EXPECT_EQ(resume_larger.err, expected);
}

// Checked before the device is chosen or any data read: with a dataset that
// trains, nothing reaches stdout.
TEST_F(CliOutput, UnwritableOutputsFailBeforeAnyWork) {
  test::write_mnist_split(dir_, "train", 8, 12, 12);
  test::write_mnist_split(dir_, "t10k", 4, 12, 12);
  fs::create_directory(path("a-directory"));
  std::ofstream(path("a-file")) << "x";
  struct Case {
    std::string flag, target, problem;
  };
  std::vector<Case> cases = {
      {"--save", path("a-directory"), "is a directory"},
      {"--save", path("missing/c.safetensors"), "directory " + path("missing") + " does not exist"},
      {"--save", path("a-file/c.safetensors"), path("a-file") + " is not a directory"},
      {"--metrics-json", path("a-directory"), "is a directory"},
  };
  if (::geteuid() != 0) {  // root writes anywhere
    fs::create_directory(path("read-only"));
    fs::permissions(path("read-only"), fs::perms::owner_read | fs::perms::owner_exec);
    cases.push_back({"--save", path("read-only/c.safetensors"),
                     "cannot create files in " + path("read-only") + ": Permission denied"});
  }
  for (const Case& c : cases) {
    const CliResult result = run({"train", "--device", "cpu", "--data", dir_.string(), "--epochs",
                                  "1", "--batch", "8", c.flag, c.target});
    EXPECT_EQ(result.status, 1) << c.target;
    EXPECT_EQ(result.err, "error: " + c.flag + " " + c.target + ": " + c.problem + "\n");
    EXPECT_EQ(result.out, "") << "an unwritable " << c.flag << " must fail before any work";
  }
}

// /dev/stdout is written into, after what was printed (stdout here is a
// file, which a rename would have replaced); a symbolic link given to --save
// stays, and the checkpoint lands where it points.
TEST_F(CliOutput, MetricsToStdoutAndASaveThroughASymlink) {
  test::write_mnist_split(dir_, "train", 8, 12, 12);
  test::write_mnist_split(dir_, "t10k", 4, 12, 12);
  fs::create_directory(path("runs"));
  fs::create_symlink("runs/latest.safetensors", path("latest.safetensors"));
  const CliResult result = run({"train", "--device", "cpu", "--data", dir_.string(), "--epochs",
                                "1", "--batch", "8", "--save", path("latest.safetensors"),
                                "--metrics-json", "/dev/stdout"});
  ASSERT_EQ(result.status, 0) << result.err;
  const std::size_t json_at = result.out.find("\n{");
  ASSERT_NE(json_at, std::string::npos) << result.out;
  EXPECT_NE(result.out.substr(0, json_at).find("epoch 1/1"), std::string::npos) << result.out;
  const nlohmann::json metrics = nlohmann::json::parse(result.out.substr(json_at + 1));
  EXPECT_TRUE(metrics.contains("test_accuracy")) << metrics;
  EXPECT_TRUE(fs::is_symlink(path("latest.safetensors")));
  EXPECT_TRUE(fs::is_regular_file(path("runs/latest.safetensors")));
  const CliResult evaluated = run({"eval", "--device", "cpu", "--data", dir_.string(),
                                   "--checkpoint", path("latest.safetensors")});
  EXPECT_EQ(evaluated.status, 0) << evaluated.err;
}

// --init fine-tunes: a run starts from another run's weights and biases, at
// any width, while --resume keeps refusing a change of width.
TEST_F(CliTrain, InitStartsFromTheWeightsOfAnotherRun) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  const std::string fp32 = path("fp32.safetensors");
  const std::vector<std::string> small = {"--device", "cpu", "--data", data_, "--epochs", "1",
                                          "--limit-test", "256", "--batch", "64"};
  const auto train_with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = {"train"};
    args.insert(args.end(), small.begin(), small.end());
    args.insert(args.end(), extra.begin(), extra.end());
    return run(args);
  };
  const CliResult trained = train_with(
      {"--limit-train", "512", "--weight-bits", "0", "--act-bits", "0", "--save", fp32});
  ASSERT_EQ(trained.status, 0) << trained.err;
  const std::string eval_json = path("eval.json");
  ASSERT_EQ(run({"eval", "--checkpoint", fp32, "--data", data_, "--device", "cpu",
                 "--limit-test", "256", "--metrics-json", eval_json})
                .status,
            0);
  const double start_accuracy = read_json(eval_json).at("test_accuracy").get<double>();

  // One step at a rate too small to move a weight: the test accuracy is the
  // fp32 model's, so that is where the run started.
  const std::string same_json = path("same.json");
  const CliResult same = train_with({"--init", fp32, "--limit-train", "64", "--weight-bits", "0",
                                     "--act-bits", "0", "--lr", "1e-30", "--metrics-json",
                                     same_json});
  ASSERT_EQ(same.status, 0) << same.err;
  EXPECT_NE(same.out.find(", starting from " + fp32), std::string::npos) << same.out;
  const nlohmann::json same_metrics = read_json(same_json);
  EXPECT_EQ(same_metrics.at("test_accuracy").get<double>(), start_accuracy);
  EXPECT_EQ(same_metrics.at("hyperparameters").at("init").get<std::string>(), fp32);

  // QAT from the fp32 weights.
  const CliResult qat =
      train_with({"--init", fp32, "--limit-train", "256", "--weight-bits", "4", "--act-bits", "4"});
  EXPECT_EQ(qat.status, 0) << qat.err;

  // A resume keeps refusing another width, and points at --init.
  const CliResult resumed = run({"train", "--device", "cpu", "--data", data_, "--resume", fp32,
                                 "--epochs", "2", "--weight-bits", "4"});
  EXPECT_EQ(resumed.status, 1);
  EXPECT_TRUE(one_error_line(resumed));
  EXPECT_NE(resumed.err.find("start a new run with --init"), std::string::npos) << resumed.err;

  const CliResult both = train_with({"--init", fp32, "--resume", fp32});
  EXPECT_EQ(both.status, 2);
  EXPECT_TRUE(one_error_line(both));
  EXPECT_NE(both.err.find("--resume excludes --init"), std::string::npos) << both.err;
}


// ---------------------------------------------------------------------------
// Deployment: lowbit export and lowbit eval --integer

using CliDeploy = Cli;

TEST_F(CliDeploy, ExportWritesBothFormatsAndEvalRunsTheIntegerModel) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  const std::string checkpoint = path("q4.safetensors");
  ASSERT_EQ(run({"train", "--device", "cpu", "--data", data_, "--epochs", "1", "--limit-train",
                 "1024", "--limit-test", "64", "--batch", "64", "--save", checkpoint})
                .status,
            0);
  const std::string model = path("q4.lowbit"), onnx = path("q4.onnx");
  const CliResult exported = run({"export", "--checkpoint", checkpoint, "--out", model});
  ASSERT_EQ(exported.status, 0) << exported.err;
  EXPECT_NE(exported.out.find("wrote " + model + ": lowbit, "), std::string::npos)
      << exported.out;
  EXPECT_NE(exported.out.find("\n  conv1  weights 4-bit, output 4-bit, relu, max pool 2\n"),
            std::string::npos)
      << exported.out;
  EXPECT_NE(exported.out.find("\n  fc3  weights 4-bit, output 8-bit\n"), std::string::npos)
      << exported.out;
  const CliResult as_onnx =
      run({"export", "--checkpoint", checkpoint, "--format", "onnx", "--out", onnx});
  ASSERT_EQ(as_onnx.status, 0) << as_onnx.err;
  EXPECT_NE(as_onnx.out.find("wrote " + onnx + ": onnx, "), std::string::npos) << as_onnx.out;
  EXPECT_GT(fs::file_size(onnx), 1000u);

  // A checkpoint: integer inference beside its fake-quant eval.
  const std::string metrics = path("integer.json");
  const CliResult compared =
      run({"eval", "--integer", "--checkpoint", checkpoint, "--device", "cpu", "--limit-test",
           "500", "--metrics-json", metrics});
  ASSERT_EQ(compared.status, 0) << compared.err;
  EXPECT_NE(compared.out.find("integer inference of " + checkpoint + ": test accuracy "),
            std::string::npos)
      << compared.out;
  EXPECT_NE(compared.out.find(" on 500 examples of "), std::string::npos) << compared.out;
  EXPECT_NE(compared.out.find("fake-quant eval: test accuracy "), std::string::npos)
      << compared.out;
  EXPECT_NE(compared.out.find("; same top-1 on "), std::string::npos) << compared.out;
  const nlohmann::json json = read_json(metrics);
  EXPECT_TRUE(json.at("integer").get<bool>());
  EXPECT_EQ(json.at("examples").get<int>(), 500);
  EXPECT_EQ(json.at("agreeing").get<std::size_t>() + json.at("disagreeing").size(), 500u);

  // The exported file: integer inference alone, with the same accuracy.
  const CliResult file = run({"eval", "--integer", "--checkpoint", model, "--device", "cpu",
                              "--data", data_, "--limit-test", "500"});
  ASSERT_EQ(file.status, 0) << file.err;
  EXPECT_EQ(file.out.find("fake-quant"), std::string::npos) << file.out;
  const auto accuracy_of = [](const std::string& out) {
    const auto at = out.find("test accuracy ");
    return at == std::string::npos ? std::string() : out.substr(at, 21);
  };
  EXPECT_EQ(accuracy_of(file.out), accuracy_of(compared.out));
  const CliResult plain = run({"eval", "--checkpoint", model, "--device", "cpu"});
  EXPECT_EQ(plain.status, 1);
  EXPECT_TRUE(one_error_line(plain));
  EXPECT_NE(plain.err.find("is an exported integer model: evaluate it with --integer"),
            std::string::npos)
      << plain.err;
}

TEST_F(CliDeploy, ExportRefusesWhatItCannotWriteAndWritesNothing) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  const std::string fp32 = path("fp32.safetensors");
  ASSERT_EQ(run({"train", "--device", "cpu", "--data", data_, "--epochs", "1", "--limit-train",
                 "128", "--limit-test", "64", "--batch", "64", "--weight-bits", "0",
                 "--act-bits", "0", "--save", fp32})
                .status,
            0);
  const CliResult float_model =
      run({"export", "--checkpoint", fp32, "--format", "onnx", "--out", path("fp32.onnx")});
  EXPECT_EQ(float_model.status, 1);
  EXPECT_TRUE(one_error_line(float_model));
  EXPECT_NE(float_model.err.find("float weights or activations"), std::string::npos)
      << float_model.err;
  EXPECT_FALSE(fs::exists(path("fp32.onnx")));

  const std::string three = path("q3.safetensors");
  ASSERT_EQ(run({"train", "--device", "cpu", "--data", data_, "--epochs", "1", "--limit-train",
                 "128", "--limit-test", "64", "--batch", "64", "--weight-bits", "3",
                 "--act-bits", "3", "--save", three})
                .status,
            0);
  const CliResult width = run({"export", "--checkpoint", three, "--out", path("q3.lowbit")});
  EXPECT_EQ(width.status, 1);
  EXPECT_NE(width.err.find("3-bit; the integer model takes 2, 4 or 8 bits"), std::string::npos)
      << width.err;
  EXPECT_FALSE(fs::exists(path("q3.lowbit")));

  fs::create_directory(path("a-directory"));
  const CliResult directory =
      run({"export", "--checkpoint", three, "--out", path("a-directory")});
  EXPECT_EQ(directory.status, 1);
  EXPECT_NE(directory.err.find("exists and is not a regular file"), std::string::npos)
      << directory.err;
  const std::string grouped = path("grouped.safetensors");
  ASSERT_EQ(run({"train", "--device", "cpu", "--data", data_, "--epochs", "1", "--limit-train",
                 "128", "--limit-test", "64", "--batch", "64", "--quant-delay", "0",
                 "--weight-group", "32", "--save", grouped})
                .status,
            0);
  for (const char* format : {"lowbit", "onnx"}) {
    const CliResult groups = run({"export", "--checkpoint", grouped, "--format", format, "--out",
                                  path(std::string("grouped.") + format)});
    EXPECT_EQ(groups.status, 1) << format;
    EXPECT_TRUE(one_error_line(groups));
    EXPECT_NE(groups.err.find("quantizes its weights in groups (--weight-group 32)"),
              std::string::npos)
        << groups.err;
    EXPECT_FALSE(fs::exists(path(std::string("grouped.") + format)));
  }
  const CliResult integer_eval = run({"eval", "--device", "cpu", "--checkpoint", grouped, "--data",
                                      data_, "--limit-test", "64", "--integer"});
  EXPECT_EQ(integer_eval.status, 1);
  EXPECT_NE(integer_eval.err.find("one weight scale per output channel"), std::string::npos)
      << integer_eval.err;
  EXPECT_EQ(run({"eval", "--device", "cpu", "--checkpoint", grouped, "--data", data_,
                 "--limit-test", "64"})
                .status,
            0)
      << "fake-quant evaluation runs a grouped model";

  const CliResult format =
      run({"export", "--checkpoint", three, "--format", "tflite", "--out", path("x")});
  EXPECT_EQ(format.status, 2);
  EXPECT_TRUE(one_error_line(format));
  EXPECT_FALSE(fs::exists(path("x")));
}

}  // namespace
}  // namespace lowbit
