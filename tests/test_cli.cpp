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
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "lowbit/data.hpp"
#include "lowbit/graph.hpp"
#include "lowbit/trainer.hpp"
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

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

nlohmann::json read_json(const fs::path& path) { return nlohmann::json::parse(read_text(path)); }

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
    result.out = read_text(out);
    result.err = read_text(err);
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
}

TEST_F(CliHelp, TrainListsEveryFlagWithItsDefault) {
  const CliResult result = run({"train", "--help"});
  EXPECT_EQ(result.status, 0) << result.err;
  for (const char* flag :
       {"--data",        "--device", "--weight-bits",  "--act-bits",     "--epochs",
        "--batch",       "--lr",     "--momentum",     "--weight-decay", "--ema-decay",
        "--quant-delay", "--range",  "--seed",         "--limit-train",  "--limit-test",
        "--save",        "--resume", "--metrics-json", "--graph",        "--eager",
        "--help"})
    EXPECT_NE(result.out.find(flag), std::string::npos) << flag << " missing from\n" << result.out;
  const TrainOptions defaults;
  EXPECT_NE(result.out.find(defaults.data_dir), std::string::npos);
  EXPECT_NE(result.out.find(std::to_string(defaults.quantize.quant_delay)), std::string::npos);
  EXPECT_NE(result.out.find(std::to_string(defaults.batch)), std::string::npos);
  EXPECT_NE(result.out.find("[0, 1]"), std::string::npos) << "--metrics-json should say accuracies "
                                                             "are fractions";
}

TEST_F(CliHelp, EvalListsItsFlags) {
  const CliResult result = run({"eval", "--help"});
  EXPECT_EQ(result.status, 0) << result.err;
  for (const char* flag : {"--checkpoint", "--data", "--device", "--limit-test", "--metrics-json"})
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
  for (const char* key : {"test_accuracy", "train_images_per_second", "device", "weight_bits",
                          "act_bits", "range", "epochs"})
    EXPECT_TRUE(json.contains(key)) << key;
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
  EXPECT_GT(epoch.at("images_per_second").get<double>(), 0.0);
  EXPECT_NE(trained.out.find("test accuracy       " + percent_text(accuracy)), std::string::npos)
      << trained.out;

  const std::string eval_metrics = path("eval.json");
  const CliResult evaluated = run({"eval", "--checkpoint", checkpoint, "--data", data_, "--device",
                                   "cpu", "--limit-test", "256", "--metrics-json", eval_metrics});
  ASSERT_EQ(evaluated.status, 0) << evaluated.err;
  EXPECT_NE(evaluated.out.find("test accuracy " + percent_text(accuracy)), std::string::npos)
      << evaluated.out;
  const nlohmann::json eval_json = read_json(eval_metrics);
  for (const char* key : {"test_accuracy", "loss", "examples", "device", "weight_bits", "act_bits"})
    EXPECT_TRUE(eval_json.contains(key)) << key;
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
    return read_json(metrics).at("range").get<std::string>();
  };
  EXPECT_EQ(range_of({}), "ema");
  EXPECT_EQ(range_of({"--weight-bits", "2", "--act-bits", "2"}), "lsq");
  EXPECT_EQ(range_of({"--weight-bits", "8", "--act-bits", "3"}), "lsq");
  EXPECT_EQ(range_of({"--weight-bits", "2", "--act-bits", "2", "--range", "ema"}), "ema");
}

}  // namespace
}  // namespace lowbit
