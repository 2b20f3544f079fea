// Host emulation of the kernels' arithmetic, for testing on machines without
// a GPU (tests/test_cuda_ext.py builds this file with nvcc into a shared
// library and calls it through ctypes). It runs the very same tile phases
// (lp_tile.cuh) and tap functions (quantize_taps.cuh) as the CUDA kernels,
// one "thread" at a time, tile by tile, with the kernels' grid decomposition.
// What it cannot cover: the warp-level code (warp-aggregated atomics, shuffle
// reductions), barriers and races -- the GPU tests and compute-sanitizer do.
// Not part of the extension (setup.py and the JIT build take csrc/*.cu only).
#include <algorithm>
#include <memory>
#include <vector>

#include "../dfb_plane.cuh"
#include "../lp_plane.cuh"
#include "../lp_tile.cuh"
#include "../quantize_taps.cuh"

using namespace sstkd;

// out_dtype: of c_out / out (-1: dtype); the mixed pairs of lp_level_launch (sstkd_kernels.h).
extern "C" int sstkd_emu_lp_level(int dtype, int mode, int filters, const void* y, const void* c_in, void* c_out,
                                  void* out, int64_t n, int64_t H, int64_t W, int out_dtype) {
  if ((H | W) & 1) return 1;
  const auto run = [&](auto tile) -> cudaError_t {
    using TileT = decltype(tile);
    using T = typename TileT::Elem;
    using TO = typename TileT::Out;
    auto sm = std::make_unique<typename TileT::Smem>();
    const int h = (int)H / 2, w = (int)W / 2;
    const T* yp = static_cast<const T*>(y);
    const T* cp = static_cast<const T*>(c_in);
    TO* cop = static_cast<TO*>(c_out);
    TO* op = static_cast<TO*>(out);
    for (int64_t img = 0; img < n; ++img) {
      const int64_t fine = img * H * W, coarse = img * h * w;
      for (int P0 = 0; P0 < h; P0 += TileT::TCH_) {
        for (int Q0 = 0; Q0 < w; Q0 += TileT::TCW_) {
          TileT::load(*sm, yp + fine, P0, Q0, (int)H, (int)W, 0, 1);
          TileT::analysis_rows(*sm, 0, 1);
          TileT::analysis_cols(*sm, cp ? cp + coarse : nullptr, cop ? cop + coarse : nullptr, P0, Q0, h, w, 0,
                               1);
          TileT::synthesis_rows(*sm, 0, 1);
          TileT::synthesis_cols(*sm, op + fine, P0, Q0, (int)H, (int)W, 0, 1);
        }
      }
    }
    return cudaSuccess;
  };
  const cudaError_t err =
      out_dtype >= 0 && out_dtype != dtype
          ? lp::with_mixed_tile(Dtype(dtype), Dtype(out_dtype), LpMode(mode), LpFilters(filters), run)
          : dispatch_dtype(Dtype(dtype), [&](auto* tag) -> cudaError_t {
              using T = std::remove_pointer_t<decltype(tag)>;
              return lp::with_tile<T>(LpMode(mode), LpFilters(filters), run);
            });
  return err == cudaSuccess ? 0 : 1;
}

