// lowbit: the command line. `lowbit train` trains a quantization-aware LeNet-5
// on an MNIST-format dataset; `lowbit eval` measures a checkpoint.
// Exit codes: 0 success; 2 usage error, one line on stderr; 1 runtime error
// (bad data, CUDA errors, out of memory), "error: ..." on stderr.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iostream>
#include <limits>
#include <map>
#include <new>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "cli/progress.hpp"
#include "io/atomic_file.hpp"
#include "lowbit/data.hpp"
#include "lowbit/deploy.hpp"
#include "lowbit/error.hpp"
#include "lowbit/graph.hpp"
#include "lowbit/lr_schedule.hpp"
#include "lowbit/quantize.hpp"
#include "lowbit/trainer.hpp"
#include "lowbit/types.hpp"

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

constexpr LrScheduleKind kLrScheduleKinds[] = {LrScheduleKind::constant, LrScheduleKind::cosine,
                                               LrScheduleKind::step};

std::vector<std::string> lr_schedule_names() {
  std::vector<std::string> names;
  for (LrScheduleKind kind : kLrScheduleKinds) names.emplace_back(to_string(kind));
  return names;
}

/// The Conv2d and Linear layers of LeNet-5, the names --layer-bits takes.
std::vector<std::string> layer_names() {
  const Graph graph = lenet5();
  std::vector<std::string> names;
  for (const Node& node : graph.nodes())
    if (node.kind == NodeKind::conv2d || node.kind == NodeKind::linear)
      names.push_back(node.name);
  return names;
}

std::string joined(const std::vector<std::string>& words) {
  std::string text;
  for (const std::string& word : words) text += (text.empty() ? "" : " ") + word;
  return text;
}

std::vector<std::string> split(const std::string& text, char separator) {
  std::vector<std::string> parts;
  std::size_t begin = 0;
  for (std::size_t end; (end = text.find(separator, begin)) != std::string::npos;
       begin = end + 1)
    parts.push_back(text.substr(begin, end - begin));
  parts.push_back(text.substr(begin));
  return parts;
}

/// `text` as a whole decimal number in [least, most], or nothing.
std::optional<std::int64_t> whole_number_in(const std::string& text, std::int64_t least,
                                            std::int64_t most) {
  char* end = nullptr;
  errno = 0;
  const long long value = std::strtoll(text.c_str(), &end, 10);
  if (end == text.c_str() || *end != '\0' || errno == ERANGE || value < least || value > most)
    return std::nullopt;
  return value;
}

/// --lr-milestones "5,8": the epochs, or what is wrong with them.
std::string parse_milestones(const std::string& text, std::vector<std::int64_t>& milestones) {
  milestones.clear();
  for (const std::string& item : split(text, ',')) {
    const std::optional<std::int64_t> epoch =
        whole_number_in(item, 1, std::numeric_limits<std::int64_t>::max());
    if (!epoch) return "'" + item + "' is not an epoch >= 1 (give E1,E2,... such as 5,8)";
    if (!milestones.empty() && *epoch <= milestones.back())
      return "'" + text + "' is not increasing (give E1,E2,... such as 5,8)";
    milestones.push_back(*epoch);
  }
  return {};
}

/// --layer-bits "conv1=8,fc3=8/4": the widths by layer, or what is wrong with them.
std::string parse_layer_bits(const std::string& text, std::map<std::string, LayerBits>& layers) {
  layers.clear();
  const std::vector<std::string> names = layer_names();
  for (const std::string& entry : split(text, ',')) {
    const std::size_t equals = entry.find('=');
    if (equals == std::string::npos)
      return "'" + entry + "' is not LAYER=BITS or LAYER=W/A (such as conv1=8,fc3=8/4)";
    const std::string name = entry.substr(0, equals);
    if (std::find(names.begin(), names.end(), name) == names.end())
      return "unknown layer '" + name + "' (the layers are " + joined(names) + ")";
    if (layers.count(name) > 0) return "layer " + name + " is given twice";
    std::vector<int> widths;
    for (const std::string& bits : split(entry.substr(equals + 1), '/')) {
      const std::optional<std::int64_t> width = whole_number_in(bits, 0, kMaxBits);
      if (!width || (*width != 0 && *width < kMinBits))
        return entry + ": '" + bits + "' is not a width (" + std::to_string(kMinBits) + ".." +
               std::to_string(kMaxBits) + " bits, or 0 for float)";
      widths.push_back(static_cast<int>(*width));
    }
    if (widths.size() > 2) return "'" + entry + "' has more than two widths (give W or W/A)";
    layers[name] = {widths.front(), widths.back()};
  }
  return {};
}

