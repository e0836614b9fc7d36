#include "lowbit/trainer.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>

#include "train/checkpoint.hpp"
#include "lowbit/error.hpp"
#include "train/session.hpp"

namespace lowbit {

std::int64_t auto_quant_delay(std::int64_t total_steps, RangeMode range) {
  if (range == RangeMode::lsq) return 0;
  return std::min<std::int64_t>(500, total_steps / 10);
}

QuantizeOptions default_train_quantization() {
  QuantizeOptions q;
  q.quant_delay = kAutoQuantDelay;
  return q;
}

RangeMode recommended_range(int weight_bits, int activation_bits) {
  const auto low = [](int bits) { return bits > 0 && bits < 4; };
  return low(weight_bits) || low(activation_bits) ? RangeMode::lsq : RangeMode::ema;
}

DeviceSelection select_device(DeviceChoice choice, int cpu_threads) {
  switch (choice) {
    case DeviceChoice::cpu: return {make_cpu_backend(cpu_threads), "requested with --device cpu"};
    case DeviceChoice::cuda: {
      const std::string problem = cuda_device_problem();
      LOWBIT_EXPECTS(problem.empty(), "--device cuda: " + problem + " (use --device cpu)");
      return {make_cuda_backend(), "requested with --device cuda"};
    }
    case DeviceChoice::automatic: break;
  }
  const std::string problem = cuda_device_problem();
  if (problem.empty()) return {make_cuda_backend(), "auto: a CUDA device is present"};
  return {make_cpu_backend(cpu_threads), "auto: " + problem};
}

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

void check_options(const TrainOptions& o) {
  LOWBIT_EXPECTS(o.epochs >= 1, "train: epochs must be >= 1");
  LOWBIT_EXPECTS(o.batch >= 1, "train: batch must be >= 1");
  LOWBIT_EXPECTS(o.limit_train >= 0 && o.limit_test >= 0, "train: limits must be >= 0");
  LOWBIT_EXPECTS(o.init_path.empty() || o.resume_path.empty(),
                 "train: --init starts a new run and --resume continues one: give one of them");
  LOWBIT_EXPECTS(o.sgd.learning_rate > 0.0f, "train: the learning rate must be positive");
  LOWBIT_EXPECTS(o.sgd.momentum >= 0.0f && o.sgd.momentum < 1.0f,
                 "train: momentum must be in [0, 1)");
  LOWBIT_EXPECTS(o.sgd.weight_decay >= 0.0f, "train: weight decay must be >= 0");
  LOWBIT_EXPECTS(o.normalization.std > 0.0f, "train: the normalisation std must be positive");
  check_lr_schedule(o.lr_schedule);
}

/// The options that decide the computation must match to resume bit-identically.
void check_resumable(const TrainOptions& now, const TrainOptions& saved, const std::string& path) {
  const auto same = [&](bool equal, const char* what) {
    LOWBIT_EXPECTS(equal, path + ": cannot resume with a different " + what +
                              " than the checkpoint was trained with");
  };
  const QuantizeOptions& a = now.quantize;
  const QuantizeOptions& b = saved.quantize;
  same(a.weight_bits == b.weight_bits,
       "--weight-bits (to fine-tune at another width, start a new run with --init)");
  same(a.activation_bits == b.activation_bits, "--act-bits");
  same(a.output_bits == b.output_bits, "logit width");
  same(a.ema_decay == b.ema_decay, "--ema-decay");
  same(a.quant_delay == b.quant_delay, "--quant-delay");
  same(a.range == b.range, "--range");
  same(a.weight_group == b.weight_group, "--weight-group");
  same(a.rounding == b.rounding && a.per_channel == b.per_channel &&
           a.symmetric_weights == b.symmetric_weights &&
           a.freeze_ranges_step == b.freeze_ranges_step,
       "quantization setting");
  bool same_layers = a.layer_bits.size() == b.layer_bits.size();
  for (const auto& [name, bits] : a.layer_bits) {
    const auto it = b.layer_bits.find(name);
    same_layers = same_layers && it != b.layer_bits.end() &&
                  it->second.weight_bits == bits.weight_bits &&
                  it->second.activation_bits == bits.activation_bits;
  }
  same(same_layers, "per-layer bit setting");
  same(now.batch == saved.batch, "--batch");
  same(now.seed == saved.seed, "--seed");
  same(now.limit_train == saved.limit_train, "--limit-train");
  same(now.lr_schedule.kind == saved.lr_schedule.kind &&
           now.lr_schedule.milestones == saved.lr_schedule.milestones &&
           now.lr_schedule.factor == saved.lr_schedule.factor,
       "learning-rate schedule (--lr-schedule, --lr-milestones, --lr-factor)");
  same(now.normalization.mean == saved.normalization.mean &&
           now.normalization.std == saved.normalization.std,
       "input normalisation");
}

/// `requested` with its quant delay resolved: kAutoQuantDelay becomes the
/// resumed checkpoint's delay, or auto_quant_delay() of the run's steps.
TrainOptions with_quant_delay(const TrainOptions& requested, const Checkpoint* resumed,
                              std::int64_t train_examples) {
  TrainOptions options = requested;
  QuantizeOptions& q = options.quantize;
  if (q.quant_delay != kAutoQuantDelay) return options;
  q.quant_delay = resumed != nullptr ? resumed->options.quantize.quant_delay
                                     : auto_quant_delay(options.epochs * (train_examples /
                                                                          options.batch),
                                                        q.range);
  return options;
}

/// The first training step (1-based) that quantizes activations, or weights
/// where activations stay float: after the delay, and an EMA needs one update
/// to quantize with, which lagged mode (the range before the batch) has from
/// the second step on. 0 when none of `steps_done` did.
std::int64_t first_quantized_step(const QuantizeOptions& q, std::int64_t steps_done) {
  if (q.weight_bits == 0 && q.activation_bits == 0) return 0;
  std::int64_t first = q.quant_delay + 1;
  if (q.activation_bits > 0 && q.range == RangeMode::lagged)
    first = std::max<std::int64_t>(first, 2);
  return first <= steps_done ? first : 0;
}

std::string lr_text(float learning_rate) {
  char text[32];
  std::snprintf(text, sizeof text, "%g", static_cast<double>(learning_rate));
  return text;
}

/// The error that stops a diverged run: what happened, the likely cure, and
/// the checkpoint file's last good epoch (`saved_epochs`, 0: none).
Error divergence(const std::string& what, const TrainOptions& o, std::int64_t saved_epochs) {
  std::string message = "training diverged: " + what + "; try a lower --lr than " +
                        lr_text(o.sgd.learning_rate);
  if (!o.save_path.empty() && saved_epochs > 0)
    message += "; " + o.save_path + " keeps epoch " + std::to_string(saved_epochs);
  return Error(message, __FILE__, __LINE__);
}

/// Throws unless the loss summed since the epoch began is finite; it was up to
/// the sync after step `last_finite`, so it turned in (last_finite, step].
void expect_finite_loss(const LossTotals& t, std::int64_t epoch, std::int64_t last_finite,
                        std::int64_t step, const TrainOptions& o, std::int64_t saved_epochs) {
  if (std::isfinite(t.loss_sum)) return;
  const std::string when = step == last_finite + 1
                               ? "at step " + std::to_string(step)
                               : "between steps " + std::to_string(last_finite + 1) + " and " +
                                     std::to_string(step);
  throw divergence("the loss became non-finite in epoch " + std::to_string(epoch) + " " + when,
                   o, saved_epochs);
}

/// Throws, naming `what`, unless every parameter of `network` is finite.
void expect_finite_parameters(const Network& network, const std::string& what) {
  const std::string bad = network.first_nonfinite_parameter();
  LOWBIT_EXPECTS(bad.empty(), what + ": " + bad + " holds NaN or infinite values (the run that "
                                                  "saved it diverged)");
}

double accuracy(const LossTotals& t) {
  return t.examples > 0 ? static_cast<double>(t.correct) / static_cast<double>(t.examples) : 0.0;
}

double mean_loss(const LossTotals& t) {
  return t.examples > 0 ? t.loss_sum / static_cast<double>(t.examples) : 0.0;
}

}  // namespace

