// lowbit::cpu elementwise quantizer ops. Each thread takes whole 32-element
// mask words (parallel_words) and walks its share in spans of one set of
// parameters (a channel run, or the whole share); a span goes to a worker
// that handles one mask word at a time in `omp simd` loops the compiler
// vectorises, built for each level of cpu_isa.hpp and run at the active one.
#include "backends/cpu_quant.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "backends/cpu_isa.hpp"
#include "backends/cpu_parallel.hpp"
#include "checks.hpp"
#include "lowbit/element.hpp"
#include "lowbit/nn_element.hpp"

namespace lowbit::cpu {
namespace {

using std::int64_t;
using std::uint32_t;

// Elements per mask word.
constexpr int kWord = 32;

// Runs a worker's f at the active level (at_active_isa), but at most kTop.
// x86-64-v4 (AVX-512) beats v3 only for the affine, LSQ and per-channel
// range quantizers (by 24%, 31% and 7% on an AMD EPYC at 4M elements; see
// top_level). The other workers run their v3 code on a v4 CPU: there v4 was
// no faster (per-tensor range, EMA, bias + activation, STE, quant_delay
// identity: within ±3%) or slower (bias + ReLU + EMA fake quant by 5-14%,
// add by 20-25%). No level contracts to FMA (-ffp-contract=off), and every
// operation is the IEEE one, so all give the reference's bits.
template <Isa kTop = Isa::x86_64_v3, class F>
void at_level(const F& f) {
  at_active_isa<kTop>(f);
}

#define LOWBIT_ALWAYS_INLINE inline __attribute__((always_inline))

// What one thread's share adds up: clipped elements, and for the EMA ops
// per-lane min/max of the values it saw and whether any was not finite.
// Only finite batches reach the EMA (ema_range_step skips the others), and
// there the min/max are order-free values: ±0 both become +0.
struct Totals {
  unsigned long long clipped = 0;
  bool nonfinite = false;
  float lo[kWord];
  float hi[kWord];

  Totals() {
    std::fill(lo, lo + kWord, INFINITY);
    std::fill(hi, hi + kWord, -INFINITY);
  }

  void merge(const Totals& t) {
    clipped += t.clipped;
    nonfinite = nonfinite || t.nonfinite;
    for (int j = 0; j < kWord; ++j) {
      lo[j] = t.lo[j] < lo[j] ? t.lo[j] : lo[j];
      hi[j] = t.hi[j] > hi[j] ? t.hi[j] : hi[j];
    }
  }

