// cuda_simt.hpp — compile CUDA kernel sources (.cu) as plain C++ and run them
// on the CPU. Every CUDA thread is a fiber (Boost.Context); a block's fibers
// run on one OS thread, warp by warp, handing over to each other at every
// warp collective and __syncthreads; blocks run one after another.
//
// Use: force-include this header (-include simt/cuda_simt.hpp) into .cu files
// whose launches were rewritten by rewrite_launches.cmake, and link
// runtime.cpp (which also provides the CUDA runtime API subset) instead of
// libcudart. tests/simt/README.md describes the design and its limits.
#pragma once

// The toolkit's host headers: types, enums, dim3/uint3, API declarations.
#include <cuda_runtime_api.h>

#include <boost/context/detail/fcontext.hpp>
#if defined(SIMT_RACE_CHECK)
#include <sanitizer/tsan_interface.h>
extern "C" void __tsan_ignore_thread_begin();
extern "C" void __tsan_ignore_thread_end();
#endif
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// ---------------------------------------------------------------------------
// Qualifiers (crt/host_defines.h already maps __device__, __global__, ... to
// nothing for a host compiler)
#undef __shared__
#define __shared__ static thread_local  // one copy per worker OS thread = per running block
#define __launch_bounds__(...)
#ifndef __noinline__
#define __noinline__ __attribute__((noinline))
#endif
#define __ldg(p) (*(p))

#define SIMT_TLS __attribute__((tls_model("initial-exec")))
#define SIMT_INLINE inline __attribute__((always_inline))