DeviceChoice device_from_name(const std::string& name) {
  if (name == "cuda") return DeviceChoice::cuda;
  if (name == "cpu") return DeviceChoice::cpu;
  return DeviceChoice::automatic;
}

/// A check on a numeric value, failing as "<value> is not <requirement>", or
/// "is not a number" (CLI11 would read "" as 0).
CLI::Validator number_check(const std::string& requirement,
                            const std::function<bool(double)>& accept) {
  return CLI::Validator(
      [requirement, accept](std::string& text) -> std::string {
        char* end = nullptr;
        const double value = std::strtod(text.c_str(), &end);
        if (end == text.c_str() || *end != '\0') return "'" + text + "' is not a number";
        return accept(value) ? std::string() : text + " is not " + requirement;
      },
      "");  // the option's help text states the requirement
}

/// Whole decimal numbers that `Integer` holds, passed on in plain decimal:
/// CLI11 would clamp 99999999999999999999 to the largest value, wrap -1 to
/// 2^64 - 1, read "" as 0 and 010 as octal.
template <class Integer>
CLI::Validator whole_number_check() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        using Limits = std::numeric_limits<Integer>;
        using Wide = std::conditional_t<Limits::is_signed, long long, unsigned long long>;
        const bool minus = text.find('-') != std::string::npos;
        char* end = nullptr;
        errno = 0;  // strtoll and strtoull clamp, setting ERANGE
        Wide value = 0;
        if constexpr (Limits::is_signed)
          value = std::strtoll(text.c_str(), &end, 10);
        else
          value = std::strtoull(text.c_str(), &end, 10);  // reads "-1" as 2^64 - 1
        if (end == text.c_str() || *end != '\0') return "'" + text + "' is not a whole number";
        if (minus && !Limits::is_signed) return text + " is negative";
        bool fits = errno != ERANGE;
        if constexpr (sizeof(Integer) < sizeof(Wide))
          fits = fits && value >= Wide{Limits::min()} && value <= Wide{Limits::max()};
        if (!fits)
          return minus ? text + " is too small (the least is " + std::to_string(Limits::min()) + ")"
                       : text + " is too large (the most is " + std::to_string(Limits::max()) + ")";
        text = std::to_string(value);
        return {};
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

/// --quant-delay: a whole number of steps >= 0, or auto.
const CLI::Validator kQuantDelayCheck(
    [](std::string& text) -> std::string {
      if (text == "auto") return {};
      std::string problem = whole_number_check<std::int64_t>()(text);
      if (problem.empty()) problem = kNonNegative(text);
      return problem.empty() ? problem : problem + " (give STEPS >= 0 or auto)";
    },
    "");

const CLI::Validator kMilestonesCheck(
    [](std::string& text) {
      std::vector<std::int64_t> milestones;
      return parse_milestones(text, milestones);
    },
    "");

const CLI::Validator kLayerBitsCheck(
    [](std::string& text) {
      std::map<std::string, LayerBits> layers;
      return parse_layer_bits(text, layers);
    },
    "");

/// How --save and --metrics-json treat PATH (write_file()).
constexpr const char* kOutputPathHelp =
    "; a file is replaced atomically (through a symlink: its target, keeping the link), a FIFO "
    "or device such as /dev/stdout is written into";

/// `lowbit train`: the parsed flags and, for each option that shapes the run,
/// how to apply it when given. With --resume, the run starts from the
/// checkpoint's options and only the options given on the command line
/// override them; without, it starts from TrainOptions' defaults.
struct TrainCommand {
  CLI::App* app = nullptr;
  TrainOptions given;
  std::string device = "auto";
  std::string range = to_string(TrainOptions{}.quantize.range);
  std::string quant_delay = "auto";
  std::string lr_schedule = to_string(TrainOptions{}.lr_schedule.kind);
  std::string lr_milestones;
  std::string layer_bits;
  bool graph = false;
  bool eager = false;
  std::string metrics_json;
  int threads = 0;  ///< 0: one per core
  const CLI::Option* range_option = nullptr;
  const CLI::Option* lr_milestones_option = nullptr;
  const CLI::Option* lr_factor_option = nullptr;
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
  int threads = 0;  ///< 0: one per core
  bool integer = false;
};