  // The batch min and max as ema_range_step sees them: NaN (a skipped batch)
  // when any value was not finite.
  float batch_min() const {
    float m = lo[0];
    for (int j = 1; j < kWord; ++j) m = lo[j] < m ? lo[j] : m;
    return nonfinite ? NAN : m;
  }
  float batch_max() const {
    float m = hi[0];
    for (int j = 1; j < kWord; ++j) m = hi[j] > m ? hi[j] : m;
    return m;
  }
};

// How a worker turns x into the value it quantizes, v.
enum class Input {
  plain,       // v = x
  relu,        // v = relu(x (+ bias)); the mask also needs v > 0
  activation,  // v = activation_forward(x (+ bias), relu)
};

// Where element i's bias comes from.
enum class Bias { none, scalar, row };

// What a worker writes for v: y and the bits a (pass, or plane 0), b (plane
// 1; ANDed into a for MaskFormat::pass) and c (clipped).
enum class Output { range_divide, range_multiply, affine, lsq, identity, none };

// One span [begin, end) of element indices into x, y and the mask planes,
// with one set of parameters. Elements are float, bf16 or fp16 (T): widened
// to float on load, the result rounded to T once on store (element.hpp).
template <class T>
struct SpanOf {
  const T* x = nullptr;
  T* y = nullptr;
  int64_t begin = 0;
  int64_t end = 0;
  uint32_t* plane0 = nullptr;       // null: no mask
  uint32_t* plane1 = nullptr;       // MaskFormat::sides only
  float bias = 0.0f;                // Bias::scalar
  const float* bias_row = nullptr;  // Bias::row: element i adds bias_row[i - begin]
  bool relu = false;                // Input::activation
  RangeParams range;
  AffineParams affine;
  LsqParams lsq;
  Totals* totals = nullptr;
};

using Span = SpanOf<float>;

struct Params {
  RangeParams range;
  AffineParams affine;
  LsqParams lsq;
  bool relu;
};

// a + b with a's NaN winning when both are NaN, as the reference's a + b
// runs on x86 (the first operand's NaN, quieted); the compiler may commute a
// sum, so the rule is spelled out. (x + x quiets x's NaN.)
LOWBIT_ALWAYS_INLINE float sum(float a, float b) { return a == a ? a + b : a + a; }

template <Input kIn, Bias kBias>
LOWBIT_ALWAYS_INLINE float input(float x, float bias, bool relu_flag) {
  float v = x;
  if constexpr (kBias != Bias::none) v = sum(x, bias);
  if constexpr (kIn == Input::relu) v = relu(v);
  if constexpr (kIn == Input::activation) v = activation_forward(v, relu_flag);
  return v;
}

// The outputs for v, one function each (scalars, so the vectoriser sees no
// aggregate; the compiler shares their common parts).
template <Output kOut>
LOWBIT_ALWAYS_INLINE float output_y(float v, const Params& p) {
  if constexpr (kOut == Output::range_divide) return fake_quant(v, p.range, RangeScaling::divide);
  if constexpr (kOut == Output::range_multiply)
    return fake_quant(v, p.range, RangeScaling::multiply);
  if constexpr (kOut == Output::affine) return fake_quant(v, p.affine);
  if constexpr (kOut == Output::lsq) return fake_quant(v, p.lsq);
  return v;
}

template <Output kOut>
LOWBIT_ALWAYS_INLINE bool output_a(float v, const Params& p) {
  if constexpr (kOut == Output::range_divide || kOut == Output::range_multiply)
    return at_or_above_min(v, p.range);
  if constexpr (kOut == Output::affine) return ste_pass(v, p.affine);
  if constexpr (kOut == Output::identity) return v == v;
  return true;
}

template <Input kIn, Output kOut>
LOWBIT_ALWAYS_INLINE bool output_b(float v, const Params& p) {
  bool b = true;
  if constexpr (kOut == Output::range_divide || kOut == Output::range_multiply)
    b = at_or_below_max(v, p.range);
  if constexpr (kOut == Output::identity) b = v == v;
  if constexpr (kIn == Input::relu) b = b && v > 0.0f;
  return b;
}

template <Output kOut>
LOWBIT_ALWAYS_INLINE bool output_c(float v, const Params& p) {
  if constexpr (kOut == Output::range_divide || kOut == Output::range_multiply)
    return clips(v, p.range);
  if constexpr (kOut == Output::affine) return clips(v, p.affine);
  if constexpr (kOut == Output::lsq) return clips(v, p.lsq);
  return false;
}

// All ones for true, zero for false.
LOWBIT_ALWAYS_INLINE uint32_t lanes(bool bit) { return 0u - static_cast<uint32_t>(bit); }

// Bit j of a mask word, for packing lanes.
struct BitTable {
  alignas(64) uint32_t bit[kWord];
};
constexpr BitTable make_bits() {
  BitTable t{};
  for (int j = 0; j < kWord; ++j) t.bit[j] = 1u << j;
  return t;
}
constexpr BitTable kBits = make_bits();

// Which bits an output has: a (pass, or plane 0), b (plane 1; the pass bit
// is a & b) and c (clipped). The others are constant and not computed.
template <Input kIn, Output kOut>
struct Bits {
  static constexpr bool kRange = kOut == Output::range_divide || kOut == Output::range_multiply;
  static constexpr bool a = kRange || kOut == Output::affine || kOut == Output::identity;
  static constexpr bool b = kRange || kOut == Output::identity || kIn == Input::relu;
  static constexpr bool c = kRange || kOut == Output::affine || kOut == Output::lsq;
};

// The body of every quantizing worker. A whole mask word is one `omp simd`
// loop, which reads x[i] before writing y[i] in each lane, so y may be x
// without the compiler's alias check (that would fall back to scalar code in
// place). Its bits go out as all-ones/zero lanes that a second loop packs
// (ANDed with the bit: OR-ing bits into a word inside the first loop does not
// vectorise, and SSE2 cannot shift by a lane's index). A span's partial first
// and last words go element by element, OR-ing into a word its thread began.
template <class T, Input kIn, Bias kBias, Output kOut, bool kMinMax>
LOWBIT_ALWAYS_INLINE void run_span(const SpanOf<T>& s, const Params& p) {
  using Has = Bits<kIn, kOut>;
  // 2-byte elements are widened into a block of their own, as a computed v.
  constexpr bool kStaged = kIn != Input::plain || !std::is_same_v<T, float>;
  const T* const x = s.x;
  T* const y = s.y;
  const int64_t begin = s.begin;
  const int64_t end = s.end;
  uint32_t* const plane0 = s.plane0;
  uint32_t* const plane1 = s.plane1;
  const float scalar_bias = s.bias;
  const float* const bias_row = s.bias_row;
  const auto bias_of = [&](int64_t i) {
    if constexpr (kBias == Bias::row) return bias_row[i - begin];
    return scalar_bias;
  };
  const auto store = [&](int64_t word, uint32_t a, uint32_t b, bool fresh) {
    if (kOut == Output::none || plane0 == nullptr) return;
    const uint32_t bits0 = plane1 != nullptr ? a : (a & b);
    plane0[word] = fresh ? bits0 : (plane0[word] | bits0);
    if (plane1 != nullptr) plane1[word] = fresh ? b : (plane1[word] | b);
  };

  // Per-lane min/max and non-finite flags (the lane is the bit in the word).
  alignas(32) float lo[kWord];
  alignas(32) float hi[kWord];
  alignas(32) uint32_t nonfinite[kWord];
  if constexpr (kMinMax) {
    for (int j = 0; j < kWord; ++j) {
      lo[j] = s.totals->lo[j];
      hi[j] = s.totals->hi[j];
      nonfinite[j] = 0;
    }
  }
  unsigned long long clipped = 0;

  int64_t i = begin;
  while (i < end) {
    const int64_t base = i & ~int64_t{kWord - 1};
    uint32_t a = ~0u, b = ~0u, c = 0;
    if (i == base && i + kWord <= end) {
      alignas(32) uint32_t lanes_a[kWord];
      alignas(32) uint32_t lanes_b[kWord];
      alignas(32) uint32_t lanes_c[kWord];
      // A computed v goes through a block of its own: in one loop with the
      // quantizer the compiler threads relu's zero into the range tests and
      // makes selects between masks it cannot vectorise.
      alignas(32) float staged[kWord];
      if constexpr (kStaged) {
#pragma omp simd
        for (int j = 0; j < kWord; ++j)
          staged[j] = input<kIn, kBias>(to_float(x[i + j]), bias_of(i + j), p.relu);
      }
      const float* in = staged;
      if constexpr (!kStaged) in = x + i;
#pragma omp simd
      for (int j = 0; j < kWord; ++j) {
        const float v = in[j];
        if constexpr (kOut != Output::none) y[i + j] = from_float<T>(output_y<kOut>(v, p));
        if constexpr (Has::a) lanes_a[j] = lanes(output_a<kOut>(v, p));
        if constexpr (Has::b) lanes_b[j] = lanes(output_b<kIn, kOut>(v, p));
        if constexpr (Has::c) lanes_c[j] = lanes(output_c<kOut>(v, p));
        if constexpr (kMinMax) {
          lo[j] = v < lo[j] ? v : lo[j];
          hi[j] = v > hi[j] ? v : hi[j];
          nonfinite[j] |= lanes(!is_finite(v));
        }
      }
      if constexpr (Has::a || Has::b || Has::c) {
        uint32_t pa = 0, pb = 0, pc = 0;
        for (int j = 0; j < kWord; ++j) {
          if constexpr (Has::a) pa |= lanes_a[j] & kBits.bit[j];
          if constexpr (Has::b) pb |= lanes_b[j] & kBits.bit[j];
          if constexpr (Has::c) pc |= lanes_c[j] & kBits.bit[j];
        }
        if constexpr (Has::a) a = pa;
        if constexpr (Has::b) b = pb;
        if constexpr (Has::c) c = pc;
      }
      store(i / kWord, a, b, true);
      i += kWord;
    } else {
      const int64_t stop = std::min(base + kWord, end);
      // Bits outside [i, stop) stay clear.
      const uint32_t span_bits = (~0u << (i - base)) & (~0u >> (base + kWord - stop));
      a &= span_bits;
      b &= span_bits;
      for (int64_t k = i; k < stop; ++k) {
        const int j = static_cast<int>(k - base);
        const float v = input<kIn, kBias>(to_float(x[k]), bias_of(k), p.relu);
        if constexpr (kOut != Output::none) y[k] = from_float<T>(output_y<kOut>(v, p));
        if constexpr (Has::a) a &= ~kBits.bit[j] | lanes(output_a<kOut>(v, p));
        if constexpr (Has::b) b &= ~kBits.bit[j] | lanes(output_b<kIn, kOut>(v, p));
        if constexpr (Has::c) c |= kBits.bit[j] & lanes(output_c<kOut>(v, p));
        if constexpr (kMinMax) {
          lo[j] = v < lo[j] ? v : lo[j];
          hi[j] = v > hi[j] ? v : hi[j];
          nonfinite[j] |= lanes(!is_finite(v));
        }
      }
      store(base / kWord, a, b, i == base);
      i = stop;
    }
    if constexpr (Has::c) clipped += static_cast<unsigned>(__builtin_popcount(c));
  }

  Totals& t = *s.totals;
  t.clipped += clipped;
  if constexpr (kMinMax) {
    uint32_t any = 0;
    for (int j = 0; j < kWord; ++j) {
      t.lo[j] = lo[j];
      t.hi[j] = hi[j];
      any |= nonfinite[j];
    }
    t.nonfinite = t.nonfinite || any != 0;
  }
}

template <class T, Input kIn, Bias kBias, Output kOut, bool kMinMax>
LOWBIT_ALWAYS_INLINE void run(const SpanOf<T>& s) {
  const Params p{s.range, s.affine, s.lsq, s.relu};
  // Two copies of the span: in each the compiler knows the outcome of the
  // element functions' zero-width test (scale == 0) and drops it from the
  // loop (about 10% of the time of a range op).
  if (Bits<kIn, kOut>::kRange && p.range.scale == 0.0f)
    run_span<T, kIn, kBias, kOut, kMinMax>(s, p);
  else
    run_span<T, kIn, kBias, kOut, kMinMax>(s, p);
}

template <class T>
using SpanFnOf = void (*)(const SpanOf<T>&);
using SpanFn = SpanFnOf<float>;

// The highest level a quantizer runs at (see at_level): AVX-512 where it
// measurably helped, which is every worker on bf16/fp16 elements (their
// widening and rounding make them compute-bound: range and lagged EMA on bf16
// about 20% faster than at v3 here).
template <class T, Output kOut>
constexpr Isa top_level() {
  return !std::is_same_v<T, float> || kOut == Output::affine || kOut == Output::lsq ||
                 kOut == Output::range_multiply
             ? Isa::x86_64_v4
             : Isa::x86_64_v3;
}

// The level functions are `flatten`: the element functions must inline into
// the loops (the inliner's growth limits would otherwise keep some of them as
// calls).
template <class T, Input kIn, Bias kBias, Output kOut, bool kMinMax>
void span_worker(const SpanOf<T>& s) {
  at_level<top_level<T, kOut>()>([&](auto) { run<T, kIn, kBias, kOut, kMinMax>(s); });
}

// The workers of x itself, for each element type T.
#define LOWBIT_ELEMENT_WORKER(name, out, minmax) \
  template <class T>                             \
  constexpr SpanFnOf<T> name = span_worker<T, Input::plain, Bias::none, Output::out, minmax>;

LOWBIT_ELEMENT_WORKER(range_divide, range_divide, false)
LOWBIT_ELEMENT_WORKER(range_multiply, range_multiply, false)
LOWBIT_ELEMENT_WORKER(range_divide_minmax, range_divide, true)
LOWBIT_ELEMENT_WORKER(affine, affine, false)
LOWBIT_ELEMENT_WORKER(identity, identity, false)
LOWBIT_ELEMENT_WORKER(identity_minmax, identity, true)
LOWBIT_ELEMENT_WORKER(minmax, none, true)

#undef LOWBIT_ELEMENT_WORKER

#define LOWBIT_SPAN_WORKER(name, in, bias, out, minmax) \
  constexpr SpanFn name = span_worker<float, Input::in, Bias::bias, Output::out, minmax>;

LOWBIT_SPAN_WORKER(lsq, plain, none, lsq, false)

LOWBIT_SPAN_WORKER(relu_range, relu, none, range_divide, false)
LOWBIT_SPAN_WORKER(relu_range_scalar, relu, scalar, range_divide, false)
LOWBIT_SPAN_WORKER(relu_range_row, relu, row, range_divide, false)
LOWBIT_SPAN_WORKER(relu_range_minmax, relu, none, range_divide, true)
LOWBIT_SPAN_WORKER(relu_range_minmax_scalar, relu, scalar, range_divide, true)
LOWBIT_SPAN_WORKER(relu_range_minmax_row, relu, row, range_divide, true)
LOWBIT_SPAN_WORKER(relu_identity, relu, none, identity, false)
LOWBIT_SPAN_WORKER(relu_identity_scalar, relu, scalar, identity, false)
LOWBIT_SPAN_WORKER(relu_identity_row, relu, row, identity, false)
LOWBIT_SPAN_WORKER(relu_identity_minmax, relu, none, identity, true)
LOWBIT_SPAN_WORKER(relu_identity_minmax_scalar, relu, scalar, identity, true)
LOWBIT_SPAN_WORKER(relu_identity_minmax_row, relu, row, identity, true)
LOWBIT_SPAN_WORKER(relu_minmax, relu, none, none, true)
LOWBIT_SPAN_WORKER(relu_minmax_scalar, relu, scalar, none, true)
LOWBIT_SPAN_WORKER(relu_minmax_row, relu, row, none, true)

#undef LOWBIT_SPAN_WORKER

// One worker per way of reading the bias.
struct BiasWorkers {
  SpanFn none, scalar, row;
};

constexpr BiasWorkers kReluRange{relu_range, relu_range_scalar, relu_range_row};
constexpr BiasWorkers kReluRangeMinMax{relu_range_minmax, relu_range_minmax_scalar,
                                       relu_range_minmax_row};
constexpr BiasWorkers kReluIdentity{relu_identity, relu_identity_scalar, relu_identity_row};
constexpr BiasWorkers kReluIdentityMinMax{relu_identity_minmax, relu_identity_minmax_scalar,
                                          relu_identity_minmax_row};
constexpr BiasWorkers kReluMinMax{relu_minmax, relu_minmax_scalar, relu_minmax_row};

// dx = ste_gradient(dy, bit) over [begin, end), begin on a word. (`omp
// simd`: each lane reads dy[i] before writing dx[i], so dx may be dy.)
template <class T>
LOWBIT_ALWAYS_INLINE void ste_words(const T* dy, const uint32_t* plane0, const uint32_t* plane1,
                                    T* dx, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; i += kWord) {
    const int64_t word = i / kWord;
    const uint32_t bits = plane1 != nullptr ? plane0[word] & plane1[word] : plane0[word];
    if (i + kWord <= end) {
#pragma omp simd
      for (int j = 0; j < kWord; ++j)
        dx[i + j] = from_float<T>(ste_gradient(to_float(dy[i + j]), (bits & kBits.bit[j]) != 0u));
    } else {
      for (int64_t k = i; k < end; ++k)
        dx[k] = from_float<T>(ste_gradient(to_float(dy[k]), ((bits >> (k - i)) & 1u) != 0u));
    }
  }
}

template <class T>
void ste_span(const T* dy, const uint32_t* plane0, const uint32_t* plane1, T* dx, int64_t begin,
              int64_t end) {
  at_level([&](auto) { ste_words(dy, plane0, plane1, dx, begin, end); });
}

// y = a + b over [begin, end); y may be a or b.
LOWBIT_ALWAYS_INLINE void add_elements(const float* a, const float* b, float* y, int64_t begin,
                                       int64_t end) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) y[i] = sum(a[i], b[i]);
}