namespace simt {

struct Site {
  const char* file;
  int line;
};
#define SIMT_SITE (::simt::Site{__FILE__, __LINE__})

// ---------------------------------------------------------------------------
// Scheduler state (runtime in runtime.cpp; the hot paths are inline so that
// a fiber resumes straight into kernel code)

namespace detail {

namespace bc = boost::context::detail;

// The race-check build (SIMT_RACE_CHECK: kernels under ThreadSanitizer, the
// runtime not) makes every CUDA thread a TSan fiber, and switching between
// fibers implies no ordering: only what orders CUDA threads on the GPU does
// (__syncthreads, warp collectives, fences, atomics, and the start and end of
// a block), so a missing barrier between two threads' accesses to shared
// memory is reported as a data race. The emulator's own bookkeeping, which
// every fiber touches, is hidden from TSan (BookkeepingOnly).
#if defined(SIMT_RACE_CHECK)
SIMT_INLINE void ordered_before(void* sync) { __tsan_release(sync); }
SIMT_INLINE void ordered_after(void* sync) { __tsan_acquire(sync); }
#else
SIMT_INLINE void ordered_before(void*) {}
SIMT_INLINE void ordered_after(void*) {}
#endif

// Coordinates of the running CUDA thread (set by the scheduler).
inline thread_local SIMT_TLS uint3 thread_idx;
inline thread_local SIMT_TLS uint3 block_idx;
inline thread_local SIMT_TLS dim3 block_dim;
inline thread_local SIMT_TLS dim3 grid_dim;

enum class WarpOp : std::uint8_t { ballot, any, all, shfl_idx, shfl_up, shfl_down, shfl_xor, syncwarp };
enum class Order : std::uint8_t { forward, reverse, random };

struct Lane {
  bc::fcontext_t ctx = nullptr;
  void* tsan_fiber = nullptr;         // race-check build only
  int bookkeeping = 0;                // open BookkeepingOnly scopes (race check)
  const void* stack_bottom = nullptr;  // for AddressSanitizer's fiber switches
  std::size_t stack_size = 0;
  uint3 idx{};
  unsigned linear = 0;
  enum class State : std::uint8_t { runnable, at_warp_op, at_barrier, done } state = State::runnable;
  Site site{};
  std::uint64_t result = 0;
};

struct WarpSlot {
  unsigned arrived = 0;     // lanes that reached the pending collective
  unsigned mask = 0;        // its mask
  unsigned ready = 0;       // lanes that can run (not the running one)
  unsigned at_barrier = 0;  // lanes waiting in __syncthreads
  unsigned existing = 0;    // lanes of this warp that exist (partial last warp)
  WarpOp op = WarpOp::syncwarp;
  int width = 32;
  Site site{};
  unsigned generation = 0;  // collectives completed; the sync objects alternate
  char sync[2];
  std::uint64_t value[32];
  int arg[32];
};

struct Block {
  const std::function<void()>* body = nullptr;
  std::vector<Lane> lanes;
  std::vector<WarpSlot> warps;
  std::vector<unsigned> warp_order;
  unsigned n = 0;
  unsigned exited = 0;
  unsigned barrier_arrived = 0;
  Site barrier_site{};
  unsigned barrier_generation = 0;  // barriers completed; the sync objects alternate
  char barrier_sync[2];
  char start_sync, end_sync;  // the block's start and end, for the race check
  bc::fcontext_t scheduler = nullptr;
  void* tsan_scheduler = nullptr;
  const void* scheduler_stack_bottom = nullptr;
  std::size_t scheduler_stack_size = 0;
  Lane* current = nullptr;
  Order order = Order::forward;
  std::uint64_t rng = 0x9e3779b97f4a7c15ull;
  bool failed = false;
  long switches = 0, warp_ops = 0, barriers = 0;
};

inline thread_local SIMT_TLS Block* t_block = nullptr;

/// A scope of the emulator's own bookkeeping, hidden from the race check.
/// (A lane that fails inside one never closes it: fail() does.)
struct BookkeepingOnly {
#if defined(SIMT_RACE_CHECK)
  Lane* lane;
  BookkeepingOnly() {
    __tsan_ignore_thread_begin();
    lane = t_block->current;
    ++lane->bookkeeping;
  }
  ~BookkeepingOnly() {
    --lane->bookkeeping;
    __tsan_ignore_thread_end();
  }
#else
  BookkeepingOnly() {}  // user-provided: a guard object, not an unused variable
#endif
};
inline Lane dead_lane;  // "from" marker of a jump out of a fiber that will not resume

// Error reports (out of line, never return to the caller).
[[noreturn]] void fail_mask(Block& b, Site site, WarpOp op, unsigned mask);
[[noreturn]] void fail_width(Block& b, Site site, WarpOp op, int width);
[[noreturn]] void fail_diverged(Block& b, Site site, WarpOp op, unsigned mask, int width);
[[noreturn]] void fail_source(Block& b, Site site, WarpOp op, unsigned lane, unsigned src);
[[noreturn]] void fail_barrier(Block& b, Site site);

inline std::uint64_t next_random(Block& b) {
  b.rng ^= b.rng << 13;
  b.rng ^= b.rng >> 7;
  b.rng ^= b.rng << 17;
  return b.rng;
}

/// Continues `to`, or the scheduler if it is null, passing `marker` (the
/// lane being left, or dead_lane if it never resumes).
SIMT_INLINE bc::transfer_t jump(Block& b, Lane* to, Lane* marker) {
  const bc::fcontext_t context = to != nullptr ? to->ctx : b.scheduler;
#if defined(__SANITIZE_ADDRESS__)
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(marker == &dead_lane ? nullptr : &fake_stack,
                                 to != nullptr ? to->stack_bottom : b.scheduler_stack_bottom,
                                 to != nullptr ? to->stack_size : b.scheduler_stack_size);
#endif
#if defined(SIMT_RACE_CHECK)
  // Last before the jump: from here on TSan counts accesses to `to`.
  __tsan_switch_to_fiber(to != nullptr ? to->tsan_fiber : b.tsan_scheduler,
                         __tsan_switch_to_fiber_no_sync);
#endif
  const bc::transfer_t t = bc::jump_fcontext(context, marker);
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#endif
  return t;
}

/// In the context just resumed: remember the context that jumped here.
SIMT_INLINE void arrived_from(Block& b, const bc::transfer_t& t) {
  Lane* from = static_cast<Lane*>(t.data);
  if (from == nullptr)
    b.scheduler = t.fctx;
  else if (from != &dead_lane)
    from->ctx = t.fctx;
}

/// The next lane of `warp` to run after `lane` (forward: the next ready one
/// in lane order; reverse: the previous; random: any), or -1.
SIMT_INLINE int next_ready(Block& b, unsigned warp, unsigned lane) {
  const unsigned ready = b.warps[warp].ready;
  if (ready == 0) return -1;
  if (b.order == Order::forward) {
    const unsigned rot = lane == 31 ? ready : (ready >> (lane + 1)) | (ready << (31 - lane));
    return static_cast<int>((lane + 1 + static_cast<unsigned>(__builtin_ctz(rot))) & 31u);
  }
  if (b.order == Order::reverse) {
    const unsigned below = ready & ((1u << lane) - 1u);
    return 31 - __builtin_clz(below != 0 ? below : ready);
  }
  int pick = static_cast<int>(next_random(b) % static_cast<unsigned>(__builtin_popcount(ready)));
  unsigned r = ready;
  while (pick-- > 0) r &= r - 1;
  return __builtin_ctz(r);
}

/// Leaves the running lane `me` (already marked waiting or done) for the next
/// ready lane of its warp, or for the scheduler; returns when `me` resumes.
SIMT_INLINE void switch_away(Block& b, Lane& me, Lane* marker) {
  const unsigned warp = me.linear >> 5;
  const int next = next_ready(b, warp, me.linear & 31);
  ++b.switches;
  bc::transfer_t t;
  if (next >= 0) {
    Lane& to = b.lanes[warp * 32 + static_cast<unsigned>(next)];
    b.warps[warp].ready &= ~(1u << next);
    b.current = &to;
    t = jump(b, &to, marker);
  } else {
    t = jump(b, nullptr, marker);
  }
  arrived_from(b, t);
  b.current = &me;
  thread_idx = me.idx;
}

/// A warp collective: suspends until every lane of `mask` has arrived with
/// the same op, mask and width; returns this lane's result. Checks that the
/// calling lane is in the mask, that the mask names existing lanes, that all
/// lanes are in the same collective (convergence) and that shuffles read
/// participating lanes.
SIMT_INLINE std::uint64_t warp_collective(Site site, WarpOp op, unsigned mask,
                                          std::uint64_t value, int arg, int width) {
  const BookkeepingOnly bookkeeping;
  Block& b = *t_block;
  Lane& me = *b.current;
  ++b.warp_ops;
  const unsigned lane = me.linear & 31;
  const unsigned bit = 1u << lane;
  WarpSlot& w = b.warps[me.linear >> 5];
  if (__builtin_expect(!(mask & bit) || (mask & ~w.existing) != 0, 0)) fail_mask(b, site, op, mask);
  if (__builtin_expect(width < 1 || width > 32 || (width & (width - 1)) != 0, 0))
    fail_width(b, site, op, width);
  if (w.arrived == 0) {
    w.op = op;
    w.mask = mask;
    w.site = site;
    w.width = width;
  } else if (__builtin_expect(w.op != op || w.mask != mask || w.width != width, 0)) {
    fail_diverged(b, site, op, mask, width);
  }
  w.value[lane] = value;
  w.arg[lane] = arg;
  w.arrived |= bit;
  char* sync = &w.sync[w.generation & 1];
  ordered_before(sync);
  if (w.arrived != mask) {
    me.state = Lane::State::at_warp_op;
    me.site = site;
    switch_away(b, me, &me);
    ordered_after(sync);
    return me.result;
  }
  // Last lane in: every lane's result, and the others become ready.
  ordered_after(sync);
  Lane* lanes = &b.lanes[me.linear & ~31u];
  w.arrived = 0;
  ++w.generation;
  w.ready |= mask & ~bit;
  if (op == WarpOp::syncwarp) return 0;
  if (op == WarpOp::ballot || op == WarpOp::any || op == WarpOp::all) {
    std::uint64_t vote = 0;
    for (unsigned m = mask; m != 0; m &= m - 1) {
      const unsigned l = static_cast<unsigned>(__builtin_ctz(m));
      vote |= (w.value[l] != 0 ? 1ull : 0ull) << l;
    }
    const std::uint64_t r = op == WarpOp::ballot ? vote
                            : op == WarpOp::any  ? std::uint64_t{vote != 0}
                                                 : std::uint64_t{vote == mask};
    for (unsigned m = mask; m != 0; m &= m - 1) lanes[__builtin_ctz(m)].result = r;
    return r;
  }
  const unsigned wm = static_cast<unsigned>(width - 1);
  for (unsigned m = mask; m != 0; m &= m - 1) {
    const unsigned l = static_cast<unsigned>(__builtin_ctz(m));
    const unsigned seg = l & ~wm;
    const unsigned a = static_cast<unsigned>(w.arg[l]);
    unsigned src = l;
    switch (op) {
      case WarpOp::shfl_idx: src = seg + (a & wm); break;
      case WarpOp::shfl_up: src = (l & wm) >= a ? l - a : l; break;
      case WarpOp::shfl_down: src = (l & wm) + a <= wm ? l + a : l; break;
      case WarpOp::shfl_xor: {
        const unsigned x = l ^ a;  // later segments: own value
        src = x < 32 && (x & ~wm) <= seg ? x : l;
        break;
      }
      default: break;
    }
    if (__builtin_expect(!(mask >> src & 1u), 0)) fail_source(b, site, op, l, src);
    lanes[l].result = w.value[src];
  }
  return me.result;
}

/// __syncthreads: every thread of the block must arrive at the same call site
/// and none may have exited.
SIMT_INLINE void syncthreads(Site site) {
  const BookkeepingOnly bookkeeping;
  Block& b = *t_block;
  Lane& me = *b.current;
  ++b.barriers;
  if (b.barrier_arrived == 0) {
    if (__builtin_expect(b.exited > 0, 0)) fail_barrier(b, site);
    b.barrier_site = site;
  } else if (__builtin_expect(b.barrier_site.line != site.line ||
                                  (b.barrier_site.file != site.file &&
                                   std::strcmp(b.barrier_site.file, site.file) != 0),
                              0)) {
    fail_barrier(b, site);
  }
  char* sync = &b.barrier_sync[b.barrier_generation & 1];
  ordered_before(sync);
  if (++b.barrier_arrived == b.n) {
    b.barrier_arrived = 0;
    ++b.barrier_generation;
    for (WarpSlot& w : b.warps) {
      w.ready |= w.at_barrier;
      w.at_barrier = 0;
    }
    ordered_after(sync);
    return;
  }
  me.state = Lane::State::at_barrier;
  me.site = site;
  b.warps[me.linear >> 5].at_barrier |= 1u << (me.linear & 31);
  switch_away(b, me, &me);
  ordered_after(sync);
}

inline thread_local SIMT_TLS int barrier_count = 0;
inline int syncthreads_count(Site site, int predicate) {
  const BookkeepingOnly bookkeeping;
  Block& b = *t_block;
  if (b.barrier_arrived == 0) barrier_count = 0;
  barrier_count += predicate != 0;
  syncthreads(site);
  const int count = barrier_count;
  syncthreads(site);  // nobody resets the count before everyone has read it
  return count;
}

template <class T>
std::uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of a type > 8 bytes");
  std::uint64_t u = 0;
  std::memcpy(&u, &v, sizeof(T));
  return u;
}
template <class T>
T from_bits(std::uint64_t u) {
  T v;
  std::memcpy(&v, &u, sizeof(T));
  return v;
}

}  // namespace detail

