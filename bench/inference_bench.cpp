// Inference benchmarks: LeNet-5 on Fashion-MNIST test images, integer-only at
// 2, 4 and 8 bits (lowbit::integer_inference) and as fp32 eval, at batch 1, 64
// and 1024.
//
// With a CUDA device it runs the CUDA backend (names start "gpu/"); without
// one, the CPU backend ("cpu/"). The models are real but barely trained: at
// startup, lowbit::train() runs one epoch over the first 1024 training images
// of $LOWBIT_DATA_DIR (else Debian's Fashion-MNIST) on the CPU backend for
// each config, with the trainer's range for the width (recommended_range) and
// quant_delay 0, and saves a checkpoint to a temporary directory (removed once
// read). Inference time does not depend on how well they are trained.
//
// Both paths go from 8-bit pixels in host memory to class scores in host
// memory, one call per iteration:
//   inference/bits:B/batch:N   integer_inference() of the checkpoint's
//       integer_model(): it uploads the pixels and the weights, runs int32
//       convolutions with fixed-point requantization and downloads codes.
//   inference/fp32/batch:N     Session::predict() of the fp32 checkpoint, an
//       eval-only Session over the N images: the trainer's own eval path
//       (normalise on the backend, forward, download logits, top-1). Its
//       pixels stay in backend memory between calls, which on the CPU saves a
//       memcpy of at most 0.8 MB per call.
// Counters: items_per_second (images per second of wall time), bits, batch;
// the label is the range mode (ema, lsq) or fp32.
// The binary exits 1 if any benchmark failed (harness.hpp).
#include <benchmark/benchmark.h>
#include <stdlib.h>  // mkdtemp (POSIX)

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include "harness.hpp"
#include "lenet_configs.hpp"
#include "lowbit/backend.hpp"
#include "lowbit/data.hpp"
#include "lowbit/deploy.hpp"
#include "lowbit/trainer.hpp"
#include "train/checkpoint.hpp"
#include "train/session.hpp"

