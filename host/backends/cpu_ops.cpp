// Convolution as im2col + GEMM (col2im for dx), fully connected layers as
// GEMMs (cpu_gemm.hpp), and max pooling (2x2/2 here, other windows
// lowbit::ref's; a share of the planes per thread), on host pointers with
// OpenMP.
#include "backends/cpu_ops.hpp"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <initializer_list>
#include <new>
#include <string>
#include <vector>

#include "backends/cpu_gemm.hpp"
#include "backends/cpu_parallel.hpp"
#include "lowbit/error.hpp"
#include "lowbit/integer_element.hpp"
#include "lowbit/nn_element.hpp"
#include "lowbit/ref.hpp"

namespace lowbit::cpu {
namespace {

using std::int64_t;

// Batch sums of weight gradients go through min(kMaxPartials, ⌈N /
// kImagesPerPartial⌉) partials, each over consecutive images (several, so
// that one dot product runs over many pixels). The count depends only on the
// batch, so the order of the sum does not depend on the thread count.
constexpr int64_t kMaxPartials = 64;
constexpr int64_t kImagesPerPartial = 4;

std::string describe(const Conv2dShape& s) {
  return "conv2d [N=" + std::to_string(s.batch) + " C=" + std::to_string(s.in_channels) +
         " H=" + std::to_string(s.height) + " W=" + std::to_string(s.width) +
         "] K=" + std::to_string(s.out_channels) + " kernel=" + std::to_string(s.kernel) +
         " stride=" + std::to_string(s.stride) + " padding=" + std::to_string(s.padding);
}

void check_shape(const Conv2dShape& s) {
  LOWBIT_EXPECTS(s.batch >= 0 && s.in_channels > 0 && s.height > 0 && s.width > 0 &&
                     s.out_channels > 0 && s.kernel > 0 && s.stride > 0 && s.padding >= 0,
                 describe(s) + ": sizes must be positive (batch and padding >= 0)");
  LOWBIT_EXPECTS(s.height + 2 * s.padding >= s.kernel && s.width + 2 * s.padding >= s.kernel,
                 describe(s) + ": the kernel is larger than the padded input");
}

void check_shape(const Pool2dShape& s) {
  LOWBIT_EXPECTS(s.batch >= 0 && s.channels > 0 && s.kernel > 0 && s.stride > 0 &&
                     s.height >= s.kernel && s.width >= s.kernel,
                 "max_pool [N=" + std::to_string(s.batch) + " C=" + std::to_string(s.channels) +
                     " H=" + std::to_string(s.height) + " W=" + std::to_string(s.width) +
                     "] kernel=" + std::to_string(s.kernel) +
                     " stride=" + std::to_string(s.stride) + ": bad shape");
}

void check_shape(const LinearShape& s) {
  LOWBIT_EXPECTS(s.batch >= 0 && s.in_features > 0 && s.out_features > 0,
                 "linear [" + std::to_string(s.batch) + ", " + std::to_string(s.in_features) +
                     "] -> " + std::to_string(s.out_features) + ": bad shape");
}

void check_pointers(const char* op, std::initializer_list<const void*> pointers) {
  for (const void* p : pointers) LOWBIT_EXPECTS(p != nullptr, std::string(op) + ": null pointer");
}

// dst[0, n) = src[0, n) for the short rows of im2col in fixed-size moves (a
// loop of single floats would become a library call).
void copy_short(const float* __restrict__ src, float* __restrict__ dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) std::memcpy(dst + i, src + i, 8 * sizeof(float));
  for (const int64_t part : {4, 2, 1})
    if (n - i >= part) {
      std::memcpy(dst + i, src + i, static_cast<std::size_t>(part) * sizeof(float));
      i += part;
    }
}

// Planes of one image with `padding` zeros around them, [C, H + 2p, W + 2p]:
// im2col and col2im then need no bounds.
int64_t padded_size(const Conv2dShape& s) {
  return s.in_channels * (s.height + 2 * s.padding) * (s.width + 2 * s.padding);
}

// x (one image) as padded planes: x itself without padding, else a copy into
// `padded`.
const float* pad_image(const Conv2dShape& s, const float* x, float* padded) {
  if (s.padding == 0) return x;
  const int64_t wp = s.width + 2 * s.padding;
  std::fill(padded, padded + padded_size(s), 0.0f);
  for (int64_t c = 0; c < s.in_channels; ++c)
    for (int64_t iy = 0; iy < s.height; ++iy)
      copy_short(x + (c * s.height + iy) * s.width,
                 padded + (c * (s.height + 2 * s.padding) + iy + s.padding) * wp + s.padding,
                 s.width);
  return padded;
}

// col[(c·R + r)·S + q, oy·OW + ox] = xp[c, oy·stride + r, ox·stride + q] for
// one image's padded planes xp; rows `ld` apart.
void im2col(const Conv2dShape& s, const float* xp, float* col, int64_t ld) {
  const int64_t oh = s.out_height(), ow = s.out_width(), k = s.kernel;
  const int64_t hp = s.height + 2 * s.padding, wp = s.width + 2 * s.padding;
  for (int64_t c = 0; c < s.in_channels; ++c)
    for (int64_t r = 0; r < k; ++r)
      for (int64_t q = 0; q < k; ++q) {
        float* row = col + ((c * k + r) * k + q) * ld;
        const float* in = xp + (c * hp + r) * wp + q;
        for (int64_t oy = 0; oy < oh; ++oy) {
          const float* src = in + oy * s.stride * wp;
          float* dst = row + oy * ow;
          if (s.stride == 1)
            copy_short(src, dst, ow);
          else
            for (int64_t ox = 0; ox < ow; ++ox) dst[ox] = src[ox * s.stride];
        }
      }
}

// The adjoint of im2col for one image: dx = Σ of the columns over the input
// elements they read, summed over (r, q) in row-major order. With padding the
// sums go to padded planes (`padded`) and their inside is copied to dx.
void col2im(const Conv2dShape& s, const float* col, float* padded, float* dx) {
  const int64_t oh = s.out_height(), ow = s.out_width(), k = s.kernel;
  const int64_t hp = s.height + 2 * s.padding, wp = s.width + 2 * s.padding;
  float* sums = s.padding == 0 ? dx : padded;
  std::fill(sums, sums + padded_size(s), 0.0f);
  for (int64_t c = 0; c < s.in_channels; ++c)
    for (int64_t r = 0; r < k; ++r)
      for (int64_t q = 0; q < k; ++q) {
        const float* row = col + ((c * k + r) * k + q) * oh * ow;
        float* out = sums + (c * hp + r) * wp + q;
        for (int64_t oy = 0; oy < oh; ++oy) {
          float* __restrict__ dst = out + oy * s.stride * wp;
          const float* __restrict__ src = row + oy * ow;
          if (s.stride == 1)  // vectorised
            for (int64_t ox = 0; ox < ow; ++ox) dst[ox] += src[ox];
          else
            for (int64_t ox = 0; ox < ow; ++ox) dst[ox * s.stride] += src[ox];
        }
      }
  if (s.padding == 0) return;
  for (int64_t c = 0; c < s.in_channels; ++c)
    for (int64_t iy = 0; iy < s.height; ++iy)
      copy_short(padded + (c * hp + iy + s.padding) * wp + s.padding,
                 dx + (c * s.height + iy) * s.width, s.width);
}

// A 1×1 kernel with stride 1 and no padding reads each image as its own
// column matrix [C, H·W].
bool columns_are_input(const Conv2dShape& s) {
  return s.kernel == 1 && s.stride == 1 && s.padding == 0;
}

// `count` planes of s's size as one pooling shape: the planes (images ×
// channels) pool independently, so threads can take a share each.
Pool2dShape planes(const Pool2dShape& s, int64_t count) {
  Pool2dShape share = s;
  share.batch = count;
  share.channels = 1;
  return share;
}

// LeNet's 2×2 windows 2 apart by ref::max_pool_*'s rule (replaces_max),
// with the same bits, four windows at a time in SSE vectors (the baseline
// instruction set). The windows do not overlap, so the backward writes each
// dx once: dy at the window's first maximum (as +0 + dy, the reference's
// sum), +0 elsewhere and in an odd last row or column, which no window reads.
typedef float v4f __attribute__((vector_size(16)));
typedef std::int32_t v4i __attribute__((vector_size(16)));

// The first maxima of four windows side by side (top[0, 8) over bottom[0, 8))
// and their positions in the window (0..3, row-major).
void first_max4(const float* top, const float* bottom, v4f& best, v4i& at) {
  v4f t0, t1, b0, b1;  // named, not arrays: arrays went through the stack
  std::memcpy(&t0, top, sizeof t0);
  std::memcpy(&t1, top + 4, sizeof t1);
  std::memcpy(&b0, bottom, sizeof b0);
  std::memcpy(&b1, bottom + 4, sizeof b1);
  const v4i even = {0, 2, 4, 6}, odd = {1, 3, 5, 7};
  const v4f window[4] = {__builtin_shuffle(t0, t1, even), __builtin_shuffle(t0, t1, odd),
                         __builtin_shuffle(b0, b1, even), __builtin_shuffle(b0, b1, odd)};
  best = window[0];
  at = v4i{};
  for (int i = 1; i < 4; ++i) {
    const v4i take = ~(window[i] <= best) & (best == best);  // replaces_max
    best = take ? window[i] : best;
    at = take ? v4i{i, i, i, i} : at;
  }
}

// The same for one window.
float first_max(const float* top, const float* bottom, int& at) {
  const float window[4] = {top[0], top[1], bottom[0], bottom[1]};
  float best = window[0];
  at = 0;
  for (int i = 1; i < 4; ++i) {
    const bool take = replaces_max(window[i], best);  // selects: random data mispredicts
    best = take ? window[i] : best;
    at = take ? i : at;
  }
  return best;
}

void max_pool_2x2_forward(const Pool2dShape& s, int64_t planes, const float* x, float* y) {
  const int64_t oh = s.out_height(), ow = s.out_width(), width = s.width;
  for (int64_t plane = 0; plane < planes; ++plane)
    for (int64_t oy = 0; oy < oh; ++oy) {
      const float* top = x + (plane * s.height + 2 * oy) * width;
      const float* bottom = top + width;
      float* out = y + (plane * oh + oy) * ow;
      if (ow < 4) {
        int at;
        for (int64_t ox = 0; ox < ow; ++ox) out[ox] = first_max(top + 2 * ox, bottom + 2 * ox, at);
        continue;
      }
      for (int64_t next = 0; next < ow; next += 4) {
        const int64_t ox = std::min(next, ow - 4);  // the last four again, not a scalar tail
        v4f best;
        v4i at;
        first_max4(top + 2 * ox, bottom + 2 * ox, best, at);
        std::memcpy(out + ox, &best, sizeof best);
      }
    }
}

void max_pool_2x2_backward(const Pool2dShape& s, int64_t planes, const float* x, const float* dy,
                           float* dx) {
  const int64_t oh = s.out_height(), ow = s.out_width(), width = s.width;
  for (int64_t plane = 0; plane < planes; ++plane) {
    for (int64_t oy = 0; oy < oh; ++oy) {
      const int64_t row = (plane * s.height + 2 * oy) * width;
      const float* top = x + row;
      const float* bottom = top + width;
      const float* grad = dy + (plane * oh + oy) * ow;
      float* dx_top = dx + row;
      float* dx_bottom = dx_top + width;
      if (ow < 4)
        for (int64_t ox = 0; ox < ow; ++ox) {
          int at;
          first_max(top + 2 * ox, bottom + 2 * ox, at);
          float* window[4] = {dx_top + 2 * ox, dx_top + 2 * ox + 1, dx_bottom + 2 * ox,
                              dx_bottom + 2 * ox + 1};
          for (int i = 0; i < 4; ++i) *window[i] = i == at ? 0.0f + grad[ox] : 0.0f;
        }
      else
        for (int64_t next = 0; next < ow; next += 4) {
          const int64_t ox = std::min(next, ow - 4);  // the last four again, not a scalar tail
          v4f best, g;
          v4i at;
          first_max4(top + 2 * ox, bottom + 2 * ox, best, at);
          std::memcpy(&g, grad + ox, sizeof g);
          g = 0.0f + g;
          // Each window's four gradients, then interleaved back into rows.
          v4f to[4];
          for (int i = 0; i < 4; ++i) to[i] = at == v4i{i, i, i, i} ? g : v4f{};
          const v4i lo = {0, 4, 1, 5}, hi = {2, 6, 3, 7};
          const v4f out[4] = {
              __builtin_shuffle(to[0], to[1], lo), __builtin_shuffle(to[0], to[1], hi),
              __builtin_shuffle(to[2], to[3], lo), __builtin_shuffle(to[2], to[3], hi)};
          std::memcpy(dx_top + 2 * ox, &out[0], sizeof(v4f));
          std::memcpy(dx_top + 2 * ox + 4, &out[1], sizeof(v4f));
          std::memcpy(dx_bottom + 2 * ox, &out[2], sizeof(v4f));
          std::memcpy(dx_bottom + 2 * ox + 4, &out[3], sizeof(v4f));
        }
      if (width % 2 != 0) dx_top[width - 1] = dx_bottom[width - 1] = 0.0f;
    }
    if (s.height % 2 != 0) {
      float* last = dx + (plane * s.height + s.height - 1) * width;
      std::fill(last, last + width, 0.0f);
    }
  }
}

// `buffer` with at least `count` elements, grown (never shrunk) as needed.
template <class T>
T* grow(std::vector<T>& buffer, std::size_t count) {
  if (buffer.size() < count) {
    try {
      buffer.clear();
      buffer.resize(count);
    } catch (const std::bad_alloc&) {
      LOWBIT_EXPECTS(
          false, "cpu scratch: cannot allocate " + std::to_string(count * sizeof(T)) + " bytes");
    }
  }
  return buffer.data();
}

}  // namespace