// counts/sums (B, L) and centers in the accumulation type; sequential sums.
extern "C" int sstkd_emu_quantize_count(int dtype, int kernel, const void* s, const void* centers, void* counts,
                                        void* sums, int64_t B, int64_t N, int64_t L) {
  const cudaError_t err = dispatch_dtype(Dtype(dtype), [&](auto* tag) -> cudaError_t {
    using T = std::remove_pointer_t<decltype(tag)>;
    using Acc = typename dev::AccOf<T>::type;
    const T* sp = static_cast<const T*>(s);
    const Acc* cp = static_cast<const Acc*>(centers);
    Acc* np = static_cast<Acc*>(counts);
    Acc* mp = static_cast<Acc*>(sums);
    for (int64_t b = 0; b < B; ++b) {
      const Acc* c = cp + b * L;
      const Acc delta = quant::stl_delta(c, (int)L);
      for (int64_t i = 0; i < N; ++i) {
        const Acc sv = dev::to_acc(sp[b * N + i]);
        const auto t = kernel == 0 ? quant::taps<QuantKernel::kTriangular>(sv, c, (int)L, delta)
                                   : quant::taps<QuantKernel::kStlnet>(sv, c, (int)L, delta);
        np[b * L + t.lo] += t.w_lo;
        np[b * L + t.lo + 1] += t.w_hi;
        mp[b * L + t.lo] += t.w_lo * sv;
        mp[b * L + t.lo + 1] += t.w_hi * sv;
      }
    }
    return cudaSuccess;
  });
  return err == cudaSuccess ? 0 : 1;
}

extern "C" int sstkd_emu_quantize_count_backward(int dtype, int kernel, const void* s, const void* centers,
                                                 const void* grad_counts, const void* grad_sums, void* grad_s,
                                                 int64_t B, int64_t N, int64_t L) {
  const cudaError_t err = dispatch_dtype(Dtype(dtype), [&](auto* tag) -> cudaError_t {
    using T = std::remove_pointer_t<decltype(tag)>;
    using Acc = typename dev::AccOf<T>::type;
    const T* sp = static_cast<const T*>(s);
    const Acc* cp = static_cast<const Acc*>(centers);
    const Acc* gcp = static_cast<const Acc*>(grad_counts);
    const Acc* gsp = static_cast<const Acc*>(grad_sums);
    T* gp = static_cast<T*>(grad_s);
    for (int64_t b = 0; b < B; ++b) {
      const Acc* c = cp + b * L;
      const Acc delta = quant::stl_delta(c, (int)L);
      for (int64_t i = 0; i < N; ++i) {
        const Acc sv = dev::to_acc(sp[b * N + i]);
        const Acc g = kernel == 0
                          ? quant::grad_pixel<QuantKernel::kTriangular>(sv, c, gcp + b * L, gsp + b * L, (int)L, delta)
                          : quant::grad_pixel<QuantKernel::kStlnet>(sv, c, gcp + b * L, gsp + b * L, (int)L, delta);
        dev::store(gp + b * N + i, g);
      }
    }
    return cudaSuccess;
  });
  return err == cudaSuccess ? 0 : 1;
}

// Runs the whole-plane program of `a` (dfb_kernels.cu) as a launch would, with `nt` emulated threads
// per plane: every phase runs thread 0, 1, ..., nt-1 in turn, then the next phase (the kernel's
// barrier). Shared memory: the two H*W plane buffers, plus the H*W/4 coarse plane of the level modes.
template <typename Acc>
static void emulate_planes(dfbp::Args<Acc>& a, int nt, bool coarse_plane) {
  dfbp::set_program(a);
  const int64_t HW = (int64_t)a.H * a.W;
  std::vector<Acc> smem(2 * HW + (coarse_plane ? HW / 4 : 0));
  Acc* lowbuf = coarse_plane ? smem.data() + 2 * HW : nullptr;
  for (int64_t n = 0; n < a.N; ++n)
    for (int p = 0; p < a.num_phases; ++p)
      for (int tid = 0; tid < nt; ++tid) dfbp::run_phase(a, (int)n, smem.data(), smem.data() + HW, p, tid, nt, lowbuf);
}

// `run(Acc{})` in the accumulation type of x_dtype (float64 for float64, else float32).
template <typename Run>
static void with_acc(Dtype x_dtype, const Run& run) {
  if (dfbp::is_double(x_dtype))
    run(0.0);
  else
    run(0.0f);
}