void add_span(const float* a, const float* b, float* y, int64_t begin, int64_t end) {
  at_level([&](auto) { add_elements(a, b, y, begin, end); });
}

// y = activation_forward(x + bias, relu) over a span: no mask, so no words.
template <Bias kBias>
LOWBIT_ALWAYS_INLINE void activate(const Span& s) {
  const float* const x = s.x;
  float* const y = s.y;
  const float bias = s.bias;
  const float* const bias_row = s.bias_row;
  const bool relu = s.relu;
  const int64_t begin = s.begin, end = s.end;
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) {
    const float b = kBias == Bias::row ? bias_row[i - begin] : bias;
    y[i] = input<Input::activation, kBias>(x[i], b, relu);
  }
}

template <Bias kBias>
void activation(const Span& s) {
  at_level([&](auto) { activate<kBias>(s); });
}

constexpr BiasWorkers kActivation{activation<Bias::none>, activation<Bias::scalar>,
                                  activation<Bias::row>};

// Runs f(begin, end, totals) on each thread's share of [0, n) (whole mask
// words) and sums the shares' totals.
template <class F>
Totals parallel_totals(int64_t n, const F& f) {
  Totals total;
  parallel_words(n, [&](int64_t begin, int64_t end) {
    Totals mine;
    f(begin, end, mine);
#pragma omp critical(lowbit_cpu_quant_totals)
    total.merge(mine);
  });
  return total;
}

