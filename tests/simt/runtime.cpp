// The fiber scheduler behind cuda_simt.hpp, and the subset of the CUDA
// runtime API (libcudart) that the kernels' launchers and the tests use:
// memory, streams (in order, executed eagerly), stream capture and graphs,
// events, device queries, errors. Link this instead of CUDA::cudart.
//
// Environment:
//   SIMT_SM_COUNT=132        multiprocessors reported (shapes grid_for grids)
//   SIMT_THREAD_ORDER=forward|reverse|random  order in which ready threads run
//   SIMT_BLOCK_ORDER=forward|reverse|random   order in which blocks run
//   SIMT_SEED=<n>            seed of the random orders (unset: a fresh one,
//                            printed with the schedule at the first launch)
//   SIMT_MEMORY_MB=4096      device memory reported by cudaMemGetInfo
//   SIMT_POISON=0xA5         byte written into fresh cudaMalloc memory (-1: none)
//   SIMT_LAUNCH_LOG=<file>   write the names of the kernels launched, at exit
//   SIMT_STATS=1             print launch statistics at exit
//   SIMT_WORKERS=1           OS threads running blocks concurrently
#include <boost/context/detail/fcontext.hpp>
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "simt/cuda_simt.hpp"

namespace bc = boost::context::detail;

// Opaque runtime handles (only forward-declared by the CUDA headers).
struct CUgraph_st {
  std::vector<std::function<void()>> nodes;
};
struct CUgraphExec_st {
  std::vector<std::function<void()>> nodes;
};
struct CUstream_st {
  bool capturing = false;
  cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
  CUgraph_st* graph = nullptr;
  bool capture_invalidated = false;
};
struct CUevent_st {
  std::chrono::steady_clock::time_point time{};
  bool recorded = false;
};

namespace simt {
namespace {

// ---------------------------------------------------------------------------
// Settings

long env_long(const char* name, long fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::strtol(v, nullptr, 0) : fallback;
}
using Order = detail::Order;
Order env_order(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr) return Order::forward;
  if (std::strcmp(v, "reverse") == 0) return Order::reverse;
  if (std::strcmp(v, "random") == 0) return Order::random;
  return Order::forward;
}
const char* order_name(Order o) {
  return o == Order::forward ? "forward" : o == Order::reverse ? "reverse" : "random";
}
struct Settings {
  int sm_count = static_cast<int>(env_long("SIMT_SM_COUNT", 132));
  Order thread_order = env_order("SIMT_THREAD_ORDER");
  Order block_order = env_order("SIMT_BLOCK_ORDER");
  unsigned seed = static_cast<unsigned>(env_long("SIMT_SEED", std::random_device{}()));
  std::size_t memory = static_cast<std::size_t>(env_long("SIMT_MEMORY_MB", 4096)) << 20;
  int poison = static_cast<int>(env_long("SIMT_POISON", 0xA5));
  const char* launch_log = std::getenv("SIMT_LAUNCH_LOG");
  bool stats = env_long("SIMT_STATS", 0) != 0;
  int workers = static_cast<int>(env_long("SIMT_WORKERS", 1));