float* Scratch::reserve(Slot slot, std::size_t floats) { return grow(buffers_[slot], floats); }

std::int64_t* Scratch::reserve_offsets(std::size_t count) { return grow(offsets_, count); }

void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, float* y,
                    Scratch& scratch) {
  check_shape(s);
  if (s.batch == 0) return;
  check_pointers("conv2d_forward", {x, w, y});
  const int64_t crs = s.in_channels * s.kernel * s.kernel;
  const int64_t oh = s.out_height(), ow = s.out_width(), pixels = oh * ow;
  const int64_t image = s.in_channels * s.height * s.width;
  const int64_t k_out = s.out_channels;
  const int64_t hp = s.height + 2 * s.padding, wp = s.width + 2 * s.padding;
  const bool direct = columns_are_input(s), in_place = !direct && s.stride == 1;
  // In place (stride 1), each output row spans the padded width wp, its last
  // wp - ow columns discarded: im2col row (c, r, q) is then the padded planes
  // from (c, r, q) on, read where they are. The last row stops at ow, so no
  // read passes the planes.
  const int64_t wide = (oh - 1) * wp + ow;
  const auto per_thread = [&](Scratch::Slot slot, int64_t floats) {
    return scratch.reserve(
        slot, static_cast<std::size_t>(omp_get_max_threads()) * static_cast<std::size_t>(floats));
  };
  const int64_t columns_size = in_place ? k_out * wide : crs * pixels;
  float* columns = direct ? nullptr : per_thread(Scratch::columns, columns_size);
  float* padded = direct ? nullptr : per_thread(Scratch::padded, padded_size(s));
  std::int64_t* offsets =
      in_place ? scratch.reserve_offsets(static_cast<std::size_t>(crs)) : nullptr;
  if (in_place)
    for (int64_t c = 0; c < s.in_channels; ++c)
      for (int64_t r = 0; r < s.kernel; ++r)
        for (int64_t q = 0; q < s.kernel; ++q)
          offsets[(c * s.kernel + r) * s.kernel + q] = (c * hp + r) * wp + q;
  // wt [CRS, K]: gemm_nn reads a transposed A in place (any other A it packs
  // per call, so per image).
  float* wt = scratch.reserve(Scratch::weights, static_cast<std::size_t>(crs * k_out));
  for (int64_t o = 0; o < k_out; ++o)
    for (int64_t t = 0; t < crs; ++t) wt[t * k_out + o] = w[o * crs + t];
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < s.batch; ++n) {
    const float* x_n = x + n * image;
    float* y_n = y + n * k_out * pixels;
    const int64_t thread = omp_get_thread_num();
    if (direct) {
      // y_n [K, P] = w [K, C] · x_n [C, P]
      gemm_nn(k_out, pixels, crs, wt, 1, k_out, x_n, pixels, y_n, pixels, false);
      continue;
    }
    const float* xp = pad_image(s, x_n, padded + thread * padded_size(s));
    float* own = columns + thread * columns_size;
    if (in_place) {
      gemm_nn_offsets(k_out, wide, crs, wt, 1, k_out, xp, offsets, own, wide, false);
      for (int64_t o = 0; o < k_out; ++o)
        for (int64_t oy = 0; oy < oh; ++oy)
          copy_short(own + o * wide + oy * wp, y_n + (o * oh + oy) * ow, ow);
      continue;
    }
    im2col(s, xp, own, pixels);
    // y_n [K, P] = w [K, CRS] · col [CRS, P]
    gemm_nn(k_out, pixels, crs, wt, 1, k_out, own, pixels, y_n, pixels, false);
  }
}