// Calls f(c, begin, end) for each run of channel c in [begin, end): one run
// when the layout has one channel.
template <class F>
void for_each_run(const ChannelLayout& layout, int64_t begin, int64_t end, const F& f) {
  if (layout.channels == 1) {
    f(int64_t{0}, begin, end);
    return;
  }
  for (int64_t row = begin / layout.inner; begin < end; ++row) {
    const int64_t stop = std::min((row + 1) * layout.inner, end);
    f(row % layout.channels, begin, stop);
    begin = stop;
  }
}

// Mask planes of n elements in `format` (none for a null mask).
template <class T>
void set_planes(SpanOf<T>& s, std::uint32_t* mask, MaskFormat format, int64_t n) {
  s.plane0 = mask;
  s.plane1 = mask != nullptr && format == MaskFormat::sides ? mask + mask_words(n) : nullptr;
}

void add_clips(ClipCount* clip_count, int64_t n, const Totals& totals) {
  if (clip_count == nullptr) return;
  clip_count->quantized += static_cast<unsigned long long>(n);
  clip_count->clipped += totals.clipped;
}

/// The passes an EMA op makes over its tensor.
enum class EmaPass { observe, quantize, observe_and_quantize };

/// The EMA ops' schedule. Lagged: one pass quantizes with the range from
/// before this batch and observes the batch. Exact: one pass observes, the
/// state steps, and a second pass quantizes with the new range. run(pass,
/// quantizes, range) makes one pass (quantizes false: the identity phase) and
/// returns its totals.
template <class Run>
void ema_schedule(EmaRangeState* state, const EmaConfig& config, int64_t n, ClipCount* clip_count,
                  const Run& run) {
  const EmaRangeState before = *state;
  const int qmin = config.quant.qmin(), qmax = config.quant.qmax();
  bool quantizes = false;
  Totals totals;
  if (config.mode == EmaMode::lagged) {
    quantizes = ema_quantizes(before, before.steps, config);
    totals = run(EmaPass::observe_and_quantize, quantizes,
                 nudge_range(before.min, before.max, qmin, qmax));
    ema_range_step(*state, totals.batch_min(), totals.batch_max(), config);
  } else {
    const Totals seen = run(EmaPass::observe, false, RangeParams{});
    ema_range_step(*state, seen.batch_min(), seen.batch_max(), config);
    quantizes = ema_quantizes(*state, before.steps, config);
    totals = run(EmaPass::quantize, quantizes, nudge_range(state->min, state->max, qmin, qmax));
  }
  if (quantizes) add_clips(clip_count, n, totals);
}