namespace {

using lowbit::Backend;
using lowbit::bench::config_name;
using lowbit::bench::fail;

constexpr std::int64_t kTrainImages = 1024;
constexpr std::int64_t kTestImages = 256;  // what the trainer evaluates after its epoch
constexpr std::int64_t kClasses = 10;
const std::vector<int> kConfigs = {0, 8, 4, 2};  // 0: fp32
const std::vector<std::int64_t> kBatches = {1, 64, 1024};


std::string data_directory() {
  const char* dir = std::getenv("LOWBIT_DATA_DIR");
  return dir != nullptr && *dir != '\0' ? dir : lowbit::kDefaultDataDirectory;
}

/// A fresh directory under the system's temporary one, removed with its
/// contents when this goes.
class TempDirectory {
 public:
  TempDirectory() {
    std::string name =
        (std::filesystem::temp_directory_path() / "lowbit-inference-XXXXXX").string();
    if (mkdtemp(name.data()) == nullptr)
      throw std::system_error(errno, std::generic_category(), "mkdtemp " + name);
    path_ = name;
  }
  ~TempDirectory() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDirectory(const TempDirectory&) = delete;
  TempDirectory& operator=(const TempDirectory&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

/// Trains one epoch at `bits` (0: fp32) on the CPU; returns the checkpoint's path.
std::string train_checkpoint(int bits, const std::string& data_dir,
                             const std::filesystem::path& dir) {
  lowbit::TrainOptions o;
  o.data_dir = data_dir;
  o.epochs = 1;
  o.limit_train = kTrainImages;
  o.limit_test = kTestImages;
  o.quantize = lowbit::bench::quantize_options(bits);
  o.save_path = (dir / (config_name(bits) + ".safetensors")).string();
  const std::unique_ptr<Backend> cpu = lowbit::make_cpu_backend();
  lowbit::train(o, *cpu, nullptr);
  return o.save_path;
}

/// The first `count` images of the test split, labels included.
lowbit::Dataset first_images(const lowbit::Dataset& test, std::int64_t count) {
  lowbit::Dataset d = test;
  d.count = count;
  d.images.resize(static_cast<std::size_t>(count * test.example_size()));
  d.labels.resize(static_cast<std::size_t>(count));
  return d;
}

void set_config_counters(benchmark::State& state, int bits, std::int64_t batch,
                         const std::string& label) {
  state.SetItemsProcessed(state.iterations() * batch);
  state.counters["bits"] = bits;
  state.counters["batch"] = static_cast<double>(batch);
  state.SetLabel(label);
}

void bench_integer(benchmark::State& state, Backend& backend, const lowbit::IntegerModel& model,
                   const lowbit::Dataset& images, int bits) {
  std::vector<std::uint8_t> codes = integer_inference(model, images.images, images.count,
                                                      backend);  // untimed warm-up
  for (auto _ : state) {
    codes = integer_inference(model, images.images, images.count, backend);
    benchmark::DoNotOptimize(codes.data());
  }
  if (static_cast<std::int64_t>(codes.size()) != images.count * kClasses)
    return fail(state, "integer inference returned " + std::to_string(codes.size()) + " codes");
  set_config_counters(state, bits, images.count, lowbit::to_string(model.range));
}

void bench_fp32(benchmark::State& state, Backend& backend, const lowbit::Checkpoint& checkpoint,
                const lowbit::Dataset& images) {
  lowbit::TrainOptions options = checkpoint.options;
  options.batch = images.count;
  lowbit::DatasetSplits data;
  data.test = images;
  lowbit::Session session(options, backend, data);
  lowbit::restore_checkpoint(checkpoint, session.network(), backend, nullptr);
  std::vector<std::int32_t> predicted = session.predict();  // untimed warm-up
  for (auto _ : state) {
    predicted = session.predict();
    benchmark::DoNotOptimize(predicted.data());
  }
  if (static_cast<std::int64_t>(predicted.size()) != images.count)
    return fail(state, "fp32 eval returned " + std::to_string(predicted.size()) + " predictions");
  set_config_counters(state, 0, images.count, "fp32");
}

/// Everything the benchmarks read, made once before they are registered.
struct Inputs {
  std::unique_ptr<lowbit::Checkpoint> fp32;
  std::map<int, lowbit::IntegerModel> models;      // by bits
  std::map<std::int64_t, lowbit::Dataset> images;  // by batch
};

Inputs make_inputs() {
  const std::string data_dir = data_directory();
  const TempDirectory dir;
  Inputs in;
  for (const int bits : kConfigs) {
    const std::string path = train_checkpoint(bits, data_dir, dir.path());
    if (bits == 0)
      in.fp32 = std::make_unique<lowbit::Checkpoint>(lowbit::read_checkpoint(path));
    else
      in.models[bits] = lowbit::integer_model(path);
  }
  const lowbit::Dataset test = lowbit::load_mnist_test_split(data_dir, kBatches.back());
  for (const std::int64_t batch : kBatches) in.images[batch] = first_images(test, batch);
  return in;
}

void register_all(Backend& backend, const std::string& prefix, const Inputs& in) {
  Backend* b = &backend;
  for (const std::int64_t batch : kBatches)
    for (const int bits : kConfigs) {
      const std::string name =
          prefix + "/inference/" + config_name(bits) + "/batch:" + std::to_string(batch);
      const lowbit::Dataset* images = &in.images.at(batch);
      benchmark::internal::Benchmark* registered;
      if (bits == 0) {
        const lowbit::Checkpoint* checkpoint = in.fp32.get();
        registered = lowbit::bench::add_guarded(
            name, [=](benchmark::State& s) { bench_fp32(s, *b, *checkpoint, *images); });
      } else {
        const lowbit::IntegerModel* model = &in.models.at(bits);
        registered = lowbit::bench::add_guarded(
            name, [=](benchmark::State& s) { bench_integer(s, *b, *model, *images, bits); });
      }
      // Wall time: the CPU backend's OpenMP threads do not count in the
      // calling thread's CPU time.
      registered->Unit(benchmark::kMicrosecond)->UseRealTime();
    }
}

}  // namespace

int main(int argc, char** argv) {
  std::unique_ptr<Backend> backend;  // these outlive every benchmark
  Inputs inputs;
  return lowbit::bench::run_benchmarks(argc, argv, [&] {
    const bool gpu = lowbit::cuda_device_problem().empty();
    backend = gpu ? lowbit::make_cuda_backend() : lowbit::make_cpu_backend();
    inputs = make_inputs();
    benchmark::AddCustomContext("backend", backend->description());
    benchmark::AddCustomContext("models", "LeNet-5, 1 epoch on the first " +
                                              std::to_string(kTrainImages) + " images of " +
                                              data_directory() + " (CPU backend)");
    register_all(*backend, gpu ? "gpu" : "cpu", inputs);
  });
}