// ---------------------------------------------------------------------------
// Launch

struct config {
  dim3 grid;
  dim3 block;
  std::size_t shared_bytes;
  cudaStream_t stream;
  config(dim3 g, dim3 b, std::size_t s = 0, cudaStream_t st = nullptr)
      : grid(g), block(b), shared_bytes(s), stream(st) {}
};

/// Where a kernel was launched, and which: for error messages and the
/// launch log.
struct launch_site {
  Site site;
  const char* kernel;
};

namespace detail {
/// Validates the configuration (sets the last error on failure) and runs
/// `thread_body` once per CUDA thread, or records the launch while
/// cfg.stream is being captured.
void launch(const config& cfg, const launch_site& at, std::function<void()> thread_body);
}  // namespace detail

/// What a rewritten `kernel<<<cfg>>>(args)` calls:
///   launcher(config(cfg), SIMT_SITE, "kernel", [=](auto&&... p) { kernel(p...); })(args)
template <class F>
struct launcher {
  config cfg;
  launch_site at;
  F kernel;
  launcher(config c, Site site, const char* name, F k)
      : cfg(c), at{site, name}, kernel(std::move(k)) {}
  template <class... A>
  void operator()(A&&... args) const {
    // Arguments are copied once at launch (as into parameter memory); each
    // thread then gets its own by-value copy.
    auto params = std::make_tuple(std::decay_t<A>(std::forward<A>(args))...);
    F k = kernel;
    detail::launch(cfg, at, [k, params]() { std::apply(k, params); });
  }
};
template <class F>
launcher(config, Site, const char*, F) -> launcher<F>;