// How the ops with a bias walk a layout: one span when every element has the
// same bias (none, or one channel); runs of one channel with its bias as a
// scalar when rows are long; otherwise spans over a row that repeats the
// bias of each element of a [channels, inner] block, so short rows (a Linear
// layer's {batch, out, 1}) still vectorise.
class BiasWalk {
 public:
  BiasWalk(const float* bias, const ChannelLayout& layout) : bias_(bias), layout_(layout) {
    if (bias == nullptr || layout.channels == 1 || layout.inner >= kLongRow) return;
    period_ = layout.channels * layout.inner;
    if (period_ > kMaxSpread) return;
    const int64_t repeats = std::max<int64_t>(1, kSpreadTarget / period_);
    // The calling thread's buffer, kept between calls: the op runs in every
    // training step, and the workers only read it while this walk lives.
    thread_local std::vector<float> buffer;
    buffer.resize(static_cast<std::size_t>(period_ * repeats));
    for (std::size_t k = 0; k < buffer.size(); ++k)
      buffer[k] = bias[(static_cast<int64_t>(k) / layout.inner) % layout.channels];
    spread_ = buffer.data();
    spread_length_ = static_cast<int64_t>(buffer.size());
  }

  void run(int64_t begin, int64_t end, Span s, const BiasWorkers& workers) const {
    if (bias_ == nullptr || layout_.channels == 1) {
      if (bias_ != nullptr) s.bias = bias_[0];
      s.begin = begin;
      s.end = end;
      (bias_ == nullptr ? workers.none : workers.scalar)(s);
    } else if (spread_ == nullptr) {
      for_each_run(layout_, begin, end, [&](int64_t c, int64_t b, int64_t e) {
        s.bias = bias_[c];
        s.begin = b;
        s.end = e;
        workers.scalar(s);
      });
    } else {
      while (begin < end) {
        const int64_t phase = begin % period_;
        s.begin = begin;
        s.end = std::min(end, begin + spread_length_ - phase);
        s.bias_row = spread_ + phase;
        workers.row(s);
        begin = s.end;
      }
    }
  }