// The whole-plane DFB (dfb_kernels.cu) with `nt` emulated threads per plane (emulate_planes). Pointers and
// layouts as dfb_plane_launch (sstkd_kernels.h).
// `low` (optional, energy modes): the lowpass whose energy comes first (sstkd_kernels.h).
extern "C" int sstkd_emu_dfb_plane(int mode, int x_dtype, int band_dtype, int levels, const void* x, void* bands,
                                   const void* grad_bands, const void* g, void* en, void* gx, int64_t N, int64_t H,
                                   int64_t W, int nt, const void* low, void* g_low, int64_t low_hw,
                                   int64_t g_stride) {
  if (mode < 0 || mode > 5 || levels < 1 || levels > dfbp::kMaxLevels || nt < 1 || H <= 0 || W <= 0 || (H * W) % ((int64_t)1 << levels) != 0)
    return 1;
  if (low != nullptr && ((mode != 2 && mode != 3) || low_hw < 0 || low_hw > H * W || (mode == 3 && g_low == nullptr)))
    return 1;
  const Dtype xd = Dtype(x_dtype), bd = Dtype(band_dtype);
  if (!dfbp::dtypes_supported(xd, bd)) return 1;
  with_acc(xd, [&](auto acc_tag) {
    using Acc = decltype(acc_tag);
    dfbp::Args<Acc> a{DfbMode(mode), xd, bd, levels, (int)H, (int)W, N, x, bands, grad_bands,
                      static_cast<const Acc*>(g), static_cast<Acc*>(en), gx, low, g_low, (int)low_hw, g_stride};
    emulate_planes(a, nt, false);
  });
  return 0;
}

// The whole-plane LP level (lp_plane.cuh) with `nt` emulated threads, planes of the accumulation
// type (acc_double: float64, else float32). mode 0 (lp_dec): y -> (c_out = A y, out = y - S A y);
// mode 1 (its adjoint): (y = g_band, c_in = g_low) -> out = y + S (c_in - A y). Every phase runs
// thread 0, 1, ..., nt-1 in turn, then the next phase (the kernel's barrier).
extern "C" int sstkd_emu_lp_plane(int acc_double, int mode, const void* y, const void* c_in, void* c_out, void* out,
                                  int64_t n, int64_t H, int64_t W, int nt) {
  if (((H | W) & 1) || H <= 0 || W <= 0 || nt < 1 || (mode != 0 && mode != 1)) return 1;
  const auto run = [&](auto acc_tag) {
    using Acc = decltype(acc_tag);
    const int64_t HW = H * W, hw = HW / 4;
    std::vector<Acc> ys(HW), t(HW / 2), c(hw);
    const auto phases = [&](auto fa, auto fs) {
      using FA = decltype(fa);
      using FS = decltype(fs);
      const bool dec = mode == 0;
      for (int tid = 0; tid < nt; ++tid) lpp::analysis_rows<FA>(ys.data(), t.data(), (int)H, (int)W, tid, nt);
      for (int tid = 0; tid < nt; ++tid) {
        if (dec)
          lpp::analysis_cols<FA, false>(t.data(), c.data(), (int)H, (int)W, tid, nt);
        else
          lpp::analysis_cols<FA, true>(t.data(), c.data(), (int)H, (int)W, tid, nt);
      }
      for (int tid = 0; tid < nt; ++tid) lpp::synthesis_rows<FS>(c.data(), t.data(), (int)H, (int)W, tid, nt);
      for (int tid = 0; tid < nt; ++tid)
        lpp::synthesis_cols<FS>(t.data(), ys.data(), (int)H, (int)W, Acc(dec ? -1 : 1), tid, nt);
    };
    for (int64_t img = 0; img < n; ++img) {
      const Acc* yi = static_cast<const Acc*>(y) + img * HW;
      std::copy(yi, yi + HW, ys.begin());
      if (mode == 0) {
        phases(lp::FiltH{}, lp::FiltG{});
        std::copy(c.begin(), c.end(), static_cast<Acc*>(c_out) + img * hw);
      } else {
        const Acc* ci = static_cast<const Acc*>(c_in) + img * hw;
        std::copy(ci, ci + hw, c.begin());
        phases(lp::FiltG{}, lp::FiltH{});
      }
      std::copy(ys.begin(), ys.end(), static_cast<Acc*>(out) + img * HW);
    }
  };
  if (acc_double)
    run(0.0);
  else
    run(0.0f);
  return 0;
}