/// Library shims (CUB): run `work` in stream order (recorded when capturing).
void enqueue_host_work(cudaStream_t stream, std::function<void()> work);

}  // namespace simt

// ---------------------------------------------------------------------------
// Built-in variables
#define threadIdx (static_cast<const uint3&>(::simt::detail::thread_idx))
#define blockIdx (static_cast<const uint3&>(::simt::detail::block_idx))
#define blockDim (static_cast<const dim3&>(::simt::detail::block_dim))
#define gridDim (static_cast<const dim3&>(::simt::detail::grid_dim))
inline constexpr int warpSize = 32;

// ---------------------------------------------------------------------------
// Synchronisation and warp intrinsics (the macros record the call site)
#define __syncthreads() ::simt::detail::syncthreads(SIMT_SITE)
#define __syncthreads_count(p) ::simt::detail::syncthreads_count(SIMT_SITE, (p))
#define __syncthreads_and(p)                                           \
  (::simt::detail::syncthreads_count(SIMT_SITE, (p) ? 1 : 0) ==       \
   static_cast<int>(blockDim.x * blockDim.y * blockDim.z))
#define __syncthreads_or(p) (::simt::detail::syncthreads_count(SIMT_SITE, (p) ? 1 : 0) != 0)
#define __syncwarp(...) ::simt::detail::syncwarp_at{SIMT_SITE}(__VA_ARGS__)
#define __ballot_sync(mask, pred) ::simt::detail::ballot_(SIMT_SITE, (mask), (pred))
#define __any_sync(mask, pred) ::simt::detail::any_(SIMT_SITE, (mask), (pred))
#define __all_sync(mask, pred) ::simt::detail::all_(SIMT_SITE, (mask), (pred))
#define __shfl_sync(...) ::simt::detail::shfl_(SIMT_SITE, ::simt::detail::WarpOp::shfl_idx, __VA_ARGS__)
#define __shfl_up_sync(...) ::simt::detail::shfl_(SIMT_SITE, ::simt::detail::WarpOp::shfl_up, __VA_ARGS__)
#define __shfl_down_sync(...) ::simt::detail::shfl_(SIMT_SITE, ::simt::detail::WarpOp::shfl_down, __VA_ARGS__)
#define __shfl_xor_sync(...) ::simt::detail::shfl_(SIMT_SITE, ::simt::detail::WarpOp::shfl_xor, __VA_ARGS__)

