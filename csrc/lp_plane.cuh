// One periodic Laplacian-pyramid level ('9-7') over a whole image plane held in shared
// memory: the LP half of a fused "pyramid level per launch" kernel (issue 13; the DFB half is
// dfb_plane.cuh). Same filters (lp::FiltH / lp::FiltG of lp_tile.cuh), same order of the
// separable passes and of the taps as the tile engine, so the two agree to the last bit;
// only the borders differ in how they are reached: a periodic index into the plane instead
// of a halo (the host emulation test checks the two agree bit for bit). Used by the pyramid-level
// phases of dfb_plane.cuh (level_energy). No torch headers.
//
// Buffers (Acc): y (H*W) is the level input, overwritten by the bandpass (dec) or by the
// gradient (adjoint); t (H*W/2) the vertical pass, reused by the vertical synthesis; c (H*W/4)
// the coarse plane. Every phase is a loop `for (i = tid; i < count; i += nt)`, with a barrier
// between phases:
//   dec (FA = h, FS = g):      analysis_rows, analysis_cols (c = A y), synthesis_rows,
//                              synthesis_cols (y -= S c: the bandpass in place);
//   adjoint (FA = g, FS = h):  c = g_low loaded, analysis_rows, analysis_cols (c -= A y),
//                              synthesis_rows, synthesis_cols (y += S c: g_x in place over g_band).
// In place is safe: synthesis_cols writes y[i][j] reading only u and y[i][j] itself.
#pragma once

#include "lp_tile.cuh"

namespace sstkd {
namespace lpp {

// t[r][j] = sum_k fa[k] y[2r + k - O][j] (periodic rows), r < H/2.
template <class FA, typename Acc>
SSTKD_HD void analysis_rows(const Acc* y, Acc* t, int H, int W, int tid, int nt) {
  const int h = H / 2;
  for (int i = tid; i < h * W; i += nt) {
    const int r = i / W, j = i - r * W;
    Acc acc = Acc(0);
#pragma unroll
    for (int k = 0; k < FA::L; ++k) acc += FA::template tap<Acc>(k) * y[dev::wrap(2 * r + k - FA::O, H) * W + j];
    t[i] = acc;
  }
}

// c[r][q] = base[r][q] - A (SUB) or A, A = sum_k fa[k] t[r][2q + k - O] (periodic columns).
template <class FA, bool SUB, typename Acc>
SSTKD_HD void analysis_cols(const Acc* t, Acc* c, int H, int W, int tid, int nt) {
  const int h = H / 2, w = W / 2;
  for (int i = tid; i < h * w; i += nt) {
    const int r = i / w, q = i - r * w;
    const Acc* row = t + r * W;
    Acc acc = Acc(0);
#pragma unroll
    for (int k = 0; k < FA::L; ++k) acc += FA::template tap<Acc>(k) * row[dev::wrap(2 * q + k - FA::O, W)];
    c[i] = SUB ? c[i] - acc : acc;
  }
}

// sum over the taps k of fs with (n + O - k) even of fs[k] src((n + O - k) / 2): the polyphase
// synthesis of output n (the tile engine's synth with its local offsets removed).
template <class FS, typename Acc, typename Src>
SSTKD_HD Acc synth(int n, Src src) {
  using TileLike = lp::Tile<Acc, FS, FS, false>;  // only its synth_phase (same tap order)
  const int k0 = n + FS::O;
  return (k0 & 1) ? TileLike::template synth_phase<1>(k0, src) : TileLike::template synth_phase<0>(k0, src);
}

// u[i][q] = sum fs[k] c[(i + O - k) / 2][q] (periodic coarse rows), i < H.
template <class FS, typename Acc>
SSTKD_HD void synthesis_rows(const Acc* c, Acc* u, int H, int W, int tid, int nt) {
  const int h = H / 2, w = W / 2;
  for (int i = tid; i < H * w; i += nt) {
    const int il = i / w, q = i - il * w;
    u[i] = synth<FS, Acc>(il, [&](int m) { return c[dev::wrap(m, h) * w + q]; });
  }
}

// y[i][j] += sign * sum fs[k] u[i][(j + O - k) / 2] (periodic coarse columns).
template <class FS, typename Acc>
SSTKD_HD void synthesis_cols(const Acc* u, Acc* y, int H, int W, Acc sign, int tid, int nt) {
  const int w = W / 2;
  for (int i = tid; i < H * W; i += nt) {
    const int il = i / W, jl = i - il * W;
    const Acc* urow = u + il * w;
    y[i] += sign * synth<FS, Acc>(jl, [&](int m) { return urow[dev::wrap(m, w)]; });
  }
}

}  // namespace lpp
}  // namespace sstkd