void conv2d_backward(const Conv2dShape& s, const float* x, const float* w, const float* dy,
                     float* dx, float* dw, Scratch& scratch) {
  check_shape(s);
  const int64_t crs = s.in_channels * s.kernel * s.kernel;
  const int64_t weights = s.out_channels * crs;
  check_pointers("conv2d_backward", {dw});
  if (s.batch == 0) {
    std::fill(dw, dw + weights, 0.0f);
    return;
  }
  check_pointers("conv2d_backward", {x, w, dy});
  const int64_t pixels = s.out_height() * s.out_width();
  const int64_t image = s.in_channels * s.height * s.width;
  const int64_t k_out = s.out_channels;
  const bool direct = columns_are_input(s);
  const int64_t groups =
      std::min(kMaxPartials, (s.batch + kImagesPerPartial - 1) / kImagesPerPartial);
  // A group's images side by side: columns [CRS, images·P] and dy [K, images·P].
  const int64_t span = (s.batch + groups - 1) / groups * pixels;
  const auto per_thread = [&](Scratch::Slot slot, int64_t floats) {
    return scratch.reserve(
        slot, static_cast<std::size_t>(omp_get_max_threads()) * static_cast<std::size_t>(floats));
  };
  float* columns = per_thread(Scratch::columns, crs * span);
  float* padded = per_thread(Scratch::padded, padded_size(s));
  float* grads = per_thread(Scratch::output_grads, k_out * span);
  float* column_grads =
      dx != nullptr && !direct ? per_thread(Scratch::column_grads, crs * pixels) : nullptr;
  float* partials = scratch.reserve(Scratch::partials, static_cast<std::size_t>(groups * weights));

#pragma omp parallel for schedule(static)
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t first = s.batch * g / groups, last = s.batch * (g + 1) / groups;
    const int64_t thread = omp_get_thread_num();
    const int64_t width = (last - first) * pixels;
    float* col = columns + thread * crs * span;
    float* dy_group = grads + thread * k_out * span;
    for (int64_t n = first; n < last; ++n) {
      const float* dy_n = dy + n * k_out * pixels;
      float* own_padded = padded + thread * padded_size(s);
      im2col(s, pad_image(s, x + n * image, own_padded), col + (n - first) * pixels, width);
      for (int64_t o = 0; o < k_out; ++o)
        std::copy(dy_n + o * pixels, dy_n + (o + 1) * pixels,
                  dy_group + o * width + (n - first) * pixels);
      if (dx == nullptr) continue;
      float* dx_n = dx + n * image;
      // dcol [CRS, P] = w [K, CRS]ᵀ · dy_n [K, P], then summed back onto dx_n.
      float* dcol = direct ? dx_n : column_grads + thread * crs * pixels;
      gemm_nn(crs, pixels, k_out, w, 1, crs, dy_n, pixels, dcol, pixels, false);
      if (!direct) col2im(s, dcol, own_padded, dx_n);
    }
    // partial g [K, CRS] = dy_group [K, images·P] · col [CRS, images·P]ᵀ: one
    // dot product per weight over the group's images and pixels.
    gemm_nt(k_out, crs, width, dy_group, width, col, width, partials + g * weights, crs, false);
  }
  // dw = Σ_g partials[g], in group order.
  parallel_rows(weights, [&](int64_t begin, int64_t end) {
    std::copy(partials + begin, partials + end, dw + begin);
    for (int64_t g = 1; g < groups; ++g) {
      const float* part = partials + g * weights;
      for (int64_t e = begin; e < end; ++e) dw[e] += part[e];
    }
  });
}