// A whole pyramid level per launch (dfb_level_launch, sstkd_kernels.h) with `nt` emulated threads:
// adjoint 0: x -> (low_out, en); 1: (x, g, g_low) -> gx. Same pointers and layouts as the launcher.
extern "C" int sstkd_emu_dfb_level(int adjoint, int x_dtype, int levels, int last, const void* x, const void* g,
                                   int64_t g_stride, void* en, void* gx, void* low_out, const void* g_low, int64_t N,
                                   int64_t H, int64_t W, int nt) {
  if (levels < 1 || levels > dfbp::kMaxLevels || nt < 1 || H <= 0 || W <= 0 || ((H | W) & 1) ||
      (H * W) % ((int64_t)1 << levels) != 0 || g_stride < 0)
    return 1;
  if (adjoint ? (g == nullptr || gx == nullptr || (!last && g_low == nullptr)) : (en == nullptr || low_out == nullptr))
    return 1;
  const Dtype xd = Dtype(x_dtype);
  const DfbMode mode = adjoint ? DfbMode::kLevelEnergyAdjoint : DfbMode::kLevelEnergy;
  with_acc(xd, [&](auto acc_tag) {
    using Acc = decltype(acc_tag);
    dfbp::Args<Acc> a{mode, xd, xd, levels, (int)H, (int)W, N, x, nullptr, nullptr,
                      static_cast<const Acc*>(g), static_cast<Acc*>(en), gx, nullptr, nullptr, 0, g_stride,
                      last ? 1 : 0, static_cast<Acc*>(low_out), static_cast<const Acc*>(g_low)};
    emulate_planes(a, nt, true);
  });
  return 0;
}

// The level decomposition (dfb_level_dec_launch, sstkd_kernels.h) with `nt` emulated threads:
// adjoint 0: x -> (low_out, bands); 1: (grad_bands[K] pointers, null = zeros; g_low or null) -> gx.
extern "C" int sstkd_emu_dfb_level_dec(int adjoint, int x_dtype, int band_dtype, int low_dtype, int levels,
                                       const void* x, void* bands, void* low_out, const void* const* grad_bands,
                                       const void* g_low, void* gx, int64_t N, int64_t H, int64_t W, int nt) {
  if (levels < 1 || levels > kMaxLevelDecLevels || nt < 1 || H <= 0 || W <= 0 || ((H | W) & 1) ||
      (H * W) % ((int64_t)1 << levels) != 0)
    return 1;
  const Dtype xd = Dtype(x_dtype), bd = Dtype(band_dtype), ld = Dtype(low_dtype);
  if (!dfbp::dtypes_supported(xd, bd) || !dfbp::dtypes_supported(xd, ld)) return 1;
  if (adjoint ? (gx == nullptr || grad_bands == nullptr) : (x == nullptr || bands == nullptr || low_out == nullptr))
    return 1;
  with_acc(xd, [&](auto acc_tag) {
    using Acc = decltype(acc_tag);
    dfbp::Args<Acc> a{adjoint ? DfbMode::kLevelDecAdjoint : DfbMode::kLevelDec, xd, bd, levels, (int)H, (int)W, N, x,
                      bands, nullptr, nullptr, nullptr, gx, nullptr, nullptr, 0, 0, 0, low_out, g_low, ld};
    if (adjoint)
      for (int k = 0; k < (1 << levels); ++k) a.band_in[k] = grad_bands[k];
    emulate_planes(a, nt, true);
  });
  return 0;
}
