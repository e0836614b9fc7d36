// The `lowbit` console output that needs no training run: the progress bar
// within the terminal's width, the summary's lines, and the terminal width.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "cli/progress.hpp"

namespace lowbit::cli {
namespace {

/// The lines a terminal shows: the text after each \r or \n, escapes removed.
std::vector<std::string> redrawn_lines(const std::string& text) {
  std::vector<std::string> lines(1);
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\r' || text[i] == '\n') {
      lines.emplace_back();
    } else if (text.compare(i, 3, "\033[K") == 0) {
      i += 2;
    } else {
      lines.back() += text[i];
    }
  }
  return lines;
}

std::string bar_at(int columns) {
  std::ostringstream out;
  ProgressPrinter printer(out, true, [columns] { return columns; });
  printer.epoch_started(3, 8, 468);
  printer.progress(234, 468, 0.59981, 12345.0);
  return out.str();
}

TEST(ProgressBar, FitsTheTerminalWidth) {
  for (const int columns : {200, 80, 60, 45, 30, 10, 1}) {
    for (const std::string& line : redrawn_lines(bar_at(columns)))
      EXPECT_LT(line.size(), static_cast<std::size_t>(std::max(columns, 2)))
          << columns << " columns: \"" << line << "\"";
  }
  // Wide enough: the whole bar, then the figures.
  EXPECT_NE(bar_at(200).find("epoch 3/8 [############............] 234/468  loss 0.5998  12,345 "
                             "img/s  ETA "),
            std::string::npos)
      << bar_at(200);
  // Narrower, the bar shrinks first, then goes; the figures stay as long as they fit.
  EXPECT_NE(bar_at(69).find("epoch 3/8 [#####.....] 234/468"), std::string::npos) << bar_at(69);
  EXPECT_EQ(bar_at(50).find(" ["), std::string::npos) << bar_at(50);
  EXPECT_NE(bar_at(50).find("epoch 3/8  234/468  loss 0.5998"), std::string::npos) << bar_at(50);
}

TEST(ProgressBar, LogLinesIgnoreTheWidth) {
  std::ostringstream out;
  ProgressPrinter printer(out, false, [] { return 20; });
  printer.epoch_started(1, 1, 10);
  printer.progress(5, 10, 1.0, 100.0);
  EXPECT_EQ(out.str().rfind("epoch 1/1  step 5/10  loss 1.0000  100 img/s  ETA ", 0), 0u)
      << out.str();
}

TEST(TerminalColumns, FallsBackToColumnsThen80) {
  std::FILE* file = std::tmpfile();  // no terminal
  ASSERT_NE(file, nullptr);
  const int fd = fileno(file);
  const char* saved = std::getenv("COLUMNS");
  const std::string restore = saved ? saved : "";
  ::setenv("COLUMNS", "57", 1);
  EXPECT_EQ(terminal_columns(fd), 57);
  ::setenv("COLUMNS", "wide", 1);
  EXPECT_EQ(terminal_columns(fd), 80);
  ::unsetenv("COLUMNS");
  EXPECT_EQ(terminal_columns(fd), 80);
  if (saved) ::setenv("COLUMNS", restore.c_str(), 1);
  std::fclose(file);
}

TEST(Summary, SaysWhenQuantizationStartedAndOmitsWhatDoesNotExist) {
  TrainReport report;
  report.device = "cpu (2 threads)";
  report.test_accuracy = 0.857;
  report.train_images_per_second = 7860.0;
  report.steps_done = 468;
  report.quant_delay = 46;
  report.first_quantized_step = 47;
  report.skipped_ema_batches = 0;
  QuantizeOptions q;
  std::ostringstream out;
  print_summary(out, report, q, "");
  EXPECT_EQ(out.str(),
            "summary\n"
            "  device              cpu (2 threads)\n"
            "  bits                weights 4-bit, activations 4-bit, logits 8-bit\n"
            "  range               ema\n"
            "  quantized from      step 47 of 468 (quant delay 46)\n"
            "  test accuracy       85.70%\n"
            "  training speed      7,860 img/s\n"
            "  skipped EMA batches 0 (non-finite)\n"
            "  checkpoint          not saved\n");

  report.quant_delay = 500;
  report.first_quantized_step = 0;
  out.str("");
  print_summary(out, report, q, "");
  EXPECT_NE(out.str().find("  quantized from      never: 468 steps trained (quant delay 500)\n"),
            std::string::npos)
      << out.str();

  q.weight_bits = q.activation_bits = 0;
  report.skipped_ema_batches.reset();
  out.str("");
  print_summary(out, report, q, "run.safetensors");
  EXPECT_EQ(out.str(),
            "summary\n"
            "  device              cpu (2 threads)\n"
            "  bits                fp32\n"
            "  range               none\n"
            "  test accuracy       85.70%\n"
            "  training speed      7,860 img/s\n"
            "  checkpoint          run.safetensors\n");
}

TEST(Summary, EvaluationSaysWhenTheDelayKeptTheModelFloat) {
  QuantizeOptions q;
  q.quant_delay = 500;
  EXPECT_EQ(describe_trained_bits(q, 468),
            "weights 4-bit, activations 4-bit, logits 8-bit; evaluated in float: 468 steps "
            "trained, quant delay 500");
  EXPECT_EQ(describe_trained_bits(q, 500), "weights 4-bit, activations 4-bit, logits 8-bit");
  EXPECT_EQ(loss_text(0.123456789), "0.1235");
  EXPECT_EQ(loss_text(2.0), "2.0000");
}

}  // namespace
}  // namespace lowbit::cli
