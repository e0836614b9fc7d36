// lowbit: the command line. `lowbit train` trains a quantization-aware LeNet-5
// on an MNIST-format dataset; `lowbit eval` measures a checkpoint.
// Exit codes: 0 success; 2 usage error, one line on stderr; 1 runtime error
// (bad data, CUDA errors, out of memory), "error: ..." on stderr.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iostream>
#include <new>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "atomic_file.hpp"
#include "lowbit/data.hpp"
#include "lowbit/error.hpp"
#include "lowbit/graph.hpp"
#include "lowbit/trainer.hpp"
#include "lowbit/types.hpp"
#include "progress.hpp"

namespace lowbit::cli {
namespace {

constexpr int kRuntimeError = 1;
constexpr int kUsageError = 2;

constexpr RangeMode kRangeModes[] = {RangeMode::ema, RangeMode::lagged, RangeMode::lsq};

std::vector<std::string> range_names() {
  std::vector<std::string> names;
  for (RangeMode mode : kRangeModes) names.emplace_back(to_string(mode));
  return names;
}

/// Only called on a name the --range check accepted.
RangeMode range_from_name(const std::string& name) {
  for (RangeMode mode : kRangeModes)
    if (name == to_string(mode)) return mode;
  throw std::logic_error("unchecked --range " + name);
}

DeviceChoice device_from_name(const std::string& name) {
  if (name == "cuda") return DeviceChoice::cuda;
  if (name == "cpu") return DeviceChoice::cpu;
  return DeviceChoice::automatic;
}

/// A check on a numeric value, failing as "<value> is not <requirement>".
/// Text that is no number passes here: CLI11's conversion rejects it next.
CLI::Validator number_check(const std::string& requirement,
                            const std::function<bool(double)>& accept) {
  return CLI::Validator(
      [requirement, accept](std::string& text) -> std::string {
        char* end = nullptr;
        const double value = std::strtod(text.c_str(), &end);
        if (end == text.c_str() || *end != '\0') return {};
        return accept(value) ? std::string() : text + " is not " + requirement;
      },
      "");  // the option's help text states the requirement
}

const CLI::Validator kBitsCheck =
    number_check("in {0, " + std::to_string(kMinBits) + ".." + std::to_string(kMaxBits) + "}",
                 [](double v) { return v == 0.0 || (v >= kMinBits && v <= kMaxBits); });
const CLI::Validator kAtLeastOne = number_check(">= 1", [](double v) { return v >= 1.0; });
const CLI::Validator kNonNegative =
    number_check(">= 0", [](double v) { return v >= 0.0 && std::isfinite(v); });
const CLI::Validator kPositive =
    number_check("> 0", [](double v) { return v > 0.0 && std::isfinite(v); });
const CLI::Validator kUnitInterval =
    number_check("in [0, 1)", [](double v) { return v >= 0.0 && v < 1.0; });

/// `lowbit train`: the parsed flags and, for each option that shapes the run,
/// how to apply it when given. With --resume, the run starts from the
/// checkpoint's options and only the options given on the command line
/// override them; without, it starts from TrainOptions' defaults.
struct TrainCommand {
  CLI::App* app = nullptr;
  TrainOptions given;
  std::string device = "auto";
  std::string range = to_string(TrainOptions{}.quantize.range);
  bool graph = false;
  bool eager = false;
  std::string metrics_json;
  const CLI::Option* range_option = nullptr;
  std::vector<std::pair<const CLI::Option*, std::function<void(TrainOptions&)>>> overrides;
};

struct EvalCommand {
  CLI::App* app = nullptr;
  std::string checkpoint;
  std::string data = kDefaultDataDirectory;
  const CLI::Option* data_option = nullptr;
  std::string device = "auto";
  std::int64_t limit_test = TrainOptions{}.limit_test;
  std::string metrics_json;
};

/// The member of `options` at `path`, a chain of member pointers such as
/// &TrainOptions::quantize, &QuantizeOptions::weight_bits.
template <class... Path>
auto& member(TrainOptions& options, Path... path) {
  return (options .* ... .* path);
}

/// Adds an option bound to the TrainOptions member at `path`, shown with its
/// default, and records how to apply it over a checkpoint's options.
template <class... Path>
CLI::Option* add_train_option(TrainCommand& command, const std::string& name,
                              const std::string& type, const std::string& help, Path... path) {
  CLI::Option* option = command.app->add_option(name, member(command.given, path...), help)
                            ->type_name(type)
                            ->capture_default_str();
  command.overrides.emplace_back(option, [&command, path...](TrainOptions& options) {
    member(options, path...) = member(command.given, path...);
  });
  return option;
}

void add_device_option(CLI::App& app, std::string& device) {
  app.add_option("--device", device,
                 "auto (CUDA when a device is present, else the CPU; says which and why), "
                 "cuda or cpu")
      ->type_name("DEVICE")
      ->check(CLI::IsMember({"auto", "cuda", "cpu"}))
      ->capture_default_str();
}

void add_train_command(CLI::App& app, TrainCommand& command) {
  const TrainOptions defaults;
  command.app = app.add_subcommand(
      "train", "Quantization-aware training of LeNet-5 on an MNIST-format dataset.");
  CLI::App& sub = *command.app;
  add_train_option(command, "--data", "DIR",
                   "MNIST-format dataset directory (IDX files, gzipped or raw)",
                   &TrainOptions::data_dir);
  add_device_option(sub, command.device);
  add_train_option(command, "--weight-bits", "N", "weight width: 2..16 bits, or 0 for float",
                   &TrainOptions::quantize, &QuantizeOptions::weight_bits)
      ->check(kBitsCheck);
  add_train_option(command, "--act-bits", "N", "activation width: 2..16 bits, or 0 for float",
                   &TrainOptions::quantize, &QuantizeOptions::activation_bits)
      ->check(kBitsCheck);
  add_train_option(command, "--epochs", "N", "epochs to train (>= 1)", &TrainOptions::epochs)
      ->check(kAtLeastOne);
  add_train_option(command, "--batch", "N", "examples per training step (>= 1)",
                   &TrainOptions::batch)
      ->check(kAtLeastOne);
  add_train_option(command, "--lr", "F", "SGD learning rate (> 0)", &TrainOptions::sgd,
                   &SgdConfig::learning_rate)
      ->check(kPositive);
  add_train_option(command, "--momentum", "F", "SGD momentum, in [0, 1)", &TrainOptions::sgd,
                   &SgdConfig::momentum)
      ->check(kUnitInterval);
  add_train_option(command, "--weight-decay", "F", "SGD weight decay (L2), >= 0",
                   &TrainOptions::sgd, &SgdConfig::weight_decay)
      ->check(kNonNegative);
  add_train_option(command, "--ema-decay", "F",
                   "decay of the EMA that tracks activation ranges, in [0, 1)",
                   &TrainOptions::quantize, &QuantizeOptions::ema_decay)
      ->check(kUnitInterval);
  add_train_option(command, "--quant-delay", "STEPS",
                   "training steps before activations are quantized (their ranges track "
                   "meanwhile)",
                   &TrainOptions::quantize, &QuantizeOptions::quant_delay)
      ->check(kNonNegative);
  CLI::Option* range =
      sub.add_option("--range", command.range,
                     "ranges: ema (TensorFlow's EMA of activation min/max, weight max), "
                     "lagged (the EMA from before the batch, one pass), lsq (learned step "
                     "sizes for weights and activations); default: ema at 4 bits and more, "
                     "lsq below")
          ->type_name("MODE")
          ->check(CLI::IsMember(range_names()));
  command.range_option = range;
  command.overrides.emplace_back(
      range, [&command](TrainOptions& o) { o.quantize.range = range_from_name(command.range); });
  add_train_option(command, "--seed", "N", "seed of the initialisation and the shuffling",
                   &TrainOptions::seed)
      ->check(kNonNegative);  // CLI11 would wrap -1 to 2^64 - 1
  add_train_option(command, "--limit-train", "N", "train on the first N training examples (0: all)",
                   &TrainOptions::limit_train)
      ->check(kNonNegative);
  add_train_option(command, "--limit-test", "N", "test on the first N test examples (0: all)",
                   &TrainOptions::limit_test)
      ->check(kNonNegative);
  sub.add_option("--save", command.given.save_path,
                 "write a checkpoint (safetensors) to PATH after every epoch")
      ->type_name("PATH");
  sub.add_option("--resume", command.given.resume_path,
                 "continue training from the checkpoint at PATH; options not given on the "
                 "command line come from the checkpoint")
      ->type_name("PATH");
  sub.add_option("--metrics-json", command.metrics_json,
                 "write the results as JSON to PATH (accuracies are fractions in [0, 1])")
      ->type_name("PATH");
  const char* graph_help =
      defaults.use_graph ? "capture each training step as a CUDA graph and replay it (default)"
                         : "capture each training step as a CUDA graph and replay it";
  const char* eager_help = defaults.use_graph ? "launch each step's work directly"
                                              : "launch each step's work directly (default)";
  CLI::Option* graph = sub.add_flag("--graph", command.graph, graph_help);
  CLI::Option* eager = sub.add_flag("--eager", command.eager, eager_help);
  graph->excludes(eager);
  eager->excludes(graph);
  command.overrides.emplace_back(graph, [](TrainOptions& o) { o.use_graph = true; });
  command.overrides.emplace_back(eager, [](TrainOptions& o) { o.use_graph = false; });
}

void add_eval_command(CLI::App& app, EvalCommand& command) {
  command.app = app.add_subcommand("eval", "Test-set accuracy of a checkpoint.");
  CLI::App& sub = *command.app;
  sub.add_option("--checkpoint", command.checkpoint, "checkpoint written by lowbit train --save")
      ->type_name("PATH")
      ->required();
  command.data_option =
      sub.add_option("--data", command.data,
                     "MNIST-format dataset directory (default: the one the checkpoint was "
                     "trained on)")
          ->type_name("DIR");
  add_device_option(sub, command.device);
  sub.add_option("--limit-test", command.limit_test, "test on the first N test examples (0: all)")
      ->type_name("N")
      ->check(kNonNegative)
      ->capture_default_str();
  sub.add_option("--metrics-json", command.metrics_json,
                 "write the results as JSON to PATH (accuracy is a fraction in [0, 1])")
      ->type_name("PATH");
}

std::string one_line(std::string text) {
  for (char& c : text)
    if (c == '\n' || c == '\r') c = ' ';
  while (!text.empty() && text.back() == ' ') text.pop_back();
  return text;
}

int report_parse_error(const CLI::App& app, int argc, const CLI::ParseError& error,
                       const std::vector<const CLI::App*>& commands) {
  if (error.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success))
    return app.exit(error);  // --help, --version: printed on stdout
  if (argc <= 1) {
    std::cerr << app.help();
    return kUsageError;
  }
  std::string command = "lowbit";
  std::string message = error.what();
  for (const CLI::App* sub : commands)
    if (sub->parsed()) command += " " + sub->get_name();
  const std::vector<std::string> unparsed = app.remaining();
  // CLI11 says only "A subcommand is required" for `lowbit frobnicate`.
  if (app.get_subcommands().empty() && !unparsed.empty())
    message = "expected a command (train or eval) before " + unparsed.front();
  std::cerr << "error: " << one_line(message) << " (see " << command << " --help)\n";
  return kUsageError;
}

void require_file(const std::string& path, const std::string& what) {
  std::error_code ignored;
  if (!std::filesystem::is_regular_file(path, ignored))
    throw std::runtime_error(what + " not found: " + path);
}

void require_directory(const std::string& path, const std::string& what) {
  std::error_code ignored;
  if (!std::filesystem::is_directory(path, ignored))
    throw std::runtime_error(what + " not found: " + path);
}

/// Fails before any work when an output could not be written at the end.
void require_parent_directory(const std::string& path, const std::string& flag) {
  if (path.empty()) return;
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  std::error_code ignored;
  if (!parent.empty() && !std::filesystem::is_directory(parent, ignored))
    throw std::runtime_error(flag + " " + path + ": no directory " + parent.string());
}

/// Writes `text` to `path`; a reader sees the old file or the whole new one.
void write_text_atomically(const std::string& path, const std::string& text) {
  write_file_atomically(path, {{text.data(), text.size()}});
}

DeviceSelection choose_device(const std::string& name) {
  const DeviceChoice choice = device_from_name(name);
  DeviceSelection selection = select_device(choice);
  std::cout << "device: " << selection.backend->description();
  if (choice == DeviceChoice::automatic && !selection.reason.empty())
    std::cout << " (" << selection.reason << ")";
  std::cout << '\n' << std::flush;
  return selection;
}

nlohmann::json train_metrics(const TrainReport& report, RangeMode range) {
  nlohmann::json epochs = nlohmann::json::array();
  for (const EpochReport& epoch : report.epochs)
    epochs.push_back({{"epoch", epoch.epoch},
                      {"loss", epoch.loss},
                      {"train_accuracy", epoch.train_accuracy},
                      {"test_accuracy", epoch.test_accuracy},
                      {"images_per_second", epoch.images_per_second},
                      {"seconds", epoch.seconds}});
  nlohmann::json metrics = {{"test_accuracy", report.test_accuracy},
                            {"train_images_per_second", report.train_images_per_second},
                            {"device", report.device},
                            {"weight_bits", report.weight_bits},
                            {"act_bits", report.activation_bits},
                            {"range", to_string(range)},
                            {"skipped_ema_batches", report.skipped_ema_batches},
                            {"epochs", epochs}};
  return metrics;
}

int run_train(const TrainCommand& command) {
  const TrainOptions& given = command.given;
  if (!given.resume_path.empty()) require_file(given.resume_path, "checkpoint");
  TrainOptions options =
      given.resume_path.empty() ? TrainOptions{} : checkpoint_options(given.resume_path);
  for (const auto& [option, apply] : command.overrides)
    if (option->count() > 0) apply(options);
  if (given.resume_path.empty() && command.range_option->count() == 0)
    options.quantize.range =
        recommended_range(options.quantize.weight_bits, options.quantize.activation_bits);
  options.save_path = given.save_path;
  options.resume_path = given.resume_path;
  require_parent_directory(options.save_path, "--save");
  require_parent_directory(command.metrics_json, "--metrics-json");

  DeviceSelection device = choose_device(command.device);
  require_directory(options.data_dir, "data directory");
  std::cout << "training LeNet-5 on " << options.data_dir << ": "
            << describe_bits(options.quantize)
            << ", range " << to_string(options.quantize.range) << ", epochs " << options.epochs
            << ", batch " << options.batch
            << (options.resume_path.empty() ? "" : ", resuming from " + options.resume_path)
            << '\n';

  ProgressPrinter progress(std::cout, ::isatty(STDOUT_FILENO) == 1);
  const TrainReport report = train(options, *device.backend, &progress);
  print_summary(std::cout, report, options.quantize, options.save_path);
  if (!command.metrics_json.empty())
    write_text_atomically(command.metrics_json,
                          train_metrics(report, options.quantize.range).dump(2) + "\n");
  return 0;
}

int run_eval(const EvalCommand& command) {
  require_file(command.checkpoint, "checkpoint");
  const TrainOptions trained = checkpoint_options(command.checkpoint);
  const std::string data = command.data_option->count() > 0 ? command.data : trained.data_dir;
  require_parent_directory(command.metrics_json, "--metrics-json");

  DeviceSelection device = choose_device(command.device);
  require_directory(data, "data directory");
  const EvalReport report = evaluate(command.checkpoint, data, command.limit_test, *device.backend);
  std::cout << "checkpoint: " << command.checkpoint << " ("
            << describe_bits(trained.quantize) << ")\n"
            << "test accuracy " << percent(report.test_accuracy) << " on "
            << group_thousands(static_cast<double>(report.examples)) << " examples of " << data
            << ", loss " << report.loss << '\n';
  if (!command.metrics_json.empty()) {
    const nlohmann::json metrics = {
        {"test_accuracy", report.test_accuracy}, {"loss", report.loss},
        {"examples", report.examples},           {"device", report.device},
        {"weight_bits", report.weight_bits},     {"act_bits", report.activation_bits}};
    write_text_atomically(command.metrics_json, metrics.dump(2) + "\n");
  }
  return 0;
}

int run(int argc, char** argv) {
  CLI::App app{"lowbit: quantization-aware training at 2 to 16 bits.", "lowbit"};
  app.set_version_flag("--version", "lowbit " LOWBIT_VERSION);
  app.require_subcommand(1);
  TrainCommand train_command;
  EvalCommand eval_command;
  add_train_command(app, train_command);
  add_eval_command(app, eval_command);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    return report_parse_error(app, argc, error, {train_command.app, eval_command.app});
  }
  return train_command.app->parsed() ? run_train(train_command) : run_eval(eval_command);
}

}  // namespace
}  // namespace lowbit::cli

int main(int argc, char** argv) {
  // Every failure ends here as one "error:" line and exit status 1: no
  // uncaught exception (abort, core dump) escapes.
  try {
    return lowbit::cli::run(argc, argv);
  } catch (const lowbit::Error& error) {  // the message; the source line is for developers
    std::cerr << "error: " << lowbit::cli::one_line(error.message()) << '\n';
  } catch (const std::bad_alloc&) {
    std::cerr << "error: out of host memory\n";
  } catch (const std::exception& error) {
    std::cerr << "error: " << lowbit::cli::one_line(error.what()) << '\n';
  } catch (...) {
    std::cerr << "error: unknown exception\n";
  }
  return lowbit::cli::kRuntimeError;
}