struct ExportCommand {
  CLI::App* app = nullptr;
  std::string checkpoint;
  std::string format = "lowbit";
  std::string out;
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
  using Value = std::decay_t<decltype(member(command.given, path...))>;
  CLI::Option* option = command.app->add_option(name, member(command.given, path...), help)
                            ->type_name(type)
                            ->capture_default_str();
  if constexpr (std::is_integral_v<Value>) option->check(whole_number_check<Value>());
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

void add_threads_option(CLI::App& app, int& threads) {
  app.add_option("--threads", threads,
                 "threads of the CPU backend (default: one per core); waiting threads sleep, so "
                 "a busy core slows a run down but does not stall it")
      ->type_name("N")
      ->check(whole_number_check<int>())
      ->check(kAtLeastOne);
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
  CLI::Option* layer_bits =
      sub.add_option("--layer-bits", command.layer_bits,
                     "widths of single layers (" + joined(layer_names()) +
                         ") over --weight-bits and --act-bits: LAYER=BITS for both widths, "
                         "LAYER=W/A for each; 2..16 bits, or 0 for float; e.g. conv1=8,fc3=8/4")
          ->type_name("LAYER=BITS,...")
          ->check(kLayerBitsCheck);
  command.overrides.emplace_back(layer_bits, [&command](TrainOptions& o) {
    parse_layer_bits(command.layer_bits, o.quantize.layer_bits);
  });
  add_train_option(command, "--epochs", "N", "epochs to train (>= 1)", &TrainOptions::epochs)
      ->check(kAtLeastOne);
  add_train_option(command, "--batch", "N", "examples per training step (>= 1)",
                   &TrainOptions::batch)
      ->check(kAtLeastOne);
  add_train_option(command, "--lr", "F", "SGD learning rate (> 0)", &TrainOptions::sgd,
                   &SgdConfig::learning_rate)
      ->check(kPositive);
  CLI::Option* lr_schedule =
      sub.add_option("--lr-schedule", command.lr_schedule,
                     "learning rate by epoch: constant; cosine (from --lr down towards 0, "
                     "PyTorch's CosineAnnealingLR); step (--lr times --lr-factor at each of "
                     "--lr-milestones, PyTorch's MultiStepLR)")
          ->type_name("KIND")
          ->check(CLI::IsMember(lr_schedule_names()))
          ->capture_default_str();
  command.overrides.emplace_back(lr_schedule, [&command](TrainOptions& o) {
    o.lr_schedule.kind = lr_schedule_kind_from_name(command.lr_schedule);
  });
  CLI::Option* lr_milestones =
      sub.add_option("--lr-milestones", command.lr_milestones,
                     "for --lr-schedule step: the epochs after which the rate is multiplied by "
                     "--lr-factor, increasing and >= 1")
          ->type_name("E1,E2,...")
          ->check(kMilestonesCheck);
  command.lr_milestones_option = lr_milestones;
  command.overrides.emplace_back(lr_milestones, [&command](TrainOptions& o) {
    parse_milestones(command.lr_milestones, o.lr_schedule.milestones);
  });
  command.lr_factor_option =
      add_train_option(command, "--lr-factor", "F",
                       "for --lr-schedule step: the rate's multiplier at each milestone, in (0, 1]",
                       &TrainOptions::lr_schedule, &LrSchedule::factor)
          ->check(number_check("in (0, 1]", [](double v) { return v > 0.0 && v <= 1.0; }));
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
  CLI::Option* quant_delay =
      sub.add_option("--quant-delay", command.quant_delay,
                     "training steps during which weights and activations pass through "
                     "unquantized while activation ranges track (TensorFlow's quant_delay); "
                     "auto: a tenth of the run's steps, at most 500, and 0 with --range lsq, "
                     "which quantizes from the first step")
          ->type_name("STEPS|auto")
          ->check(kQuantDelayCheck)
          ->capture_default_str();
  command.overrides.emplace_back(quant_delay, [&command](TrainOptions& o) {
    o.quantize.quant_delay =
        command.quant_delay == "auto" ? kAutoQuantDelay : std::stoll(command.quant_delay);
  });
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
  add_train_option(command, "--weight-group", "G",
                   "quantize weights in groups of G consecutive weights along each output "
                   "channel's row (its input dimension), one range or lsq step per group; 0: per "
                   "channel. G >= 2; a row of L weights uses the largest divisor of L that is at "
                   "most G (LeNet-5 at G 32: 25, 30, 25, 30, 28), G >= L is per channel",
                   &TrainOptions::quantize, &QuantizeOptions::weight_group)
      ->check(number_check("0 or >= 2", [](double v) { return v == 0.0 || v >= 2.0; }));
  add_train_option(command, "--seed", "N", "seed of the initialisation and the shuffling",
                   &TrainOptions::seed);
  add_train_option(command, "--limit-train", "N", "train on the first N training examples (0: all)",
                   &TrainOptions::limit_train)
      ->check(kNonNegative);
  add_train_option(command, "--limit-test", "N", "test on the first N test examples (0: all)",
                   &TrainOptions::limit_test)
      ->check(kNonNegative);
  sub.add_option("--save", command.given.save_path,
                 std::string("write a checkpoint (safetensors) to PATH after every epoch") +
                     kOutputPathHelp)
      ->type_name("PATH");
  sub.add_option("--resume", command.given.resume_path,
                 "continue training from the checkpoint at PATH; options not given on the "
                 "command line come from the checkpoint; one that already holds --epochs "
                 "epochs trains nothing (exit 0)")
      ->type_name("PATH");
  sub.add_option("--init", command.given.init_path,
                 "start from the weights and biases of the checkpoint at PATH (any width, "
                 "fp32 included), with fresh quantizer and optimizer state: fine-tuning")
      ->type_name("PATH")
      ->excludes("--resume");
  sub.add_option("--metrics-json", command.metrics_json,
                 std::string("write the results as JSON to PATH (accuracies are fractions in "
                             "[0, 1])") +
                     kOutputPathHelp)
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
  add_threads_option(sub, command.threads);
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
      ->check(whole_number_check<std::int64_t>())
      ->check(kNonNegative)
      ->capture_default_str();
  add_threads_option(sub, command.threads);
  sub.add_flag("--integer", command.integer,
               "run integer-only inference (int8 codes, int32 sums, fixed-point "
               "requantization) of the checkpoint, or of a model lowbit export wrote, and compare "
               "a checkpoint's top-1 with its fake-quant eval");
  sub.add_option("--metrics-json", command.metrics_json,
                 std::string("write the results as JSON to PATH (accuracy is a fraction in "
                             "[0, 1])") +
                     kOutputPathHelp)
      ->type_name("PATH");
}

void add_export_command(CLI::App& app, ExportCommand& command) {
  command.app = app.add_subcommand(
      "export", "Write a trained quantized model for deployment: packed integer codes or ONNX.");
  CLI::App& sub = *command.app;
  sub.add_option("--checkpoint", command.checkpoint, "checkpoint written by lowbit train --save")
      ->type_name("PATH")
      ->required();
  sub.add_option("--format", command.format,
                 "lowbit: safetensors with packed 2/4/8-bit codes, int32 biases and "
                 "fixed-point requantization (lowbit eval --integer runs it); onnx: a QDQ graph "
                 "for onnxruntime (opset 21, or 25 with 2-bit types)")
      ->type_name("FORMAT")
      ->check(CLI::IsMember({"lowbit", "onnx"}))
      ->capture_default_str();
  sub.add_option("--out", command.out,
                 "file to write; replaced atomically, and it must be a regular file if it exists")
      ->type_name("PATH")
      ->required();
}

/// OpenMP threads that spin while they wait hold their cores: next to one
/// busy process on 2 cores, 2 threads trained at half of 1 thread's speed.
/// Threads that sleep at once pay a wake-up for each of the step's many
/// short parallel regions (a third of the speed on an idle machine). So the
/// CLI has them spin briefly, then sleep: OMP_WAIT_POLICY=passive with
/// GOMP_SPINCOUNT=1000 (a few microseconds). libgomp reads both once, before
/// main(), so the CLI sets them and runs itself again; a policy or spin
/// count set by the user stays.
void wait_briefly_in_openmp(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr || std::getenv("GOMP_SPINCOUNT") != nullptr)
    return;
  if (::setenv("OMP_WAIT_POLICY", "passive", 1) != 0 ||
      ::setenv("GOMP_SPINCOUNT", "1000", 1) != 0)
    return;
  ::execv("/proc/self/exe", argv);  // returns only on failure: run on, threads spinning
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
    message = "expected a command (train, eval or export) before " + unparsed.front();
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
void require_writable(const std::string& path, const std::string& flag) {
  if (path.empty()) return;
  const std::string problem = write_problem(path);
  if (!problem.empty()) throw std::runtime_error(flag + " " + path + ": " + problem);
}

/// Writes `text` to `path` as write_file() does: a file is replaced
/// atomically, a FIFO or device written into. Flushes stdout first, so that
/// with /dev/stdout the text comes after what was printed.
void write_text(const std::string& path, const std::string& text) {
  std::cout << std::flush;
  write_file(path, {{text.data(), text.size()}});
}

/// A usage error found after parsing: one line, as report_parse_error's.
int usage_error(const std::string& command, const std::string& message) {
  std::cerr << "error: " << message << " (see lowbit " << command << " --help)\n";
  return kUsageError;
}

DeviceSelection choose_device(const std::string& name, int cpu_threads) {
  const DeviceChoice choice = device_from_name(name);
  DeviceSelection selection = select_device(choice, cpu_threads);
  std::cout << "device: " << selection.backend->description();
  if (choice == DeviceChoice::automatic && !selection.reason.empty())
    std::cout << " (" << selection.reason << ")";
  std::cout << '\n' << std::flush;
  return selection;
}

/// `value` as the double its shortest decimal form reads as: 0.05f is 0.05 in
/// the JSON, not 0.05000000074505806.
double shortest_decimal(float value) {
  char text[32];
  for (int digits = 6;; ++digits) {
    std::snprintf(text, sizeof text, "%.*g", digits, static_cast<double>(value));
    if (std::strtof(text, nullptr) == value || digits >= 9) return std::strtod(text, nullptr);
  }
}

/// The options that shaped a run, as given or as resolved (the quant delay).
nlohmann::json hyperparameters(const TrainOptions& o) {
  const QuantizeOptions& q = o.quantize;
  nlohmann::json layers = nlohmann::json::object();
  for (const auto& [name, bits] : q.layer_bits)
    layers[name] = {{"weight_bits", bits.weight_bits}, {"act_bits", bits.activation_bits}};
  return {{"epochs", o.epochs},
          {"batch", o.batch},
          {"lr", shortest_decimal(o.sgd.learning_rate)},
          {"momentum", shortest_decimal(o.sgd.momentum)},
          {"weight_decay", shortest_decimal(o.sgd.weight_decay)},
          {"lr_schedule", to_string(o.lr_schedule.kind)},
          {"lr_milestones", o.lr_schedule.milestones},
          {"lr_factor", shortest_decimal(o.lr_schedule.factor)},
          {"seed", o.seed},
          {"limit_train", o.limit_train},
          {"limit_test", o.limit_test},
          {"normalization_mean", shortest_decimal(o.normalization.mean)},
          {"normalization_std", shortest_decimal(o.normalization.std)},
          {"weight_bits", q.weight_bits},
          {"act_bits", q.activation_bits},
          {"output_bits", q.output_bits},
          {"layer_bits", layers},
          {"range", to_string(q.range)},
          {"rounding", to_string(q.rounding)},
          {"per_channel", q.per_channel},
          {"weight_group", q.weight_group},
          {"symmetric_weights", q.symmetric_weights},
          {"ema_decay", shortest_decimal(q.ema_decay)},
          {"quant_delay", q.quant_delay}};
}

/// Each quantizer's final state: min/max per channel (ema, lagged) or step
/// (lsq), and for activations the last epoch's clipping.
nlohmann::json quantizer_metrics(const std::vector<QuantizerReport>& quantizers) {
  const auto decimals = [](const std::vector<float>& values) {
    nlohmann::json list = nlohmann::json::array();
    for (const float v : values) list.push_back(shortest_decimal(v));
    return list;
  };
  nlohmann::json list = nlohmann::json::array();
  for (const QuantizerReport& q : quantizers) {
    // Weights take the range of their last value unless the step is learned.
    const bool last_value = q.weights && q.range != RangeMode::lsq;
    nlohmann::json entry = {{"name", q.name},
                            {"weights", q.weights},
                            {"bits", q.bits},
                            {"range", last_value ? "last_value" : to_string(q.range)}};
    if (q.weights) entry["group"] = q.group > 0 ? nlohmann::json(q.group) : nlohmann::json(nullptr);
    if (q.step.empty()) {
      entry["min"] = decimals(q.min);
      entry["max"] = decimals(q.max);
    } else {
      entry["step"] = decimals(q.step);
    }
    if (!q.weights) {
      entry["quantized"] = q.quantized;
      entry["clipped"] = q.clipped;
      entry["clipped_fraction"] =
          q.quantized > 0
              ? nlohmann::json(static_cast<double>(q.clipped) / static_cast<double>(q.quantized))
              : nlohmann::json(nullptr);
    }
    list.push_back(std::move(entry));
  }
  return list;
}

nlohmann::json train_metrics(const TrainReport& report, const TrainOptions& options,
                             int threads) {
  nlohmann::json epochs = nlohmann::json::array();
  for (const EpochReport& epoch : report.epochs)
    epochs.push_back({{"epoch", epoch.epoch},
                      {"learning_rate", shortest_decimal(epoch.learning_rate)},
                      {"loss", epoch.loss},
                      {"train_accuracy", epoch.train_accuracy},
                      {"test_accuracy", epoch.test_accuracy},
                      {"test_loss", epoch.test_loss},
                      {"images_per_second", epoch.images_per_second},
                      {"seconds", epoch.seconds}});
  nlohmann::json parameters = hyperparameters(options);
  parameters["quant_delay"] = report.quant_delay;
  parameters["threads"] = threads;
  parameters["graph"] = options.use_graph;
  parameters["init"] = options.init_path;  // "" unless --init
  nlohmann::json metrics = {{"lowbit_version", LOWBIT_VERSION},
                            {"test_accuracy", report.test_accuracy},
                            {"test_loss", report.test_loss},
                            {"train_images_per_second", report.train_images_per_second},
                            {"device", report.device},
                            {"weight_bits", report.weight_bits},
                            {"act_bits", report.activation_bits},
                            {"range", describe_range(options.quantize)},
                            {"quant_delay", report.quant_delay},
                            {"hyperparameters", parameters},
                            {"epochs", epochs},
                            {"quantizers", quantizer_metrics(report.quantizers)}};
  if (report.first_quantized_step > 0)
    metrics["first_quantized_step"] = report.first_quantized_step;
  if (report.skipped_ema_batches) metrics["skipped_ema_batches"] = *report.skipped_ema_batches;
  return metrics;
}

/// "lr 0.05", "lr 0.05 cosine", "lr 0.05 step x0.1 after epochs 5 8".
std::string describe_learning_rate(const TrainOptions& o) {
  std::ostringstream text;
  text << "lr " << shortest_decimal(o.sgd.learning_rate);
  if (o.lr_schedule.kind != LrScheduleKind::constant) text << ' ' << to_string(o.lr_schedule.kind);
  if (o.lr_schedule.kind == LrScheduleKind::step) {
    text << " x" << shortest_decimal(o.lr_schedule.factor) << " after epochs";
    for (const std::int64_t m : o.lr_schedule.milestones) text << ' ' << m;
  }
  return text.str();
}

/// ", layers conv1 8/8 fc3 8/4" (weight/activation widths, the global ones
/// where a layer keeps them), or "" when no layer has its own.
std::string describe_layer_bits(const QuantizeOptions& q) {
  if (q.layer_bits.empty()) return "";
  std::string text = ", layers";
  for (const auto& [name, bits] : q.layer_bits)
    text += " " + name + " " +
            std::to_string(bits.weight_bits == -1 ? q.weight_bits : bits.weight_bits) + "/" +
            std::to_string(bits.activation_bits == -1 ? q.activation_bits : bits.activation_bits);
  return text;
}

int run_train(const TrainCommand& command) {
  const TrainOptions& given = command.given;
  if (!given.resume_path.empty()) require_file(given.resume_path, "checkpoint");
  if (!given.init_path.empty()) require_file(given.init_path, "checkpoint");
  const CheckpointInfo resumed =
      given.resume_path.empty() ? CheckpointInfo{} : checkpoint_info(given.resume_path);
  TrainOptions options = given.resume_path.empty() ? TrainOptions{} : resumed.options;
  for (const auto& [option, apply] : command.overrides)
    if (option->count() > 0) apply(options);
  if (given.resume_path.empty() && command.range_option->count() == 0)
    options.quantize.range =
        recommended_range(options.quantize.weight_bits, options.quantize.activation_bits);
  if (options.quantize.range == RangeMode::lsq && options.quantize.quant_delay > 0)
    return usage_error("train", "--quant-delay " + command.quant_delay + ": lsq ranges" +
                                    (command.range_option->count() == 0
                                         ? " (the default below 4 bits)"
                                         : "") +
                                    " quantize from the first step; give --range ema or lagged "
                                    "to delay quantization");
  const bool step_schedule = options.lr_schedule.kind == LrScheduleKind::step;
  if (command.lr_milestones_option->count() > 0 && !step_schedule)
    return usage_error("train", "--lr-milestones: only --lr-schedule step has milestones");
  if (command.lr_factor_option->count() > 0 && !step_schedule)
    return usage_error("train", "--lr-factor: only --lr-schedule step has a factor");
  if (step_schedule && options.lr_schedule.milestones.empty())
    return usage_error("train", "--lr-schedule step needs --lr-milestones, the epochs after "
                                "which the rate is multiplied by --lr-factor");
  if (!given.resume_path.empty() && resumed.epochs_done >= options.epochs) {
    // Rerunning a finished job is not a failure: a preempted job's script can
    // resume unconditionally.
    std::cout << "nothing to train: " << given.resume_path << " already holds "
              << resumed.epochs_done << (resumed.epochs_done == 1 ? " epoch" : " epochs")
              << " of the " << options.epochs << " asked for; give --epochs N with N > "
              << resumed.epochs_done << " to train further\n";
    return 0;
  }
  options.save_path = given.save_path;
  options.resume_path = given.resume_path;
  options.init_path = given.init_path;
  require_writable(options.save_path, "--save");
  require_writable(command.metrics_json, "--metrics-json");

  DeviceSelection device = choose_device(command.device, command.threads);
  require_directory(options.data_dir, "data directory");
  std::cout << "training LeNet-5 on " << options.data_dir << ": " << describe_bits(options.quantize)
            << ", range " << describe_range(options.quantize) << ", epochs " << options.epochs
            << ", batch " << options.batch << ", " << describe_learning_rate(options)
            << describe_layer_bits(options.quantize)
            << (options.quantize.weight_group > 0
                    ? ", weight groups of up to " + std::to_string(options.quantize.weight_group)
                    : "")
            << (options.resume_path.empty() ? "" : ", resuming from " + options.resume_path)
            << (options.init_path.empty() ? "" : ", starting from " + options.init_path) << '\n';

  ProgressPrinter progress(std::cout, ::isatty(STDOUT_FILENO) == 1,
                           [] { return terminal_columns(STDOUT_FILENO); });
  const TrainReport report = train(options, *device.backend, &progress);
  print_summary(std::cout, report, options.quantize, options.save_path);
  if (!command.metrics_json.empty())
    write_text(command.metrics_json,
               train_metrics(report, options, command.threads).dump(2) + "\n");
  return 0;
}

/// "7.9x".
std::string ratio_text(double ratio) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1fx", ratio);
  return text;
}

