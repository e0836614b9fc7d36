// lowbit::cpu — the instruction sets the CPU backend's vector code is built
// for, and the one place that picks among them at run time, so the library
// needs no -march flag: the GEMMs (cpu_gemm), the elementwise quantizers
// (cpu_quant) and the per-channel reductions (cpu_reductions) all run their
// hot loops through at_active_isa.
//
// Every level gives the same bits: the kernels use no FMA contraction
// (-ffp-contract=off) and only IEEE operations, so a wider vector changes the
// speed, never the result (but for the payload of a NaN sum in
// cpu_reductions, see there). Tests switch levels with use_isa to check it.
#pragma once

#include <type_traits>

namespace lowbit::cpu {

/// The instruction sets the kernels are compiled for, lowest first: the
/// baseline (SSE2 on x86-64, which every x86-64 CPU runs; the only level on
/// other architectures), x86-64-v3 (AVX2) and x86-64-v4 (AVX-512).
enum class Isa { baseline, x86_64_v3, x86_64_v4 };

/// The best level this CPU runs.
Isa supported_isa();

/// The level the kernels use: supported_isa() unless use_isa chose a lower
/// one.
Isa active_isa();

/// Makes the kernels use `isa` (at most supported_isa(); tests compare the
/// levels). Not meant to race with running kernels.
void use_isa(Isa isa);

/// The level a kernel is built for, as a type: f(level) below can pick its
/// tiles with `if constexpr (level == Isa::x86_64_v4)`.
template <Isa kIsa>
using IsaLevel = std::integral_constant<Isa, kIsa>;

namespace isa_detail {

// One function per level that calls f(level): `flatten` inlines f and all
// it calls into it, so the whole kernel is compiled for that level.
template <class F>
__attribute__((flatten)) void at_baseline(const F& f) {
  f(IsaLevel<Isa::baseline>{});
}
#if defined(__x86_64__)
template <class F>
__attribute__((target("arch=x86-64-v3"), flatten)) void at_v3(const F& f) {
  f(IsaLevel<Isa::x86_64_v3>{});
}
template <class F>
__attribute__((target("arch=x86-64-v4"), flatten)) void at_v4(const F& f) {
  f(IsaLevel<Isa::x86_64_v4>{});
}
#endif

}  // namespace isa_detail

/// Runs f(level) compiled for the active level, or for kTop where that is
/// lower (for kernels that gain nothing above kTop; no code is built for
/// the levels above it). Other architectures build and run the baseline
/// only. f and everything it calls are inlined into the level's function,
/// except what cannot be: calls through pointers, and OpenMP regions (their
/// bodies become functions of their own, built for the baseline), so call
/// this inside a parallel region, not around one.
template <Isa kTop = Isa::x86_64_v4, class F>
void at_active_isa(const F& f) {
#if defined(__x86_64__)
  const Isa isa = active_isa();
  if constexpr (kTop >= Isa::x86_64_v4)
    if (isa >= Isa::x86_64_v4) return isa_detail::at_v4(f);
  if constexpr (kTop >= Isa::x86_64_v3)
    if (isa >= Isa::x86_64_v3) return isa_detail::at_v3(f);
#endif
  isa_detail::at_baseline(f);
}

}  // namespace lowbit::cpu