 private:
  // Rows at least this long take a span each.
  static constexpr int64_t kLongRow = 4 * kWord;
  // Spans over a repeated bias row aim at this many elements, and the row
  // repeats a block of at most kMaxSpread.
  static constexpr int64_t kSpreadTarget = 4096;
  static constexpr int64_t kMaxSpread = int64_t{1} << 16;

  const float* bias_;
  ChannelLayout layout_;
  int64_t period_ = 0;
  const float* spread_ = nullptr;
  int64_t spread_length_ = 0;
};

template <class T>
void fake_quant_range_as(const T* x, T* y, const ChannelLayout& layout, const float* min,
                         const float* max, RangeQuant quant, std::uint32_t* mask,
                         MaskFormat mask_format) {
  detail::check_fake_quant_range(x, y, layout, min, max, quant);
  const int64_t n = layout.size();
  if (n == 0) return;
  detail::check_ranges(min, max, layout.channels);
  const SpanFnOf<T> worker =
      range_scaling(layout) == RangeScaling::divide ? range_divide<T> : range_multiply<T>;
  parallel_totals(n, [&](int64_t begin, int64_t end, Totals& totals) {
    SpanOf<T> s;
    s.x = x;
    s.y = y;
    s.totals = &totals;
    set_planes(s, mask, mask_format, n);
    for_each_run(layout, begin, end, [&](int64_t c, int64_t b, int64_t e) {
      s.begin = b;
      s.end = e;
      s.range = nudge_range(min[c], max[c], quant.qmin(), quant.qmax());
      worker(s);
    });
  });
}