namespace simt::detail {
struct syncwarp_at {
  Site site;
  SIMT_INLINE void operator()(unsigned mask = 0xffffffffu) const {
    warp_collective(site, WarpOp::syncwarp, mask, 0, 0, 32);
  }
};
SIMT_INLINE unsigned ballot_(Site s, unsigned mask, bool pred) {
  return static_cast<unsigned>(warp_collective(s, WarpOp::ballot, mask, pred ? 1 : 0, 0, 32));
}
SIMT_INLINE int any_(Site s, unsigned mask, bool pred) {
  return static_cast<int>(warp_collective(s, WarpOp::any, mask, pred ? 1 : 0, 0, 32));
}
SIMT_INLINE int all_(Site s, unsigned mask, bool pred) {
  return static_cast<int>(warp_collective(s, WarpOp::all, mask, pred ? 1 : 0, 0, 32));
}
template <class T>
SIMT_INLINE T shfl_(Site s, WarpOp op, unsigned mask, T var, int lane_arg, int width = warpSize) {
  return from_bits<T>(warp_collective(s, op, mask, to_bits(var), lane_arg, width));
}
}  // namespace simt::detail

/// Volta+ has no notion of a converged set the emulator could report: the
/// calling lane alone (what code must be prepared for anyway).
inline unsigned __activemask() { return 1u << (::simt::detail::thread_idx.x & 31); }
// Fences: ThreadSanitizer does not model a fence's ordering, so the race
// check orders every fence after all earlier ones instead (stronger than
// CUDA).
namespace simt::detail {
inline char fence_sync;
inline void fence() {
#if defined(SIMT_RACE_CHECK)
  ordered_before(&fence_sync);
  ordered_after(&fence_sync);
#else
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
}
}  // namespace simt::detail
inline void __threadfence() { ::simt::detail::fence(); }
inline void __threadfence_block() { ::simt::detail::fence(); }
inline void __threadfence_system() { ::simt::detail::fence(); }

// ---------------------------------------------------------------------------
// Atomics (real atomics, so blocks could run on several worker threads)
#define SIMT_ATOMIC_INT_TYPES(X) X(int) X(unsigned int) X(unsigned long long) X(long long)
#define SIMT_DEFINE_ATOMICS(T)                                                              \
  inline T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }     \
  inline T atomicSub(T* p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }     \
  inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }   \
  inline T atomicAnd(T* p, T v) { return __atomic_fetch_and(p, v, __ATOMIC_RELAXED); }     \
  inline T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_RELAXED); }       \
  inline T atomicXor(T* p, T v) { return __atomic_fetch_xor(p, v, __ATOMIC_RELAXED); }     \
  inline T atomicCAS(T* p, T expected, T desired) {                                         \
    __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_RELAXED,             \
                                __ATOMIC_RELAXED);                                          \
    return expected;                                                                        \
  }                                                                                         \
  inline T atomicMax(T* p, T v) {                                                           \
    T old = __atomic_load_n(p, __ATOMIC_RELAXED);                                           \
    while (old < v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED,      \
                                                   __ATOMIC_RELAXED)) {                     \
    }                                                                                       \
    return old;                                                                             \
  }                                                                                         \
  inline T atomicMin(T* p, T v) {                                                           \
    T old = __atomic_load_n(p, __ATOMIC_RELAXED);                                           \
    while (v < old && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED,      \
                                                   __ATOMIC_RELAXED)) {                     \
    }                                                                                       \
    return old;                                                                             \
  }