void linear_forward(const LinearShape& s, const float* x, const float* w, float* y) {
  check_shape(s);
  if (s.batch == 0) return;
  check_pointers("linear_forward", {x, w, y});
  const int64_t in = s.in_features, out = s.out_features;
  parallel_rows(s.batch, [&](int64_t begin, int64_t end) {
    // y [B, O] = x [B, I] · w [O, I]ᵀ
    gemm_nt(end - begin, out, in, x + begin * in, in, w, in, y + begin * out, out, false);
  });
}

void linear_backward(const LinearShape& s, const float* x, const float* w, const float* dy,
                     float* dx, float* dw) {
  check_shape(s);
  const int64_t in = s.in_features, out = s.out_features;
  check_pointers("linear_backward", {dw});
  if (s.batch == 0) {
    std::fill(dw, dw + out * in, 0.0f);
    return;
  }
  check_pointers("linear_backward", {x, w, dy});
  if (dx != nullptr)
    parallel_rows(s.batch, [&](int64_t begin, int64_t end) {
      // dx [B, I] = dy [B, O] · w [O, I]
      gemm_nn(end - begin, in, out, dy + begin * out, out, 1, w, in, dx + begin * in, in, false);
    });
  parallel_rows(out, [&](int64_t begin, int64_t end) {
    // dw [O, I] = dy [B, O]ᵀ · x [B, I], summed over the batch in order.
    gemm_nn(end - begin, in, s.batch, dy + begin, 1, out, x, in, dw + begin * in, in, false);
  });
}

