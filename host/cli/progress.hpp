// Console output of the `lowbit` command line: the per-epoch progress bar,
// one line per finished epoch, and the summary after training.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <iosfwd>
#include <string>

#include "lowbit/graph.hpp"
#include "lowbit/quantize.hpp"
#include "lowbit/trainer.hpp"

namespace lowbit::cli {

/// A count rounded to an integer, with thousands separators: "41,234".
std::string group_thousands(double value);

/// A fraction in [0, 1] as a percentage with two decimals: "86.40%".
std::string percent(double fraction);

/// "12.3 s", "4m05s" or "1h02m".
std::string duration(double seconds);

/// A loss as the progress lines print it: "0.5998".
std::string loss_text(double loss);

/// "weights 4-bit, activations 4-bit, logits 8-bit" (0 bits reads "fp32";
/// logits only where their width differs), or "fp32" when nothing is quantized.
std::string describe_bits(const QuantizeOptions& quantize);

/// describe_bits() of a model trained for `steps_done` steps, saying when the
/// quant delay has kept it float so far.
std::string describe_trained_bits(const QuantizeOptions& quantize, std::int64_t steps_done);

/// The range mode's name, or "none" when nothing is quantized.
std::string describe_range(const QuantizeOptions& quantize);

/// Columns of the terminal on file descriptor `fd`; where it is none (or
/// says 0), $COLUMNS, else 80.
int terminal_columns(int fd);

/// Shows training progress. On a terminal, a bar with images/s, loss and ETA
/// is redrawn in place, shortened to the terminal's width (a line that wraps
/// could not be redrawn); otherwise (a log file, a pipe) every update is one
/// plain line, so that logs stay readable. Each finished epoch gets a line
/// "epoch 3/8  loss 0.4123  train 85.12%  test 86.40%  41,234 img/s  12.3 s".
class ProgressPrinter final : public TrainObserver {
 public:
  /// `interactive`: redraw the bar in place (only for a terminal), within
  /// `columns()` characters, asked at each redraw as the terminal may resize.
  ProgressPrinter(std::ostream& out, bool interactive, std::function<int()> columns);
  /// Ends a bar left on the line (training threw), so that the error that
  /// follows starts on a line of its own.
  ~ProgressPrinter() override;
  ProgressPrinter(const ProgressPrinter&) = delete;
  ProgressPrinter& operator=(const ProgressPrinter&) = delete;

  void epoch_started(std::int64_t epoch, std::int64_t epochs, std::int64_t steps) override;
  void progress(std::int64_t step, std::int64_t steps, double loss,
                double images_per_second) override;
  void epoch_finished(const EpochReport& report) override;

 private:
  std::ostream& out_;
  bool interactive_;
  std::function<int()> columns_;
  std::int64_t epoch_ = 0;
  std::int64_t epochs_ = 0;
  std::chrono::steady_clock::time_point epoch_start_{};
  bool bar_shown_ = false;  ///< a bar is on the current terminal line
};

/// The block printed after training: device, widths, range mode, the step
/// quantization started at, final test accuracy, throughput, skipped EMA
/// batches (where there is an EMA), each quantizer's final state and the
/// checkpoint, if any.
void print_summary(std::ostream& out, const TrainReport& report, const QuantizeOptions& quantize,
                   const std::string& checkpoint_path);

}  // namespace lowbit::cli
