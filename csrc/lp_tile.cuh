// The tile engine of one periodic Laplacian-pyramid level ('9-7'), shared by
// the CUDA kernel (lp_kernels.cu) and the host emulation test (csrc/tests/).
//
// A tile is TCH x TCW coarse (c) samples, i.e. 2TCH x 2TCW fine samples. The
// fine input y of the tile plus the halo both filter passes need is held in
// `Smem` (periodic wrap); the analysis c = A y is computed on the tile plus
// the synthesis halo (separable: a vertical pass with stride 2, then a
// horizontal one), then the polyphase synthesis S c (no zeros are inserted:
// each output phase uses every other tap of fs). Every phase is a loop
// `for (i = tid; i < count; i += nthreads)`; the kernel runs them with the
// block's threads and a barrier in between, the emulation with (0, 1).
#pragma once

#include <climits>
#include <cstdint>

#include "device_utils.cuh"

namespace sstkd {
namespace lp {

// '9-7' analysis lowpass h (9 taps, origin 4) and synthesis lowpass g (7 taps,
// origin 3), toolbox constants; both symmetric. Taps are looked up with
// compile-time indices after unrolling, so the switch folds to immediates.
struct FiltH {
  static constexpr int L = 9, O = 4;
  template <typename Acc>
  SSTKD_HD static Acc tap(int k) {
    switch (k < 4 ? k : 8 - k) {
      case 0: return Acc(0.037828455506995);
      case 1: return Acc(-0.023849465019380);
      case 2: return Acc(-0.11062440441842);
      case 3: return Acc(0.37740285561265);
      default: return Acc(0.85269867900940);
    }
  }
};

struct FiltG {
  static constexpr int L = 7, O = 3;
  template <typename Acc>
  SSTKD_HD static Acc tap(int k) {
    switch (k < 3 ? k : 6 - k) {
      case 0: return Acc(-0.064538882628938);
      case 1: return Acc(-0.040689417609558);
      case 2: return Acc(0.41809227322221);
      default: return Acc(0.78848561640566);
    }
  }
};

// Tile sizes: 16 x 32 coarse samples (32 x 64 fine) keep the float tiles at
// ~23 KB of shared memory; double tiles are 16 x 16 (~26 KB).
template <typename T>
struct TileSize {
  static constexpr int H = 16, W = 32;
};
template <>
struct TileSize<double> {
  static constexpr int H = 16, W = 16;
};

// One tile: geometry (all compile-time) and the five phases.
// Global coordinates: the tile's coarse origin is (P0, Q0), its fine origin (2P0, 2Q0).
// Inputs (y, c_in) are of type T, outputs (c_out, out) of type TO (default T): a float16/bfloat16
// level read as it is with float32 outputs, or float32 cotangents with a float16/bfloat16 gradient.
template <typename T, class FA, class FS, bool REC, typename TO = T, int TCH = TileSize<T>::H,
          int TCW = TileSize<T>::W>
struct Tile {
  using Elem = T;
  using Out = TO;
  using Acc = typename dev::AccOf<T>::type;
  static constexpr int TCH_ = TCH, TCW_ = TCW;
  // Synthesis of fine rows [2P0, 2P0 + 2TCH) reads coarse rows [P0 - SB, P0 + TCH - 1 + SA].
  static constexpr int SB = (FS::L - 1 - FS::O) / 2;
  static constexpr int SA = (FS::O + 1) / 2;
  static constexpr int NCH = TCH + SB + SA, NCW = TCW + SB + SA;  // coarse samples held
  // Analysis of coarse row m reads fine rows [2m - FA::O, 2m - FA::O + FA::L).
  static constexpr int NYH = 2 * (NCH - 1) + FA::L, NYW = 2 * (NCW - 1) + FA::L;  // fine samples held
  static constexpr int OH = 2 * TCH, OW = 2 * TCW;  // fine outputs
  static constexpr int OFF = 2 * SB + FA::O;        // fine output (0, 0) inside ys
  static constexpr int K0 = 2 * SB + FS::O;         // synthesis tap of fine output 0 from coarse sample 0
  static constexpr int TMP = NCH * NYW > OH * NCW ? NCH * NYW : OH * NCW;

  struct Smem {
    Acc ys[NYH * NYW];
    Acc tmp[TMP];  // vertical analysis, later the vertical synthesis
    Acc cs[NCH * NCW];
  };

  // sum_k fs[k] * src((k0 - k) / 2) over the taps k of the parity of k0.
  template <int PAR, typename Src>
  SSTKD_HD static Acc synth_phase(int k0, Src src) {
    Acc acc = Acc(0);
#pragma unroll
    for (int k = PAR; k < FS::L; k += 2) acc += FS::template tap<Acc>(k) * src((k0 - k) >> 1);
    return acc;
  }
  template <typename Src>
  SSTKD_HD static Acc synth(int k0, Src src) {
    return (k0 & 1) ? synth_phase<1>(k0, src) : synth_phase<0>(k0, src);
  }

  // 1. fine tile + halo, periodic.
  SSTKD_HD static void load(Smem& sm, const T* yi, int P0, int Q0, int H, int W, int tid, int nt) {
    const int yr0 = 2 * (P0 - SB) - FA::O, yc0 = 2 * (Q0 - SB) - FA::O;
    for (int i = tid; i < NYH * NYW; i += nt) {
      const int r = i / NYW, c = i - r * NYW;
      sm.ys[i] = dev::to_acc(yi[(int64_t)dev::wrap(yr0 + r, H) * W + dev::wrap(yc0 + c, W)]);
    }
  }