/// Bytes of the regular file at `path`.
std::uintmax_t file_bytes(const std::string& path) {
  std::error_code error;
  const std::uintmax_t bytes = std::filesystem::file_size(path, error);
  return error ? 0 : bytes;
}

int run_export(const ExportCommand& command) {
  require_file(command.checkpoint, "checkpoint");
  std::error_code ignored;
  if (std::filesystem::exists(command.out, ignored) &&
      !std::filesystem::is_regular_file(command.out, ignored))
    throw std::runtime_error("--out " + command.out + ": exists and is not a regular file");
  require_writable(command.out, "--out");
  const IntegerModel model = integer_model(command.checkpoint);
  if (command.format == "onnx")
    save_onnx(command.out, model);
  else
    save_integer_model(command.out, model);
  std::int64_t float_bytes = 0;  // the same weights and biases in fp32
  for (const IntegerLayer& l : model.layers)
    float_bytes += 4 * static_cast<std::int64_t>(l.weight_codes.size() + l.bias.size());
  const auto written = static_cast<double>(file_bytes(command.out));
  std::cout << "wrote " << command.out << ": " << command.format << ", " << group_thousands(written)
            << " bytes (fp32 weights and biases: "
            << group_thousands(static_cast<double>(float_bytes)) << " bytes, "
            << ratio_text(static_cast<double>(float_bytes) / written) << " smaller)\n";
  for (const IntegerLayer& l : model.layers)
    std::cout << "  " << l.name << "  weights " << l.weight_bits << "-bit, output " << l.output.bits
              << "-bit" << (l.relu ? ", relu" : "")
              << (l.pool > 0 ? ", max pool " + std::to_string(l.pool) : "") << '\n';
  return 0;
}