void max_pool_forward(const Pool2dShape& s, const float* x, float* y) {
  check_shape(s);
  if (s.batch == 0) return;
  check_pointers("max_pool_forward", {x, y});
  const int64_t in_plane = s.height * s.width, out_plane = s.out_height() * s.out_width();
  parallel_rows(s.batch * s.channels, [&](int64_t begin, int64_t end) {
    if (s.kernel == 2 && s.stride == 2)
      max_pool_2x2_forward(s, end - begin, x + begin * in_plane, y + begin * out_plane);
    else
      ref::max_pool_forward(planes(s, end - begin), x + begin * in_plane, y + begin * out_plane);
  });
}

void max_pool_backward(const Pool2dShape& s, const float* x, const float* dy, float* dx) {
  check_shape(s);
  if (s.batch == 0) return;
  check_pointers("max_pool_backward", {x, dy, dx});
  const int64_t in_plane = s.height * s.width, out_plane = s.out_height() * s.out_width();
  parallel_rows(s.batch * s.channels, [&](int64_t begin, int64_t end) {
    if (s.kernel == 2 && s.stride == 2)
      max_pool_2x2_backward(s, end - begin, x + begin * in_plane, dy + begin * out_plane,
                            dx + begin * in_plane);
    else
      ref::max_pool_backward(planes(s, end - begin), x + begin * in_plane, dy + begin * out_plane,
                             dx + begin * in_plane);
  });
}