  /// "threads random, blocks random, 2 SMs, seed 7 (SIMT_SEED=7 replays it)".
  std::string schedule() const {
    std::ostringstream o;
    o << "threads " << order_name(thread_order) << ", blocks " << order_name(block_order)
      << ", " << sm_count << " SMs";
    if (thread_order == Order::random || block_order == Order::random)
      o << ", seed " << seed << " (SIMT_SEED=" << seed << " replays it)";
    return o.str();
  }
};
const Settings& settings() {
  static const Settings s;
  return s;
}

/// The kernels launched so far, written to SIMT_LAUNCH_LOG at exit.
struct LaunchLog {
  std::mutex mutex;
  std::string path;
  std::set<std::string> kernels;
  /// Records `name` without namespace and template arguments.
  void add(const char* name) {
    if (settings().launch_log == nullptr) return;
    std::string base(name);
    base = base.substr(0, base.find('<'));
    const std::size_t colon = base.rfind(':');
    if (colon != std::string::npos) base = base.substr(colon + 1);
    std::lock_guard<std::mutex> lock(mutex);
    path = settings().launch_log;
    kernels.insert(base);
  }
  ~LaunchLog() {
    if (path.empty()) return;
    std::ofstream out(path);
    for (const auto& k : kernels) out << k << "\n";
  }
} g_launch_log;

struct Stats {
  std::atomic<long> launches{0}, blocks{0}, threads{0}, switches{0}, warp_ops{0}, barriers{0};
  std::atomic<long> nanos{0};
  ~Stats() {
    if (!settings().stats) return;
    std::fprintf(stderr,
                 "simt: %ld launches, %ld blocks, %ld threads, %ld warp collectives, %ld "
                 "barriers, %ld context switches, %.3f s in kernels\n",
                 launches.load(), blocks.load(), threads.load(), warp_ops.load(), barriers.load(),
                 switches.load(), nanos.load() * 1e-9);
  }
} g_stats;

// ---------------------------------------------------------------------------
// Errors

thread_local cudaError_t t_last_error = cudaSuccess;
thread_local cudaError_t t_message_error = cudaSuccess;  // the error t_last_message explains
thread_local std::string t_last_message;

void set_error(cudaError_t e, const std::string& message = {}) {
  if (t_last_error == cudaSuccess) {
    t_last_error = e;
    t_message_error = e;
    t_last_message = message;
  }
  if (!message.empty()) std::fprintf(stderr, "simt: %s\n", message.c_str());
}

// ---------------------------------------------------------------------------
// Fiber stacks: one mapping per worker thread, a guard page under each stack.

constexpr std::size_t kStackBytes = 64 * 1024;

struct StackPool {
  char* base = nullptr;
  unsigned count = 0;
  std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  void reserve(unsigned n) {
    if (n <= count) return;
    release();
    base = static_cast<char*>(mmap(nullptr, n * kStackBytes, PROT_READ | PROT_WRITE,
                                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
    if (base == MAP_FAILED) {
      std::perror("simt: mmap");
      std::abort();
    }
    for (unsigned i = 0; i < n; ++i) mprotect(base + i * kStackBytes, page, PROT_NONE);
    count = n;
  }
  // Stack tops are staggered ("coloured") so that the live frames of the
  // lanes of a warp do not all map to the same cache sets.
  static std::size_t colour(unsigned i) { return (i * 17u % 64u) * 320u; }
  void* top(unsigned i) const { return base + (i + 1) * kStackBytes - colour(i); }
  std::size_t size(unsigned i) const { return kStackBytes - page - colour(i); }
  void release() {
    if (base != nullptr) munmap(base, count * kStackBytes);
    base = nullptr;
    count = 0;
  }
  ~StackPool() { release(); }
};
thread_local StackPool t_stacks;

// ---------------------------------------------------------------------------
// One block in flight

using detail::Block;
using detail::Lane;
using detail::Order;
using detail::WarpOp;
using detail::WarpSlot;
namespace bc = boost::context::detail;

const char* op_name(WarpOp op) {
  switch (op) {
    case WarpOp::ballot: return "__ballot_sync";
    case WarpOp::any: return "__any_sync";
    case WarpOp::all: return "__all_sync";
    case WarpOp::shfl_idx: return "__shfl_sync";
    case WarpOp::shfl_up: return "__shfl_up_sync";
    case WarpOp::shfl_down: return "__shfl_down_sync";
    case WarpOp::shfl_xor: return "__shfl_xor_sync";
    case WarpOp::syncwarp: return "__syncwarp";
  }
  return "?";
}

thread_local std::string t_block_error;

std::string where(Site s) {
  std::ostringstream o;
  o << (s.file != nullptr ? s.file : "?") << ":" << s.line;
  return o.str();
}
std::string who(const Lane& l) {
  std::ostringstream o;
  o << "thread (" << l.idx.x << "," << l.idx.y << "," << l.idx.z << ") [warp " << (l.linear >> 5)
    << " lane " << (l.linear & 31) << "] of block (" << detail::block_idx.x << ","
    << detail::block_idx.y << "," << detail::block_idx.z << ")";
  return o.str();
}

}  // namespace

namespace detail {

/// Records the first error of the block and leaves the fiber for good.
[[noreturn]] void fail(Block& b, const std::string& message) {
  if (!b.failed) t_block_error = message;
  b.failed = true;
  b.current->state = Lane::State::done;

  detail::jump(b, nullptr, &dead_lane);
  std::abort();  // never resumed
}

void fail_mask(Block& b, Site site, WarpOp op, unsigned mask) {
  Lane& me = *b.current;
  if (!(mask >> (me.linear & 31) & 1u))
    fail(b, who(me) + " calls " + op_name(op) + " at " + where(site) +
                " with a mask that does not name it");
  fail(b, who(me) + ": " + op_name(op) + " at " + where(site) +
              " names lanes beyond the end of its (partial) warp");
}
void fail_width(Block& b, Site site, WarpOp op, int width) {
  fail(b, who(*b.current) + ": " + op_name(op) + " at " + where(site) + " with width " +
              std::to_string(width));
}
void fail_diverged(Block& b, Site site, WarpOp op, unsigned mask, int width) {
  const WarpSlot& w = b.warps[b.current->linear >> 5];
  fail(b, "warp divergence: " + who(*b.current) + " is in " + op_name(op) + " at " +
              where(site) + " while other lanes of its warp are in " + op_name(w.op) + " at " +
              where(w.site) + (w.mask != mask ? " (masks differ)" : "") +
              (w.width != width ? " (widths differ)" : ""));
}
void fail_source(Block& b, Site site, WarpOp op, unsigned lane, unsigned src) {
  const unsigned warp = b.current->linear >> 5;
  fail(b, who(b.lanes[warp * 32 + lane]) + " reads lane " + std::to_string(src) + " in " +
              op_name(op) + " at " + where(site) + ", which is not in the mask");
}
void fail_barrier(Block& b, Site site) {
  if (b.exited > 0)
    fail(b, who(*b.current) + " enters __syncthreads at " + where(site) + " after " +
                std::to_string(b.exited) + " threads of the block exited");
  fail(b, "barrier divergence: " + who(*b.current) + " is in __syncthreads at " + where(site) +
              ", others at " + where(b.barrier_site));
}

}  // namespace detail

namespace {

void on_exit(Block& b, Lane& me) {
  const unsigned bit = 1u << (me.linear & 31);
  WarpSlot& w = b.warps[me.linear >> 5];
  me.state = Lane::State::done;
  ++b.exited;
  if (b.barrier_arrived > 0)
    detail::fail(b, who(me) + " exited while " + std::to_string(b.barrier_arrived) +
                        " threads wait in __syncthreads at " + where(b.barrier_site));
  if (w.arrived != 0 && (w.mask & bit))
    detail::fail(b, who(me) + " exited while lanes of its warp wait in " + op_name(w.op) +
                        " at " + where(w.site) + " with a mask that names it");
}

void fiber_entry(bc::transfer_t t) {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
  Block& b = *detail::t_block;
  detail::arrived_from(b, t);
  Lane& me = *b.current;  // set by whoever jumped here
  detail::thread_idx = me.idx;
  detail::ordered_after(&b.start_sync);
  (*b.body)();
  on_exit(b, me);
  detail::switch_away(b, me, &detail::dead_lane);
  std::abort();  // a finished fiber is never resumed
}

void make_order(Block& b, unsigned n) {
  std::vector<unsigned>& order = b.warp_order;
  order.resize(n);
  for (unsigned i = 0; i < n; ++i) order[i] = b.order == Order::reverse ? n - 1 - i : i;
  if (b.order == Order::random)
    for (unsigned i = n; i > 1; --i) std::swap(order[i - 1], order[detail::next_random(b) % i]);
}

/// The race check's view of a block (SIMT_RACE_CHECK): a TSan fiber per CUDA
/// thread, named after it for the reports; what the host did before the
/// block is ordered before every thread, and every thread before what the
/// host does after it. Nothing else orders the threads but the block's own
/// barriers, collectives, fences and atomics. (Blocks are thus ordered one
/// after another, which also lets fibers serve block after block: creating
/// TSan fibers per block costs minutes on the kernel tests.)
#if defined(SIMT_RACE_CHECK)
struct RaceCheckFibers {
  struct Fiber {
    void* tsan;
    uint3 idx;  // the thread it is named after
    std::string name;
  };
  static std::vector<Fiber>& pool() {
    static thread_local std::vector<Fiber> fibers;
    return fibers;
  }
  Block& b;
  explicit RaceCheckFibers(Block& block) : b(block) {
    b.tsan_scheduler = __tsan_get_current_fiber();
    std::vector<Fiber>& fibers = pool();
    while (fibers.size() < b.n)
      fibers.push_back({__tsan_create_fiber(0), uint3{~0u, ~0u, ~0u}, {}});
    for (unsigned i = 0; i < b.n; ++i) {
      Lane& l = b.lanes[i];
      Fiber& f = fibers[i];
      if (f.idx.x != l.idx.x || f.idx.y != l.idx.y || f.idx.z != l.idx.z) {
        f.idx = l.idx;
        f.name = "CUDA thread (" + std::to_string(l.idx.x) + "," + std::to_string(l.idx.y) + "," +
                 std::to_string(l.idx.z) + ")";
        __tsan_set_fiber_name(f.tsan, f.name.c_str());
      }
      l.tsan_fiber = f.tsan;
    }
    detail::ordered_before(&b.start_sync);
  }
  ~RaceCheckFibers() {
    // Every thread, finished or (in a failed block) abandoned mid-kernel,
    // ends ordered before the host and with its ignores closed.
    for (Lane& l : b.lanes) {
      __tsan_switch_to_fiber(l.tsan_fiber, __tsan_switch_to_fiber_no_sync);
      for (; l.bookkeeping > 0; --l.bookkeeping) __tsan_ignore_thread_end();
      detail::ordered_before(&b.end_sync);
      __tsan_switch_to_fiber(b.tsan_scheduler, __tsan_switch_to_fiber_no_sync);
    }
    detail::ordered_after(&b.end_sync);
  }
};
#else
struct RaceCheckFibers {
  explicit RaceCheckFibers(Block&) {}
};
#endif

/// Runs one block to completion; false (and t_block_error) on a failure.
bool run_block(Block& b, const dim3& block_dim) {
  b.n = block_dim.x * block_dim.y * block_dim.z;
  b.exited = 0;
  b.barrier_arrived = 0;
  b.failed = false;
  b.lanes.resize(b.n);
  b.warps.assign((b.n + 31) / 32, WarpSlot{});
  t_stacks.reserve(b.n);
  for (unsigned i = 0; i < b.n; ++i) {
    Lane& l = b.lanes[i];
    l.linear = i;
    l.idx = uint3{i % block_dim.x, (i / block_dim.x) % block_dim.y, i / (block_dim.x * block_dim.y)};
    l.state = Lane::State::runnable;
    l.ctx = bc::make_fcontext(t_stacks.top(i), t_stacks.size(i), fiber_entry);
    l.stack_size = t_stacks.size(i);
    l.stack_bottom = static_cast<char*>(t_stacks.top(i)) - l.stack_size;
    b.warps[i >> 5].ready |= 1u << (i & 31);
    b.warps[i >> 5].existing |= 1u << (i & 31);
  }
  const RaceCheckFibers fibers(b);
  for (;;) {
    make_order(b, static_cast<unsigned>(b.warps.size()));
    bool progressed = false;
    for (unsigned w : b.warp_order) {
      // Run warp w until none of its lanes can proceed; its lanes hand over
      // to each other directly and come back here when the warp is stuck.
      while (b.warps[w].ready != 0) {
        const int first = detail::next_ready(b, w, b.order == Order::reverse ? 0 : 31);
        Lane& l = b.lanes[w * 32 + static_cast<unsigned>(first)];
        b.warps[w].ready &= ~(1u << first);
        b.current = &l;
        ++b.switches;
        const bc::transfer_t t = detail::jump(b, &l, nullptr);
        detail::arrived_from(b, t);
        progressed = true;
        if (b.failed) return false;
      }
    }
    if (b.exited == b.n) return true;
    if (!progressed) {
      // Group the waiting threads by where they wait.
      std::ostringstream o;
      o << "deadlock: no thread can proceed:";
      struct Group {
        std::string at;
        const Lane* first;
        int count;
      };
      std::vector<Group> groups;
      for (const Lane& l : b.lanes) {
        if (l.state == Lane::State::done) continue;
        const std::string at = std::string(l.state == Lane::State::at_barrier
                                               ? "__syncthreads"
                                               : op_name(b.warps[l.linear >> 5].op)) +
                               " at " + where(l.site);
        auto it = std::find_if(groups.begin(), groups.end(),
                               [&](const Group& g) { return g.at == at; });
        if (it == groups.end())
          groups.push_back({at, &l, 1});
        else
          ++it->count;
      }
      for (const Group& g : groups)
        o << " " << g.count << " threads wait in " << g.at << " (the first: " << who(*g.first)
          << ");";
      o << " (" << b.exited << " exited)";
      t_block_error = o.str();
      return false;
    }
  }
}

// ---------------------------------------------------------------------------
// Launch queue: eager execution, or recording while a stream is captured.

int g_global_captures = 0;  // streams capturing in global mode

bool record_if_capturing(cudaStream_t stream, std::function<void()>& work) {
  if (stream != nullptr && stream->capturing) {
    stream->graph->nodes.push_back(std::move(work));
    return true;
  }
  if (stream == nullptr && g_global_captures > 0) {
    set_error(cudaErrorStreamCaptureImplicit,
              "work on the legacy default stream while a stream is being captured");
    return true;  // dropped
  }
  return false;
}

/// Persistent helper threads for SIMT_WORKERS > 1 (the caller is a worker too).
class Pool {
 public:
  explicit Pool(int helpers) {
    for (int i = 0; i < helpers; ++i) threads_.emplace_back([this] { loop(); });
  }
  int helpers() const { return static_cast<int>(threads_.size()); }
  void run(const std::function<void()>& job) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &job;
      ++generation_;
      pending_ = helpers();
    }
    wake_.notify_all();
    job();
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return pending_ == 0; });
    job_ = nullptr;
  }

 private:
  void loop() {
    unsigned long seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      const std::function<void()>* job = job_;
      lock.unlock();
      (*job)();
      lock.lock();
      if (--pending_ == 0) done_.notify_all();
    }
  }
  std::vector<std::thread> threads_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  const std::function<void()>* job_ = nullptr;
  unsigned long generation_ = 0;
  int pending_ = 0;
};
Pool& pool() {
  static Pool* p = new Pool(std::max(0, settings().workers - 1));  // never destroyed
  return *p;
}