int run_integer_eval(const EvalCommand& command, const std::string& data) {
  require_writable(command.metrics_json, "--metrics-json");
  DeviceSelection device = choose_device(command.device, command.threads);
  require_directory(data, "data directory");
  const IntegerEvalReport report =
      evaluate_integer(command.checkpoint, data, command.limit_test, *device.backend);
  const auto examples = static_cast<double>(report.examples);
  std::cout << "integer inference of " << command.checkpoint << ": test accuracy "
            << percent(report.accuracy) << " on " << group_thousands(examples) << " examples of "
            << data << '\n';
  nlohmann::json metrics = {{"lowbit_version", LOWBIT_VERSION},
                            {"integer", true},
                            {"test_accuracy", report.accuracy},
                            {"examples", report.examples},
                            {"device", report.device}};
  if (report.compared) {
    std::cout << "fake-quant eval: test accuracy " << percent(report.fake_quant_accuracy)
              << "; same top-1 on " << group_thousands(static_cast<double>(report.agreeing))
              << " of " << group_thousands(examples) << " ("
              << percent(examples > 0 ? static_cast<double>(report.agreeing) / examples : 1.0)
              << ")\n";
    metrics["fake_quant_accuracy"] = report.fake_quant_accuracy;
    metrics["agreeing"] = report.agreeing;
    metrics["disagreeing"] = report.disagreeing;
  }
  if (!command.metrics_json.empty()) write_text(command.metrics_json, metrics.dump(2) + "\n");
  return 0;
}

