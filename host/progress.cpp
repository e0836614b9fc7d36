#include "progress.hpp"

#include <cmath>
#include <cstdio>
#include <ostream>
#include <string>

namespace lowbit::cli {
namespace {

constexpr int kBarWidth = 24;

std::string fixed(double value, int decimals) {
  char text[64];
  std::snprintf(text, sizeof text, "%.*f", decimals, value);
  return text;
}

std::string bits_name(int bits) { return bits == 0 ? "fp32" : std::to_string(bits) + "-bit"; }

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

std::string describe_bits(const QuantizeOptions& q) {
  if (q.weight_bits == 0 && q.activation_bits == 0) return "fp32";
  std::string text =
      "weights " + bits_name(q.weight_bits) + ", activations " + bits_name(q.activation_bits);
  if (q.activation_bits > 0 && q.output_bits != -1 && q.output_bits != q.activation_bits)
    text += ", logits " + bits_name(q.output_bits);
  return text;
}

ProgressPrinter::ProgressPrinter(std::ostream& out, bool interactive)
    : out_(out), interactive_(interactive) {}

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
  const double done = steps > 0 ? static_cast<double>(step) / steps : 0.0;
  const int filled =
      static_cast<int>(std::lround(kBarWidth * std::fmin(std::fmax(done, 0.0), 1.0)));
  // \r and erase-line redraw the bar in place on the terminal.
  out_ << '\r' << epoch << " [" << std::string(filled, '#') << std::string(kBarWidth - filled, '.')
       << "] " << figures << "\033[K" << std::flush;
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
  const RangeMode range = quantize.range;
  const bool quantized = report.weight_bits != 0 || report.activation_bits != 0;
  out << "summary\n"
      << "  device              " << report.device << '\n'
      << "  bits                " << describe_bits(quantize)
      << '\n'
      << "  range               " << (quantized ? to_string(range) : "none (fp32)") << '\n'
      << "  test accuracy       " << percent(report.test_accuracy) << '\n'
      << "  training speed      " << group_thousands(report.train_images_per_second) << " img/s\n"
      << "  skipped EMA batches " << report.skipped_ema_batches << " (non-finite)\n"
      << "  checkpoint          " << (checkpoint_path.empty() ? "not saved" : checkpoint_path)
      << '\n'
      << std::flush;
}

}  // namespace lowbit::cli