#if defined(__SANITIZE_ADDRESS__)
// Under AddressSanitizer: name the CUDA thread that made the bad access.
extern "C" void __sanitizer_set_death_callback(void (*callback)(void));
void report_cuda_thread() {
  if (detail::t_block != nullptr && detail::t_block->current != nullptr)
    std::fprintf(stderr, "simt: the access above was made by %s\n",
                 who(*detail::t_block->current).c_str());
}
const bool g_death_callback = (__sanitizer_set_death_callback(report_cuda_thread), true);
#endif

void run_grid(const config& cfg, const launch_site& at, const std::function<void()>& body) {
  const Settings& s = settings();
  const auto start = std::chrono::steady_clock::now();
  const std::uint64_t blocks = std::uint64_t{cfg.grid.x} * cfg.grid.y * cfg.grid.z;
  std::vector<std::uint64_t> order;
  if (s.block_order != Order::forward) {
    std::mt19937 rng(s.seed);
    order.resize(blocks);
    for (std::uint64_t i = 0; i < blocks; ++i)
      order[i] = s.block_order == Order::reverse ? blocks - 1 - i : i;
    if (s.block_order == Order::random) std::shuffle(order.begin(), order.end(), rng);
  }
  std::atomic<std::uint64_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex error_mutex;
  std::string error;
  // One worker: takes blocks until none is left (each worker thread has its
  // own fiber stacks and its own copy of every __shared__ variable).
  const std::function<void()> worker = [&] {
    Block b;
    b.body = &body;
    pthread_attr_t attributes;
    void* stack = nullptr;
    pthread_getattr_np(pthread_self(), &attributes);
    pthread_attr_getstack(&attributes, &stack, &b.scheduler_stack_size);
    pthread_attr_destroy(&attributes);
    b.scheduler_stack_bottom = stack;
    b.order = s.thread_order;
    b.rng = 0x9e3779b97f4a7c15ull ^ s.seed;
    Block* outer = detail::t_block;
    detail::t_block = &b;
    detail::grid_dim = cfg.grid;
    detail::block_dim = cfg.block;
    for (;;) {
      const std::uint64_t k = next.fetch_add(1, std::memory_order_relaxed);
      if (k >= blocks || failed.load(std::memory_order_relaxed)) break;
      const std::uint64_t id = order.empty() ? k : order[k];
      detail::block_idx = uint3{static_cast<unsigned>(id % cfg.grid.x),
                                static_cast<unsigned>(id / cfg.grid.x % cfg.grid.y),
                                static_cast<unsigned>(id / (std::uint64_t{cfg.grid.x} * cfg.grid.y))};
      if (!run_block(b, cfg.block)) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!failed.exchange(true)) error = t_block_error;
        break;
      }
    }
    detail::t_block = outer;
    g_stats.switches += b.switches;
    g_stats.warp_ops += b.warp_ops;
    g_stats.barriers += b.barriers;
  };
  if (s.workers > 1 && blocks > 1)
    pool().run(worker);
  else
    worker();
  if (failed)
    set_error(cudaErrorLaunchFailure, std::string(at.kernel) + " launched at " + where(at.site) +
                                          " failed: " + error + " [schedule: " + s.schedule() +
                                          "]");
  g_stats.launches += 1;
  g_stats.blocks += static_cast<long>(blocks);
  g_stats.threads += static_cast<long>(blocks * cfg.block.x * cfg.block.y * cfg.block.z);
  g_stats.nanos += std::chrono::duration_cast<std::chrono::nanoseconds>(
                       std::chrono::steady_clock::now() - start)
                       .count();
}