template <class T>
void fake_quant_affine_as(const T* x, T* y, const ChannelLayout& layout, const float* scale,
                          const std::int32_t* zero_point, AffineQuant quant, std::uint32_t* mask,
                          ClipCount* clip_count) {
  detail::check_fake_quant_affine(x, y, layout, scale, zero_point, quant);
  const int64_t n = layout.size();
  if (n == 0) return;
  detail::check_scales(scale, layout.channels);
  detail::check_zero_points(zero_point, layout.channels, quant);
  const Totals totals = parallel_totals(n, [&](int64_t begin, int64_t end, Totals& mine) {
    SpanOf<T> s;
    s.x = x;
    s.y = y;
    s.totals = &mine;
    set_planes(s, mask, MaskFormat::pass, n);
    for_each_run(layout, begin, end, [&](int64_t c, int64_t b, int64_t e) {
      s.begin = b;
      s.end = e;
      s.affine = make_affine(scale[c], zero_point[c], quant.qmin, quant.qmax);
      affine<T>(s);
    });
  });
  add_clips(clip_count, n, totals);
}

template <class T>
void ema_fake_quant_as(const T* x, T* y, std::int64_t n, EmaRangeState* state,
                       const EmaConfig& config, std::uint32_t* mask, MaskFormat mask_format,
                       ClipCount* clip_count) {
  detail::check_ema_fake_quant(x, y, n, state, config);
  if (n == 0) return;
  ema_schedule(
      state, config, n, clip_count, [&](EmaPass pass, bool quantizes, const RangeParams& range) {
        const SpanFnOf<T> worker = pass == EmaPass::observe ? minmax<T>
                                   : pass == EmaPass::quantize
                                       ? (quantizes ? range_divide<T> : identity<T>)
                                       : (quantizes ? range_divide_minmax<T> : identity_minmax<T>);
        return parallel_totals(n, [&](int64_t begin, int64_t end, Totals& mine) {
          SpanOf<T> s;
          s.x = x;
          s.y = y;
          s.begin = begin;
          s.end = end;
          s.totals = &mine;
          s.range = range;
          set_planes(s, mask, mask_format, n);
          worker(s);
        });
      });
}

template <class T>
void ste_backward_as(const T* dy, const std::uint32_t* mask, MaskFormat mask_format, std::int64_t n,
                     T* dx) {
  detail::check_ste_backward(dy, mask, n, dx);
  const std::uint32_t* plane1 = mask_format == MaskFormat::sides ? mask + mask_words(n) : nullptr;
  parallel_words(n,
                 [&](int64_t begin, int64_t end) { ste_span(dy, mask, plane1, dx, begin, end); });
}

}  // namespace

