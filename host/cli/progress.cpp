#include "cli/progress.hpp"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

namespace lowbit::cli {
namespace {

constexpr int kBarWidth = 24;
constexpr int kMinBarWidth = 5;  // narrower, a bar says nothing: drop it

std::string fixed(double value, int decimals) {
  char text[64];
  std::snprintf(text, sizeof text, "%.*f", decimals, value);
  return text;
}

std::string bits_name(int bits) { return bits == 0 ? "fp32" : std::to_string(bits) + "-bit"; }

std::string number(float value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.4g", static_cast<double>(value));
  return text;
}

/// "range [0, 4.137]", or over several channels "6 ranges within [-0.51, 0.498]".
std::string describe_ranges(const std::vector<float>& min, const std::vector<float>& max) {
  const auto [lo, hi] = std::pair(*std::min_element(min.begin(), min.end()),
                                  *std::max_element(max.begin(), max.end()));
  const std::string span = "[" + number(lo) + ", " + number(hi) + "]";
  if (min.size() == 1) return "range " + span;
  return std::to_string(min.size()) + " ranges within " + span;
}

/// "step 0.0123", or over several channels "6 steps in [0.01, 0.03]".
std::string describe_steps(const std::vector<float>& step) {
  const auto [lo, hi] = std::minmax_element(step.begin(), step.end());
  if (step.size() == 1) return "step " + number(*lo);
  return std::to_string(step.size()) + " steps in [" + number(*lo) + ", " + number(*hi) + "]";
}

/// Grouped weights: "480 groups of 30, ranges within [-0.51, 0.498]" from
/// describe_ranges' (describe_steps') "480 ranges within ...".
std::string groups_of(const QuantizerReport& q, const std::string& state) {
  const std::size_t count = q.step.empty() ? q.min.size() : q.step.size();
  const std::string head = std::to_string(count) + " groups of " + std::to_string(q.group);
  if (count == 1) return head + ", " + state;
  return head + ", " + state.substr(state.find(' ') + 1);
}

/// "2.55%", or "<0.01%" where a few elements clipped.
std::string clipped_share(const QuantizerReport& q) {
  if (q.quantized == 0) return "n/a (nothing quantized)";
  const double share = static_cast<double>(q.clipped) / static_cast<double>(q.quantized);
  return q.clipped > 0 && share < 1e-4 ? "<0.01%" : percent(share);
}

/// One summary row per quantizer: name, width, state and (activations) clipping.
void print_quantizers(std::ostream& out, const std::vector<QuantizerReport>& quantizers) {
  std::vector<std::array<std::string, 4>> rows;
  std::array<std::size_t, 3> widths{};
  for (const QuantizerReport& q : quantizers) {
    const std::string state =
        q.step.empty() ? describe_ranges(q.min, q.max) : describe_steps(q.step);
    rows.push_back({q.name, bits_name(q.bits), q.group > 0 ? groups_of(q, state) : state,
                    q.weights ? "" : "clipped " + clipped_share(q)});
    for (std::size_t c = 0; c < widths.size(); ++c)
      widths[c] = std::max(widths[c], rows.back()[c].size());
  }
  out << "  quantizers          final range or step; clipped: of the last epoch's activations\n";
  for (const auto& row : rows) {
    std::string line = "   ";
    for (std::size_t c = 0; c < row.size(); ++c) {
      line += ' ' + row[c];
      if (c < widths.size()) line += std::string(widths[c] - row[c].size() + 1, ' ');
    }
    line.erase(line.find_last_not_of(' ') + 1);
    out << line << '\n';
  }
}

}  // namespace

std::string group_thousands(double value) {
  if (!(std::fabs(value) < 1e18)) return fixed(value, 0);  // NaN, Inf, absurd
  const long long rounded = std::llround(value);
  const std::string digits = std::to_string(rounded < 0 ? -rounded : rounded);
  std::string grouped = rounded < 0 ? "-" : "";
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) grouped += ',';
    grouped += digits[i];
  }
  return grouped;
}

std::string percent(double fraction) { return fixed(100.0 * fraction, 2) + "%"; }

std::string duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0.0) return "--";
  if (seconds < 60.0) return fixed(seconds, 1) + " s";
  const long long whole = std::llround(seconds);
  char text[32];
  if (whole < 3600)
    std::snprintf(text, sizeof text, "%lldm%02llds", whole / 60, whole % 60);
  else
    std::snprintf(text, sizeof text, "%lldh%02lldm", whole / 3600, whole / 60 % 60);
  return text;
}

std::string loss_text(double loss) { return fixed(loss, 4); }

std::string describe_bits(const QuantizeOptions& q) {
  if (q.weight_bits == 0 && q.activation_bits == 0) return "fp32";
  std::string text =
      "weights " + bits_name(q.weight_bits) + ", activations " + bits_name(q.activation_bits);
  if (q.activation_bits > 0 && q.output_bits != -1 && q.output_bits != q.activation_bits)
    text += ", logits " + bits_name(q.output_bits);
  return text;
}