int run_eval(const EvalCommand& command) {
  require_file(command.checkpoint, "checkpoint");
  // An exported model names no dataset; a checkpoint, the one it was trained on.
  const bool exported = is_integer_model_file(command.checkpoint);
  if (command.integer) {
    std::string data = command.data;
    if (command.data_option->count() == 0 && !exported)
      data = checkpoint_info(command.checkpoint).options.data_dir;
    return run_integer_eval(command, data);
  }
  if (exported)
    throw std::runtime_error(command.checkpoint +
                             " is an exported integer model: evaluate it with --integer");
  const CheckpointInfo checkpoint = checkpoint_info(command.checkpoint);
  const TrainOptions& trained = checkpoint.options;
  const std::string data = command.data_option->count() > 0 ? command.data : trained.data_dir;
  require_writable(command.metrics_json, "--metrics-json");

  DeviceSelection device = choose_device(command.device, command.threads);
  require_directory(data, "data directory");
  const EvalReport report = evaluate(command.checkpoint, data, command.limit_test, *device.backend);
  std::cout << "checkpoint: " << command.checkpoint << " ("
            << describe_trained_bits(trained.quantize, checkpoint.steps_done) << ")\n"
            << "test accuracy " << percent(report.test_accuracy) << " on "
            << group_thousands(static_cast<double>(report.examples)) << " examples of " << data
            << ", loss " << loss_text(report.loss) << '\n';
  if (!command.metrics_json.empty()) {
    const nlohmann::json metrics = {{"lowbit_version", LOWBIT_VERSION},
                                    {"test_accuracy", report.test_accuracy},
                                    {"test_loss", report.loss},
                                    {"loss", report.loss},
                                    {"examples", report.examples},
                                    {"device", report.device},
                                    {"weight_bits", report.weight_bits},
                                    {"act_bits", report.activation_bits},
                                    {"hyperparameters", hyperparameters(trained)}};
    write_text(command.metrics_json, metrics.dump(2) + "\n");
  }
  return 0;
}

int run(int argc, char** argv) {
  CLI::App app{"lowbit: quantization-aware training at 2 to 16 bits.", "lowbit"};
  app.set_version_flag("--version", "lowbit " LOWBIT_VERSION);
  app.require_subcommand(1);
  TrainCommand train_command;
  EvalCommand eval_command;
  ExportCommand export_command;
  add_train_command(app, train_command);
  add_eval_command(app, eval_command);
  add_export_command(app, export_command);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    return report_parse_error(app, argc, error,
                              {train_command.app, eval_command.app, export_command.app});
  }
  if (train_command.app->parsed()) return run_train(train_command);
  if (export_command.app->parsed()) return run_export(export_command);
  return run_eval(eval_command);
}

}  // namespace
}  // namespace lowbit::cli

int main(int argc, char** argv) {
  lowbit::cli::wait_briefly_in_openmp(argv);
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