#define LOWBIT_CPU_ELEMENT_OPS(T)                                                                \
  void fake_quant_range(const T* x, T* y, const ChannelLayout& layout, const float* min,         \
                        const float* max, RangeQuant quant, std::uint32_t* mask,                 \
                        MaskFormat mask_format) {                                                \
    fake_quant_range_as(x, y, layout, min, max, quant, mask, mask_format);                       \
  }                                                                                              \
  void fake_quant_affine(const T* x, T* y, const ChannelLayout& layout, const float* scale,      \
                         const std::int32_t* zero_point, AffineQuant quant, std::uint32_t* mask, \
                         ClipCount* clip_count) {                                                \
    fake_quant_affine_as(x, y, layout, scale, zero_point, quant, mask, clip_count);              \
  }                                                                                              \
  void ema_fake_quant(const T* x, T* y, std::int64_t n, EmaRangeState* state,                    \
                      const EmaConfig& config, std::uint32_t* mask, MaskFormat mask_format,      \
                      ClipCount* clip_count) {                                                   \
    ema_fake_quant_as(x, y, n, state, config, mask, mask_format, clip_count);                    \
  }                                                                                              \
  void ste_backward(const T* dy, const std::uint32_t* mask, MaskFormat mask_format,              \
                    std::int64_t n, T* dx) {                                                     \
    ste_backward_as(dy, mask, mask_format, n, dx);                                               \
  }
LOWBIT_CPU_ELEMENT_OPS(float)
LOWBIT_CPU_ELEMENT_OPS(bf16)
LOWBIT_CPU_ELEMENT_OPS(fp16)
#undef LOWBIT_CPU_ELEMENT_OPS

void bias_relu_ema_fake_quant(const float* x, const float* bias, const ChannelLayout& layout,
                              float* y, EmaRangeState* state, const EmaConfig& config,
                              std::uint32_t* mask, ClipCount* clip_count) {
  detail::check_bias_relu_ema_fake_quant(x, layout, y, state, config);
  const int64_t n = layout.size();
  if (n == 0) return;
  const BiasWalk walk(bias, layout);
  // In exact mode v is recomputed by the second pass rather than stored.
  ema_schedule(
      state, config, n, clip_count, [&](EmaPass pass, bool quantizes, const RangeParams& range) {
        const BiasWorkers& workers = pass == EmaPass::observe ? kReluMinMax
                                     : pass == EmaPass::quantize
                                         ? (quantizes ? kReluRange : kReluIdentity)
                                         : (quantizes ? kReluRangeMinMax : kReluIdentityMinMax);
        return parallel_totals(n, [&](int64_t begin, int64_t end, Totals& mine) {
          Span s;
          s.x = x;
          s.y = y;
          s.totals = &mine;
          s.range = range;
          s.plane0 = mask;
          walk.run(begin, end, s, workers);
        });
      });
}

void lsq_forward(const float* x, float* y, const ChannelLayout& layout, const float* scale,
                 LsqQuant quant, ClipCount* clip_count) {
  detail::check_lsq_forward(x, y, layout, scale, quant);
  const int64_t n = layout.size();
  if (n == 0) return;
  const Totals totals = parallel_totals(n, [&](int64_t begin, int64_t end, Totals& mine) {
    Span s;
    s.x = x;
    s.y = y;
    s.totals = &mine;
    for_each_run(layout, begin, end, [&](int64_t c, int64_t b, int64_t e) {
      s.begin = b;
      s.end = e;
      s.lsq = make_lsq(scale[c], quant.qmin, quant.qmax);
      lsq(s);
    });
  });
  add_clips(clip_count, n, totals);
}

void quant_delay_identity(const float* x, float* y, std::int64_t n, const std::int64_t* step,
                          std::int64_t quant_delay, std::uint32_t* mask) {
  detail::check_quant_delay_identity(x, y, n, step, quant_delay);
  if (*step >= quant_delay) return;
  parallel_totals(n, [&](int64_t begin, int64_t end, Totals& mine) {
    Span s;
    s.x = x;
    s.y = y;
    s.begin = begin;
    s.end = end;
    s.totals = &mine;
    s.plane0 = mask;
    identity<float>(s);
  });
}

void bias_activation(const float* x, const float* bias, const ChannelLayout& layout, bool relu,
                     float* y) {
  detail::check_bias_activation(x, layout, y);
  const int64_t n = layout.size();
  if (n == 0) return;
  const BiasWalk walk(bias, layout);
  parallel_totals(n, [&](int64_t begin, int64_t end, Totals& mine) {
    Span s;
    s.x = x;
    s.y = y;
    s.totals = &mine;
    s.relu = relu;
    walk.run(begin, end, s, kActivation);
  });
}

void add(const float* a, const float* b, std::int64_t n, float* y) {
  detail::check_add(a, b, n, y);
  parallel_words(n, [&](int64_t begin, int64_t end) { add_span(a, b, y, begin, end); });
}

}  // namespace lowbit::cpu