  // 2. vertical analysis with stride 2: tmp[r][j] = sum_k fa[k] ys[2r + k][j].
  SSTKD_HD static void analysis_rows(Smem& sm, int tid, int nt) {
    for (int i = tid; i < NCH * NYW; i += nt) {
      const int r = i / NYW, j = i - r * NYW;
      const Acc* col = sm.ys + 2 * r * NYW + j;
      Acc acc = Acc(0);
#pragma unroll
      for (int k = 0; k < FA::L; ++k) acc += FA::template tap<Acc>(k) * col[k * NYW];
      sm.tmp[i] = acc;
    }
  }

  // 3. horizontal analysis with stride 2 -> coarse tile + halo. Decompose
  // writes the tile's own coarse samples; reconstruct forms c_in - A y.
  SSTKD_HD static void analysis_cols(Smem& sm, const T* ci, TO* co, int P0, int Q0, int h, int w, int tid, int nt) {
    for (int i = tid; i < NCH * NCW; i += nt) {
      const int r = i / NCW, q = i - r * NCW;
      const Acc* row = sm.tmp + r * NYW + 2 * q;
      Acc acc = Acc(0);
#pragma unroll
      for (int k = 0; k < FA::L; ++k) acc += FA::template tap<Acc>(k) * row[k];
      const int gr = P0 - SB + r, gc = Q0 - SB + q;
      if (REC) {
        acc = dev::to_acc(ci[(int64_t)dev::wrap(gr, h) * w + dev::wrap(gc, w)]) - acc;
      } else if (r >= SB && r < SB + TCH && q >= SB && q < SB + TCW && gr < h && gc < w) {
        dev::store(co + (int64_t)gr * w + gc, acc);
      }
      sm.cs[i] = acc;
    }
  }

  // 4. vertical polyphase synthesis: u[il][q] = sum_m fs[il + K0 - 2m] cs[m][q].
  SSTKD_HD static void synthesis_rows(Smem& sm, int tid, int nt) {
    for (int i = tid; i < OH * NCW; i += nt) {
      const int il = i / NCW, q = i - il * NCW;
      const Acc* cs = sm.cs + q;
      sm.tmp[i] = synth(il + K0, [&](int m) { return cs[m * NCW]; });
    }
  }

  // 5. horizontal polyphase synthesis, combined with y: y - S c or y + S c.
  SSTKD_HD static void synthesis_cols(Smem& sm, TO* oi, int P0, int Q0, int H, int W, int tid, int nt) {
    for (int i = tid; i < OH * OW; i += nt) {
      const int il = i / OW, jl = i - il * OW;
      const int gi = 2 * P0 + il, gj = 2 * Q0 + jl;
      if (gi < H && gj < W) {
        const Acc* urow = sm.tmp + il * NCW;
        const Acc s = synth(jl + K0, [&](int m) { return urow[m]; });
        const Acc v = sm.ys[(il + OFF) * NYW + jl + OFF];
        dev::store(oi + (int64_t)gi * W + gj, REC ? v + s : v - s);
      }
    }
  }
};

// Calls f(Tile<...>{}) with the tile type of (dtype, mode, filters); see sstkd_kernels.h.
template <typename T, typename F>
auto with_tile(LpMode mode, LpFilters filters, F&& f) {
  const bool rec = mode == LpMode::kReconstruct;
  if (filters == LpFilters::kForward)
    return rec ? f(Tile<T, FiltH, FiltG, true>{}) : f(Tile<T, FiltH, FiltG, false>{});
  return rec ? f(Tile<T, FiltG, FiltH, true>{}) : f(Tile<T, FiltG, FiltH, false>{});
}

// The mixed-dtype tiles (in_dtype != out_dtype): lp_dec of a float16/bfloat16 level with float32
// outputs (kDecompose / kForward), and its adjoint from float32 cotangents to a float16/bfloat16
// gradient (kReconstruct / kAdjoint). f(tile), or cudaErrorInvalidValue for any other combination.
template <typename F>
cudaError_t with_mixed_tile(Dtype in, Dtype out, LpMode mode, LpFilters filters, F&& f) {
  const bool lp_dec = mode == LpMode::kDecompose && filters == LpFilters::kForward && out == Dtype::kFloat32;
  const bool lp_dec_adj = mode == LpMode::kReconstruct && filters == LpFilters::kAdjoint && in == Dtype::kFloat32;
  if (lp_dec && in == Dtype::kFloat16) return f(Tile<__half, FiltH, FiltG, false, float>{});
  if (lp_dec && in == Dtype::kBFloat16) return f(Tile<__nv_bfloat16, FiltH, FiltG, false, float>{});
  if (lp_dec_adj && out == Dtype::kFloat16) return f(Tile<float, FiltG, FiltH, true, __half>{});
  if (lp_dec_adj && out == Dtype::kBFloat16) return f(Tile<float, FiltG, FiltH, true, __nv_bfloat16>{});
  return cudaErrorInvalidValue;
}

}  // namespace lp
}  // namespace sstkd