// ---------------------------------------------------------------------------
// Memory bookkeeping

std::mutex g_memory_mutex;
std::unordered_map<void*, std::size_t> g_allocations;
std::size_t g_allocated = 0;

}  // namespace

namespace detail {

void launch(const config& cfg, const launch_site& at, std::function<void()> grid_body) {
  static const bool banner = (std::fprintf(stderr, "simt: schedule: %s\n",
                                           settings().schedule().c_str()),
                              true);
  (void)banner;
  g_launch_log.add(at.kernel);
  const dim3 g = cfg.grid, k = cfg.block;
  const std::uint64_t threads = std::uint64_t{k.x} * k.y * k.z;
  if (threads == 0 || threads > 1024 || k.x > 1024 || k.y > 1024 || k.z > 64 || g.x == 0 ||
      g.y == 0 || g.z == 0 || g.x > 0x7fffffffu || g.y > 65535 || g.z > 65535 ||
      cfg.shared_bytes > 48 * 1024) {
    std::ostringstream o;
    o << at.kernel << " launched at " << where(at.site) << " with an invalid configuration: grid ("
      << g.x << "," << g.y << "," << g.z << "), block (" << k.x << "," << k.y << "," << k.z
      << "), " << cfg.shared_bytes << " bytes of dynamic shared memory";
    set_error(cudaErrorInvalidConfiguration, o.str());
    return;
  }
  if (cfg.shared_bytes > 0) {
    set_error(cudaErrorNotSupported, std::string(at.kernel) + " launched at " + where(at.site) +
                                         ": dynamic shared memory is not emulated");
    return;
  }
  const config c = cfg;
  const launch_site a = at;
  std::function<void()> work = [c, a, body = std::move(grid_body)]() { run_grid(c, a, body); };
  if (record_if_capturing(cfg.stream, work)) return;
  work();
}

}  // namespace detail