TrainReport train(const TrainOptions& requested, Backend& backend, TrainObserver* observer) {
  check_options(requested);
  const bool resuming = !requested.resume_path.empty();
  Checkpoint resumed;
  if (resuming) resumed = read_checkpoint(requested.resume_path);
  const DatasetSplits data =
      load_mnist_directory(requested.data_dir, requested.limit_train, requested.limit_test);
  const TrainOptions options =
      with_quant_delay(requested, resuming ? &resumed : nullptr, data.train.count);
  if (resuming) {
    check_resumable(options, resumed.options, options.resume_path);
    expect_input_matches(resumed, data.test);
  }
  Session session(options, backend, data);
  TrainProgress progress;
  if (!resuming) {
    session.network().initialize_parameters(options.seed);
    if (!options.init_path.empty()) {
      const Checkpoint init = read_checkpoint(options.init_path);
      expect_input_matches(init, data.test);
      restore_weights_and_biases(init, session.network(), backend);
      expect_finite_parameters(session.network(), options.init_path);
    }
    // LSQ step sizes come from the activations of the starting weights.
    if (options.quantize.range == RangeMode::lsq) session.calibrate();
  } else {
    restore_checkpoint(resumed, session.network(), backend, session.velocity());
    progress = resumed.progress;
    session.network().set_steps_done(progress.steps_done);
    expect_finite_parameters(session.network(), options.resume_path);
  }
  // The epochs a divergence would leave in the checkpoint file.
  std::int64_t saved_epochs = options.save_path == options.resume_path ? progress.epochs_done : 0;

  TrainReport report;
  report.device = backend.description();
  report.weight_bits = options.quantize.weight_bits;
  report.activation_bits = options.quantize.activation_bits;
  const std::int64_t steps = session.steps_per_epoch();
  const std::int64_t log_every = std::max<std::int64_t>(1, steps / 20);
  double train_seconds = 0.0;
  std::int64_t train_images = 0;
  for (std::int64_t epoch = progress.epochs_done; epoch < options.epochs; ++epoch) {
    if (observer) observer->epoch_started(epoch + 1, options.epochs, steps);
    const float learning_rate = scheduled_learning_rate(
        options.lr_schedule, options.sgd.learning_rate, epoch, options.epochs);
    session.set_learning_rate(learning_rate);
    session.begin_epoch(epoch);
    const Clock::time_point start = Clock::now();
    std::int64_t last_finite = 0;
    for (std::int64_t step = 1; step <= steps; ++step) {
      session.run_step();
      if (step % log_every == 0 || step == steps) {
        const LossTotals t = session.totals();  // the one sync per log interval
        expect_finite_loss(t, epoch + 1, last_finite, step, options, saved_epochs);
        last_finite = step;
        if (observer)
          observer->progress(step, steps, mean_loss(t),
                             static_cast<double>(step * options.batch) / seconds_since(start));
      }
    }
    const LossTotals train_totals = session.totals();
    const double seconds = seconds_since(start);
    progress = {epoch + 1, progress.steps_done + steps};
    EpochReport e;
    e.epoch = epoch + 1;
    e.loss = mean_loss(train_totals);
    e.train_accuracy = accuracy(train_totals);
    e.learning_rate = learning_rate;
    e.seconds = seconds;
    e.images_per_second = static_cast<double>(steps * options.batch) / seconds;
    const LossTotals test_totals = session.evaluate();
    e.test_accuracy = accuracy(test_totals);
    e.test_loss = mean_loss(test_totals);
    train_seconds += seconds;
    train_images += steps * options.batch;
    // The last update of an epoch can overflow with the loss still finite.
    const std::string nonfinite = session.network().first_nonfinite_parameter();
    if (!nonfinite.empty())
      throw divergence(nonfinite + " became non-finite in epoch " + std::to_string(epoch + 1),
                       options, saved_epochs);
    if (!options.save_path.empty()) {
      save_checkpoint(options.save_path, options, progress, session.network(), backend,
                      session.velocity());
      saved_epochs = progress.epochs_done;
    }
    report.epochs.push_back(e);
    if (observer) observer->epoch_finished(e);
  }
  if (report.epochs.empty()) {
    const LossTotals test_totals = session.evaluate();
    report.test_accuracy = accuracy(test_totals);
    report.test_loss = mean_loss(test_totals);
  } else {
    report.test_accuracy = report.epochs.back().test_accuracy;
    report.test_loss = report.epochs.back().test_loss;
  }
  report.train_images_per_second =
      train_seconds > 0.0 ? static_cast<double>(train_images) / train_seconds : 0.0;
  if (!session.network().ema_state_names().empty())
    report.skipped_ema_batches = session.skipped_ema_batches();
  report.quant_delay = options.quantize.quant_delay;
  report.steps_done = progress.steps_done;
  report.first_quantized_step = first_quantized_step(options.quantize, progress.steps_done);
  report.quantizers = session.network().quantizer_reports();
  return report;
}

