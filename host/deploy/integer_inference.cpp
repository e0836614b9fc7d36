// Integer-only inference of an IntegerModel on a backend: codes in, codes
// out, int32 accumulation and fixed-point requantization between (the ops of
// cuda/integer_inference.cu and their CPU reference).
#include <algorithm>

#include "lowbit/data.hpp"
#include "lowbit/deploy.hpp"
#include "lowbit/error.hpp"
#include "lowbit/nn_element.hpp"
#include "lowbit/trainer.hpp"
#include "train/checkpoint.hpp"
#include "train/session.hpp"

namespace lowbit {
namespace {

/// Backend memory that lives until the queued work is done.
class Arena {
 public:
  explicit Arena(Backend& backend) : backend_(backend) {}
  template <class T>
  T* allocate(std::int64_t n) {
    buffers_.push_back(backend_.allocate(static_cast<std::size_t>(n) * sizeof(T)));
    return buffers_.back().as<T>();
  }
  template <class T>
  T* upload(const std::vector<T>& values) {
    T* p = allocate<T>(static_cast<std::int64_t>(values.size()));
    backend_.upload(p, values.data(), values.size() * sizeof(T));
    return p;
  }

 private:
  Backend& backend_;
  std::vector<Buffer> buffers_;
};

/// The top-1 of each row of output codes: the first maximum code.
std::vector<std::int32_t> top1(const std::vector<std::uint8_t>& codes, std::int64_t classes) {
  std::vector<std::int32_t> predictions;
  for (std::size_t first = 0; first < codes.size(); first += static_cast<std::size_t>(classes)) {
    const auto row = codes.begin() + static_cast<std::ptrdiff_t>(first);
    predictions.push_back(static_cast<std::int32_t>(std::max_element(row, row + classes) - row));
  }
  return predictions;
}

}  // namespace

std::vector<std::uint8_t> integer_inference(const IntegerModel& model,
                                            const std::vector<std::uint8_t>& pixels,
                                            std::int64_t count, Backend& backend) {
  LOWBIT_EXPECTS(model.input_shape.size() == 3 && !model.layers.empty(),
                 "integer inference: the model needs a [C, H, W] input and a layer");
  std::int64_t channels = model.input_shape[0], height = model.input_shape[1],
               width = model.input_shape[2];
  LOWBIT_EXPECTS(
      count >= 0 && static_cast<std::int64_t>(pixels.size()) == count * channels * height * width,
      "integer inference: " + std::to_string(pixels.size()) + " pixels are not " +
          std::to_string(count) + " examples of " + std::to_string(channels) + "x" +
          std::to_string(height) + "x" + std::to_string(width));
  Arena arena(backend);
  const std::uint8_t* x = arena.upload(pixels);
  for (std::size_t index = 0; index < model.layers.size(); ++index) {
    const IntegerLayer& l = model.layers[index];
    const LayerInput read = layer_input(model, index);
    Conv2dShape s{count, channels, height, width, l.out_channels, l.kernel, l.stride, l.padding};
    if (l.linear) s = {count, channels * height * width, 1, 1, l.out_channels, 1, 1, 0};
    LOWBIT_EXPECTS(s.in_channels == l.in_channels, "integer inference: layer " + l.name +
                                                       " takes " + std::to_string(l.in_channels) +
                                                       " channels but gets " +
                                                       std::to_string(s.in_channels));
    std::vector<std::int32_t> multiplier, shift;
    for (const FixedPointMultiplier& m : requantization_multipliers(model, index)) {
      multiplier.push_back(m.multiplier);
      shift.push_back(m.shift);
    }
    const CodeGrid& out = l.output;
    // After a ReLU, nothing lies below the code of 0.
    const std::int32_t lowest = l.relu ? std::clamp(out.zero_point, out.qmin, out.qmax) : out.qmin;
    const Requantization r{arena.upload(multiplier), arena.upload(shift), out.zero_point, lowest,
                           out.qmax};
    std::uint8_t* y =
        arena.allocate<std::uint8_t>(count * s.out_channels * s.out_height() * s.out_width());
    backend.integer_conv2d(s, x, read.zero_point, read.fraction_bits, arena.upload(l.weight_codes),
                           arena.upload(l.weight_zero_point), arena.upload(l.bias),
                           l.accumulator_shift, r, y);
    channels = s.out_channels;
    height = s.out_height();
    width = s.out_width();
    x = y;
    if (l.pool > 0) {
      const Pool2dShape p{count, channels, height, width, l.pool, l.pool};
      std::uint8_t* pooled =
          arena.allocate<std::uint8_t>(count * channels * p.out_height() * p.out_width());
      backend.max_pool_codes(p, x, pooled);
      height = p.out_height();
      width = p.out_width();
      x = pooled;
    }
  }
  std::vector<std::uint8_t> codes(static_cast<std::size_t>(count * channels * height * width));
  backend.download(codes.data(), x, codes.size());
  return codes;
}

IntegerEvalReport evaluate_integer(const std::string& path, const std::string& data_dir,
                                   std::int64_t limit_test, Backend& backend) {
  LOWBIT_EXPECTS(limit_test >= 0, "eval: --limit-test must be >= 0");
  const bool exported = is_integer_model_file(path);
  const IntegerModel model = exported ? load_integer_model(path) : integer_model(path);
  const Dataset test = load_mnist_test_split(data_dir, limit_test);
  LOWBIT_EXPECTS(test.rows == model.input_shape[1] && test.cols == model.input_shape[2] &&
                     model.input_shape[0] == 1,
                 "eval: " + test.images_path + " holds " + std::to_string(test.rows) + "x" +
                     std::to_string(test.cols) + " images but " + path + "'s model takes " +
                     std::to_string(model.input_shape[1]) + "x" +
                     std::to_string(model.input_shape[2]));
  const std::vector<std::uint8_t> codes =
      integer_inference(model, test.images, test.count, backend);
  const std::int64_t classes =
      test.count > 0 ? static_cast<std::int64_t>(codes.size()) / test.count : 0;
  const std::vector<std::int32_t> predicted = top1(codes, classes);

  IntegerEvalReport report;
  report.device = backend.description();
  report.examples = test.count;
  std::int64_t correct = 0;
  for (std::int64_t i = 0; i < test.count; ++i)
    correct += predicted[static_cast<std::size_t>(i)] == test.labels[static_cast<std::size_t>(i)];
  report.accuracy = test.count > 0 ? static_cast<double>(correct) / test.count : 0.0;
  if (exported) return report;

  // The fake-quant model the integer one came from, on the same images.
  const Checkpoint checkpoint = read_checkpoint(path);
  DatasetSplits data;
  data.test = test;
  Session session(checkpoint.options, backend, data);
  restore_checkpoint(checkpoint, session.network(), backend, nullptr);
  session.network().set_steps_done(checkpoint.progress.steps_done);
  const std::vector<std::int32_t> fake_quant = session.predict();
  report.compared = true;
  std::int64_t fake_correct = 0;
  for (std::int64_t i = 0; i < test.count; ++i) {
    const auto k = static_cast<std::size_t>(i);
    fake_correct += fake_quant[k] == test.labels[k];
    if (fake_quant[k] == predicted[k])
      ++report.agreeing;
    else
      report.disagreeing.push_back(i);
  }
  report.fake_quant_accuracy =
      test.count > 0 ? static_cast<double>(fake_correct) / test.count : 0.0;
  return report;
}

}  // namespace lowbit
