#include "train/session.hpp"

#include <string>
#include <vector>

#include "lowbit/error.hpp"
#include "lowbit/graph.hpp"
#include "lowbit/nn_element.hpp"
#include "lowbit/quantize.hpp"

namespace lowbit {

namespace {

std::string image_size(const Dataset& data) {
  return std::to_string(data.rows) + "x" + std::to_string(data.cols);
}

std::string origin(const Dataset& data, const char* split) {
  return data.images_path.empty() ? split : data.images_path;
}

/// LeNet-5 for the images of `data`. Both splits go through the one model
/// (and the gather that reads them with its stride), so they must agree.
Graph lenet5_for(const DatasetSplits& data) {
  const Dataset& test = data.test;
  LOWBIT_EXPECTS(data.train.count == 0 ||
                     (data.train.rows == test.rows && data.train.cols == test.cols),
                 origin(data.train, "the training split") + " holds " + image_size(data.train) +
                     " images but " + origin(test, "the test split") + " holds " +
                     image_size(test) + ": the training and test images must have the same size");
  const std::string min = std::to_string(kLenet5MinImageSize);
  LOWBIT_EXPECTS(test.rows >= kLenet5MinImageSize && test.cols >= kLenet5MinImageSize,
                 origin(test, "the test split") + " holds " + image_size(test) +
                     " images, smaller than the " + min + "x" + min + " LeNet-5 needs");
  return lenet5(1, test.rows, test.cols, 10);
}

}  // namespace

DeviceDataset::DeviceDataset(Backend& backend, const Dataset& data) : count(data.count) {
  images = backend.allocate(data.images.size());
  labels = backend.allocate(data.labels.size());
  backend.upload(images.data(), data.images.data(), data.images.size());
  backend.upload(labels.data(), data.labels.data(), data.labels.size());
}

Session::Session(const TrainOptions& options, Backend& backend, const DatasetSplits& data)
    : options_(options), backend_(backend),
      network_(quantize(lenet5_for(data), options.quantize), backend, options.batch),
      test_(backend, data.test), cursor_(backend.allocate(sizeof(std::int64_t))) {
  if (data.train.count > 0) {
    train_ = std::make_unique<DeviceDataset>(backend, data.train);
    LOWBIT_EXPECTS(data.train.count >= options.batch,
                   "train: --batch " + std::to_string(options.batch) +
                       " is larger than the training set (" + std::to_string(data.train.count) +
                       " examples)");
    perm_ = backend.allocate(static_cast<std::size_t>(data.train.count) * sizeof(std::int32_t));
    shuffle_workspace_ = backend.allocate(backend.shuffle_workspace_bytes(data.train.count));
    velocity_ =
        backend.allocate(static_cast<std::size_t>(network_.parameter_count()) * sizeof(float));
  }
}

void Session::begin_epoch(std::int64_t epoch) {
  backend_.shuffle_indices(options_.seed, epoch, train_->count, perm_.as<std::int32_t>(),
                           shuffle_workspace_.as_workspace());
  backend_.fill_zero(cursor_.data(), sizeof(std::int64_t));
  backend_.fill_zero(network_.totals(), sizeof(LossTotals));
  network_.reset_clip_counts();
}

void Session::calibrate() {
  begin_epoch(0);
  gather(*train_, perm_.as<std::int32_t>());
  network_.forward(Pass::calibrate);
}

void Session::set_learning_rate(float learning_rate) {
  if (learning_rate == options_.sgd.learning_rate) return;
  options_.sgd.learning_rate = learning_rate;
  graph_.reset();
}

void Session::train_step() {
  gather(*train_, perm_.as<std::int32_t>());
  backend_.advance_cursor(cursor_.as<std::int64_t>());
  network_.forward(Pass::train);
  network_.backward();
  backend_.sgd_step(network_.parameters(), network_.gradients(), velocity(),
                    network_.parameter_count(), network_.decayed_count(), options_.sgd);
}

void Session::run_step() {
  if (!options_.use_graph) return train_step();
  if (graph_) return graph_->replay();
  if (!warmed_up_) {
    warmed_up_ = true;
    return train_step();
  }
  graph_ = backend_.capture([this] { train_step(); });
  graph_->replay();
}

LossTotals Session::totals() {
  LossTotals t;
  backend_.download(&t, network_.totals(), sizeof(t));
  return t;
}

LossTotals Session::evaluate() {
  backend_.fill_zero(cursor_.data(), sizeof(std::int64_t));
  backend_.fill_zero(network_.totals(), sizeof(LossTotals));
  const std::int64_t batches = (test_.count + options_.batch - 1) / options_.batch;
  for (std::int64_t b = 0; b < batches; ++b) {
    gather(test_, nullptr);
    backend_.advance_cursor(cursor_.as<std::int64_t>());
    network_.forward(Pass::eval);
  }
  return totals();
}

std::vector<std::int32_t> Session::predict() {
  backend_.fill_zero(cursor_.data(), sizeof(std::int64_t));
  const std::int64_t batch = options_.batch, classes = network_.classes();
  std::vector<float> logits(static_cast<std::size_t>(batch * classes));
  std::vector<std::int32_t> predictions;
  for (std::int64_t first = 0; first < test_.count; first += batch) {
    gather(test_, nullptr);
    backend_.advance_cursor(cursor_.as<std::int64_t>());
    network_.forward(Pass::eval);
    backend_.download(logits.data(), network_.logits(), logits.size() * sizeof(float));
    for (std::int64_t r = 0; r < batch && first + r < test_.count; ++r) {
      const float* row = logits.data() + r * classes;
      predictions.push_back(first_maximum(row, static_cast<int>(classes)));
    }
  }
  return predictions;
}

std::uint64_t Session::skipped_ema_batches() {
  std::vector<EmaRangeState> states(network_.ema_state_names().size());
  if (!states.empty())
    backend_.download(states.data(), network_.ema_states(), states.size() * sizeof(EmaRangeState));
  std::uint64_t skipped = 0;
  for (const EmaRangeState& s : states) skipped += s.skipped;
  return skipped;
}

void Session::gather(const DeviceDataset& data, const std::int32_t* perm) {
  backend_.gather_batch(data.images.as<std::uint8_t>(), data.labels.as<std::uint8_t>(),
                        data.count, network_.example_size(), perm, cursor_.as<std::int64_t>(),
                        options_.batch, options_.normalization, network_.images(),
                        network_.labels());
}

}  // namespace lowbit