void integer_conv2d(const Conv2dShape& s, const std::uint8_t* x, std::int32_t x_zero_point,
                    int x_fraction_bits, const std::uint8_t* w, const std::int32_t* w_zero_point,
                    const std::int32_t* bias, int accumulator_shift, const Requantization& r,
                    std::uint8_t* y) {
  // The reference validates everything but x and y on an empty batch.
  Conv2dShape none = s;
  none.batch = 0;
  ref::integer_conv2d(none, nullptr, x_zero_point, x_fraction_bits, w, w_zero_point, bias,
                      accumulator_shift, r, nullptr);
  if (s.batch == 0) return;
  check_pointers("integer_conv2d", {x, y});
  const int64_t taps = s.in_channels * s.kernel * s.kernel;
  const int64_t oh = s.out_height(), ow = s.out_width();
  std::vector<std::int32_t> centred(static_cast<std::size_t>(s.out_channels * taps));
  for (int64_t k = 0; k < s.out_channels; ++k)
    for (int64_t t = 0; t < taps; ++t)
      centred[k * taps + t] = std::int32_t{w[k * taps + t]} - w_zero_point[k];
  // Rows of centred inputs, one per tap, columns the outputs a weight meets:
  // each example's positions, or for a Linear (1×1 on [N, F, 1, 1]) the
  // examples of the share. The sums are exact integers, so this order gives
  // the reference's codes.
  const bool linear = s.kernel == 1 && s.height == 1 && s.width == 1;
  parallel_rows(s.batch, [&](int64_t begin, int64_t end) {
    const int64_t blocks = linear ? 1 : end - begin;
    const int64_t columns = linear ? end - begin : oh * ow;
    // Each thread's columns, kept between calls: allocated per call, they
    // could come fresh from the kernel each time (page faults and zeroing:
    // a quarter of the time, depending on what the allocator saw before).
    thread_local std::vector<std::int32_t> cols, sums;
    cols.resize(static_cast<std::size_t>(taps * columns));
    sums.resize(static_cast<std::size_t>(columns));
    for (int64_t block = 0; block < blocks; ++block) {
      for (int64_t t = 0; t < taps; ++t) {
        const int64_t c = t / (s.kernel * s.kernel), ky = t / s.kernel % s.kernel,
                      kx = t % s.kernel;
        std::int32_t* row = cols.data() + t * columns;
        const auto centre = [&](std::uint8_t code) {
          return (std::int32_t{code} << x_fraction_bits) - x_zero_point;
        };
        if (linear) {
          for (int64_t col = 0; col < columns; ++col)
            row[col] = centre(x[(begin + col) * s.in_channels + c]);
          continue;
        }
        const std::uint8_t* plane = x + ((begin + block) * s.in_channels + c) * s.height * s.width;
        for (int64_t oy = 0; oy < oh; ++oy) {
          const int64_t iy = oy * s.stride - s.padding + ky;
          for (int64_t ox = 0; ox < ow; ++ox) {
            const int64_t ix = ox * s.stride - s.padding + kx;
            const bool inside = iy >= 0 && iy < s.height && ix >= 0 && ix < s.width;
            row[oy * ow + ox] = inside ? centre(plane[iy * s.width + ix]) : 0;
          }
        }
      }
      for (int64_t k = 0; k < s.out_channels; ++k) {
        std::fill(sums.begin(), sums.end(), 0);
        for (int64_t t = 0; t < taps; ++t) {
          const std::int32_t weight = centred[k * taps + t];
          const std::int32_t* row = cols.data() + t * columns;
          for (int64_t col = 0; col < columns; ++col) sums[col] += weight * row[col];
        }
        for (int64_t col = 0; col < columns; ++col) {
          const int64_t n = linear ? begin + col : begin + block;
          const int64_t at =
              linear ? n * s.out_channels + k : (n * s.out_channels + k) * oh * ow + col;
          y[at] = static_cast<std::uint8_t>(
              requantize(accumulate(sums[col], accumulator_shift, bias[k]), r, k));
        }
      }
    }
  });
}

}  // namespace lowbit::cpu