std::string describe_trained_bits(const QuantizeOptions& q, std::int64_t steps_done) {
  const bool quantized = q.weight_bits != 0 || q.activation_bits != 0;
  if (!quantized || steps_done >= q.quant_delay) return describe_bits(q);
  return describe_bits(q) + "; evaluated in float: " + std::to_string(steps_done) +
         " steps trained, quant delay " + std::to_string(q.quant_delay);
}

std::string describe_range(const QuantizeOptions& q) {
  return q.weight_bits == 0 && q.activation_bits == 0 ? "none" : to_string(q.range);
}

int terminal_columns(int fd) {
  winsize size{};
  if (::isatty(fd) == 1 && ::ioctl(fd, TIOCGWINSZ, &size) == 0 && size.ws_col > 0)
    return size.ws_col;
  if (const char* columns = std::getenv("COLUMNS")) {
    const int value = std::atoi(columns);
    if (value > 0) return value;
  }
  return 80;
}

ProgressPrinter::ProgressPrinter(std::ostream& out, bool interactive,
                                 std::function<int()> columns)
    : out_(out), interactive_(interactive), columns_(std::move(columns)) {}

ProgressPrinter::~ProgressPrinter() {
  if (bar_shown_) out_ << '\n' << std::flush;
}

void ProgressPrinter::epoch_started(std::int64_t epoch, std::int64_t epochs, std::int64_t) {
  epoch_ = epoch;
  epochs_ = epochs;
  epoch_start_ = std::chrono::steady_clock::now();
}

void ProgressPrinter::progress(std::int64_t step, std::int64_t steps, double loss,
                               double images_per_second) {
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - epoch_start_).count();
  const double eta = step > 0 ? elapsed * static_cast<double>(steps - step) / step : NAN;
  const std::string epoch = "epoch " + std::to_string(epoch_) + "/" + std::to_string(epochs_);
  const std::string figures = std::to_string(step) + "/" + std::to_string(steps) + "  loss " +
                              fixed(loss, 4) + "  " + group_thousands(images_per_second) +
                              " img/s  ETA " + duration(eta);
  if (!interactive_) {
    out_ << epoch << "  step " << figures << '\n' << std::flush;
    return;
  }
  // The last column stays free: a line that fills it wraps on some terminals,
  // and \r could then no longer redraw it in place.
  const std::size_t width = static_cast<std::size_t>(std::max(columns_() - 1, 1));
  const std::size_t around_bar = epoch.size() + 4 + figures.size();  // " [", "] "
  const int bar = width > around_bar
                      ? static_cast<int>(std::min<std::size_t>(kBarWidth, width - around_bar))
                      : 0;
  std::string line;
  if (bar >= kMinBarWidth) {
    const double done = steps > 0 ? static_cast<double>(step) / steps : 0.0;
    const int filled = static_cast<int>(std::lround(bar * std::fmin(std::fmax(done, 0.0), 1.0)));
    line = epoch + " [" + std::string(filled, '#') + std::string(bar - filled, '.') + "] " +
           figures;
  } else {
    line = (epoch + "  " + figures).substr(0, width);
  }
  // \r and erase-line redraw the bar in place on the terminal.
  out_ << '\r' << line << "\033[K" << std::flush;
  bar_shown_ = true;
}

void ProgressPrinter::epoch_finished(const EpochReport& report) {
  if (bar_shown_) out_ << "\r\033[K";
  bar_shown_ = false;
  out_ << "epoch " << report.epoch << '/' << epochs_ << "  loss " << fixed(report.loss, 4)
       << "  train " << percent(report.train_accuracy) << "  test " << percent(report.test_accuracy)
       << "  " << group_thousands(report.images_per_second) << " img/s  "
       << duration(report.seconds) << '\n'
       << std::flush;
}

void print_summary(std::ostream& out, const TrainReport& report, const QuantizeOptions& quantize,
                   const std::string& checkpoint_path) {
  const bool quantized = quantize.weight_bits != 0 || quantize.activation_bits != 0;
  out << "summary\n"
      << "  device              " << report.device << '\n'
      << "  bits                " << describe_bits(quantize) << '\n'
      << "  range               " << describe_range(quantize) << '\n';
  if (quantized) {
    out << "  quantized from      ";
    if (report.first_quantized_step > 0)
      out << "step " << report.first_quantized_step << " of " << report.steps_done;
    else
      out << "never: " << report.steps_done << " steps trained";
    out << " (quant delay " << report.quant_delay << ")\n";
  }
  out << "  test accuracy       " << percent(report.test_accuracy) << '\n'
      << "  training speed      " << group_thousands(report.train_images_per_second) << " img/s\n";
  if (report.skipped_ema_batches)
    out << "  skipped EMA batches " << *report.skipped_ema_batches << " (non-finite)\n";
  out << "  checkpoint          " << (checkpoint_path.empty() ? "not saved" : checkpoint_path)
      << '\n';
  if (!report.quantizers.empty()) print_quantizers(out, report.quantizers);
  out << std::flush;
}

}  // namespace lowbit::cli