TrainOptions checkpoint_options(const std::string& path) { return checkpoint_info(path).options; }

CheckpointInfo checkpoint_info(const std::string& path) {
  const Checkpoint checkpoint = read_checkpoint(path);
  return {checkpoint.options, checkpoint.progress.epochs_done, checkpoint.progress.steps_done};
}

EvalReport evaluate(const std::string& checkpoint_path, const std::string& data_dir,
                    std::int64_t limit_test, Backend& backend) {
  const Checkpoint checkpoint = read_checkpoint(checkpoint_path);
  TrainOptions options = checkpoint.options;
  options.limit_test = limit_test;
  LOWBIT_EXPECTS(limit_test >= 0, "eval: --limit-test must be >= 0");
  DatasetSplits data;
  data.test = load_mnist_test_split(data_dir, limit_test);
  expect_input_matches(checkpoint, data.test);
  Session session(options, backend, data);
  restore_checkpoint(checkpoint, session.network(), backend, nullptr);
  session.network().set_steps_done(checkpoint.progress.steps_done);
  expect_finite_parameters(session.network(), checkpoint_path);
  const LossTotals totals = session.evaluate();
  EvalReport report;
  report.device = backend.description();
  report.weight_bits = options.quantize.weight_bits;
  report.activation_bits = options.quantize.activation_bits;
  report.examples = totals.examples;
  report.test_accuracy = accuracy(totals);
  report.loss = mean_loss(totals);
  return report;
}

}  // namespace lowbit