SIMT_ATOMIC_INT_TYPES(SIMT_DEFINE_ATOMICS)
#undef SIMT_DEFINE_ATOMICS
inline unsigned atomicInc(unsigned* p, unsigned limit) {  // old >= limit ? 0 : old + 1
  unsigned old = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (!__atomic_compare_exchange_n(p, &old, old >= limit ? 0u : old + 1u, true,
                                      __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}
inline unsigned atomicDec(unsigned* p, unsigned limit) {  // old == 0 || old > limit ? limit : old - 1
  unsigned old = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (!__atomic_compare_exchange_n(p, &old, (old == 0u || old > limit) ? limit : old - 1u,
                                      true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}
namespace simt::detail {
template <class T>
T atomic_add_floating(T* p, T v) {
  T old;
  __atomic_load(p, &old, __ATOMIC_RELAXED);
  T next = old + v;
  while (!__atomic_compare_exchange(p, &old, &next, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
    next = old + v;
  return old;
}
}  // namespace simt::detail
inline float atomicAdd(float* p, float v) { return ::simt::detail::atomic_add_floating(p, v); }
inline double atomicAdd(double* p, double v) { return ::simt::detail::atomic_add_floating(p, v); }

// ---------------------------------------------------------------------------
// Bit and type intrinsics
inline unsigned __float_as_uint(float v) { return ::simt::detail::from_bits<unsigned>(::simt::detail::to_bits(v)); }
inline int __float_as_int(float v) { return ::simt::detail::from_bits<int>(::simt::detail::to_bits(v)); }
inline float __uint_as_float(unsigned v) { return ::simt::detail::from_bits<float>(v); }
inline float __int_as_float(int v) { return ::simt::detail::from_bits<float>(static_cast<unsigned>(v)); }
inline long long __double_as_longlong(double v) { return static_cast<long long>(::simt::detail::to_bits(v)); }
inline double __longlong_as_double(long long v) { return ::simt::detail::from_bits<double>(static_cast<std::uint64_t>(v)); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
// Four-way byte dot product plus c (wrapping, as the hardware's).
inline unsigned __dp4a(unsigned a, unsigned b, unsigned c) {
  for (int i = 0; i < 32; i += 8) c += ((a >> i) & 0xffu) * ((b >> i) & 0xffu);
  return c;
}
inline int __dp4a(int a, int b, int c) {
  unsigned sum = static_cast<unsigned>(c);
  for (int i = 0; i < 32; i += 8)
    sum += static_cast<unsigned>(static_cast<int>(static_cast<signed char>(a >> i)) *
                                 static_cast<int>(static_cast<signed char>(b >> i)));
  return static_cast<int>(sum);
}
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
inline unsigned __brev(unsigned x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
  x = ((x >> 8) & 0x00ff00ffu) | ((x & 0x00ff00ffu) << 8);
  return (x >> 16) | (x << 16);
}
inline unsigned __umulhi(unsigned a, unsigned b) { return static_cast<unsigned>((std::uint64_t{a} * b) >> 32); }
// Fast-math intrinsics: host libm / exact division (the GPU's differ in the last ulps).
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __saturatef(float x) { return x != x ? 0.0f : fminf(fmaxf(x, 0.0f), 1.0f); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }

// CUDA's global min/max overloads (the float ones are fminf/fmaxf).
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
template <class A, class B,
          std::enable_if_t<std::is_integral_v<A> && std::is_integral_v<B>, int> = 0>
constexpr std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(b) < static_cast<C>(a) ? static_cast<C>(b) : static_cast<C>(a);
}
template <class A, class B,
          std::enable_if_t<std::is_integral_v<A> && std::is_integral_v<B>, int> = 0>
constexpr std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(a) < static_cast<C>(b) ? static_cast<C>(b) : static_cast<C>(a);
}