void enqueue_host_work(cudaStream_t stream, std::function<void()> work) {
  if (record_if_capturing(stream, work)) return;
  work();
}

}  // namespace simt

// ---------------------------------------------------------------------------
// CUDA runtime API subset (C linkage from the toolkit's declarations)

using simt::set_error;

namespace {
cudaError_t ret(cudaError_t e) {
  if (e != cudaSuccess) simt::set_error(e);
  return e;
}
bool capture_active() { return simt::g_global_captures > 0; }
}  // namespace

cudaError_t cudaMalloc(void** ptr, size_t size) {
  if (ptr == nullptr) return ret(cudaErrorInvalidValue);
  if (capture_active()) return ret(cudaErrorStreamCaptureUnsupported);
  *ptr = nullptr;
  if (size == 0) return cudaSuccess;
  std::lock_guard<std::mutex> lock(simt::g_memory_mutex);
  if (simt::g_allocated + size > simt::settings().memory) return ret(cudaErrorMemoryAllocation);
  // Exactly `size` bytes (256-byte aligned like cudaMalloc), so that under
  // AddressSanitizer a kernel reading one element past the end is reported.
  void* p = nullptr;
  if (posix_memalign(&p, 256, size) != 0) return ret(cudaErrorMemoryAllocation);
  if (simt::settings().poison >= 0) std::memset(p, simt::settings().poison, size);
  simt::g_allocations[p] = size;
  simt::g_allocated += size;
  *ptr = p;
  return cudaSuccess;
}
cudaError_t cudaFree(void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  std::lock_guard<std::mutex> lock(simt::g_memory_mutex);
  const auto it = simt::g_allocations.find(ptr);
  if (it == simt::g_allocations.end()) return ret(cudaErrorInvalidValue);
  simt::g_allocated -= it->second;
  simt::g_allocations.erase(it);
  std::free(ptr);
  return cudaSuccess;
}
cudaError_t cudaMallocHost(void** ptr, size_t size) {
  *ptr = std::malloc(size == 0 ? 1 : size);
  return *ptr != nullptr ? cudaSuccess : ret(cudaErrorMemoryAllocation);
}
cudaError_t cudaFreeHost(void* ptr) {
  std::free(ptr);
  return cudaSuccess;
}
cudaError_t cudaMallocAsync(void** ptr, size_t size, cudaStream_t) { return cudaMalloc(ptr, size); }
cudaError_t cudaFreeAsync(void* ptr, cudaStream_t) { return cudaFree(ptr); }
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total) {
  std::lock_guard<std::mutex> lock(simt::g_memory_mutex);
  *total = simt::settings().memory;
  *free_bytes = *total - simt::g_allocated;
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind) {
  if (capture_active()) return ret(cudaErrorStreamCaptureUnsupported);
  if (count > 0) std::memmove(dst, src, count);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind,
                            cudaStream_t stream) {
  simt::enqueue_host_work(stream, [=] {
    if (count > 0) std::memmove(dst, src, count);
  });
  return cudaSuccess;
}
cudaError_t cudaMemset(void* ptr, int value, size_t count) {
  if (capture_active()) return ret(cudaErrorStreamCaptureUnsupported);
  std::memset(ptr, value, count);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t stream) {
  simt::enqueue_host_work(stream, [=] { std::memset(ptr, value, count); });
  return cudaSuccess;
}

cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : ret(cudaErrorInvalidDevice); }
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return ret(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = simt::settings().sm_count; break;
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = 48 * 1024; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = 2048; break;
    default: return ret(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) {
  if (capture_active()) return ret(cudaErrorStreamCaptureUnsupported);
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* v) {
  *v = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaFuncSetAttribute(const void*, cudaFuncAttribute, int) { return cudaSuccess; }

cudaError_t cudaGetLastError(void) {
  const cudaError_t e = simt::t_last_error;
  simt::t_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError(void) { return simt::t_last_error; }
const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureImplicit: return "cudaErrorStreamCaptureImplicit";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorIllegalState: return "cudaErrorIllegalState";
    default: return "cudaErrorUnknown";
  }
}
const char* cudaGetErrorString(cudaError_t e) {
  // The message of the last error, which cudaGetLastError has just returned.
  if (e == simt::t_message_error && !simt::t_last_message.empty())
    return simt::t_last_message.c_str();
  return cudaGetErrorName(e);
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  *stream = new CUstream_st;
  return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int) {
  return cudaStreamCreate(stream);
}
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  if (stream != nullptr && stream->capturing) return ret(cudaErrorIllegalState);
  delete stream;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  if (stream != nullptr && stream->capturing) return ret(cudaErrorStreamCaptureUnsupported);
  return cudaSuccess;
}
cudaError_t cudaStreamQuery(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned int) { return cudaSuccess; }
cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode) {
  if (stream == nullptr || stream->capturing) return ret(cudaErrorIllegalState);
  stream->capturing = true;
  stream->mode = mode;
  stream->graph = new CUgraph_st;
  if (mode == cudaStreamCaptureModeGlobal) ++simt::g_global_captures;
  return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
  if (stream == nullptr || !stream->capturing) return ret(cudaErrorIllegalState);
  stream->capturing = false;
  if (stream->mode == cudaStreamCaptureModeGlobal) --simt::g_global_captures;
  *graph = stream->graph;
  stream->graph = nullptr;
  return cudaSuccess;
}
cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status) {
  *status = stream != nullptr && stream->capturing ? cudaStreamCaptureStatusActive
                                                   : cudaStreamCaptureStatusNone;
  return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
  *exec = new CUgraphExec_st{graph->nodes};
  return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
  for (const auto& node : exec->nodes) {
    std::function<void()> work = node;
    simt::enqueue_host_work(stream, std::move(work));
  }
  return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  delete graph;
  return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  delete exec;
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* event) {
  *event = new CUevent_st;
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int) { return cudaEventCreate(event); }
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  simt::enqueue_host_work(stream, [event] {
    event->time = std::chrono::steady_clock::now();
    event->recorded = true;
  });
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventQuery(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  if (!start->recorded || !end->recorded) return ret(cudaErrorInvalidResourceHandle);
  *ms = std::chrono::duration<float, std::milli>(end->time - start->time).count();
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete event;
  return cudaSuccess;
}
