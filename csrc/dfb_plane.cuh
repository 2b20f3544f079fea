// The whole-plane directional filter bank ('pkva' ladder, toolbox dfbdec_l) held in
// shared memory: the engine of dfb_kernels.cu (one CTA per image plane) and of the
// host emulation test (csrc/tests/host_emulation.cu). No torch headers.
//
// Storage: two Acc buffers of H*W (ping-pong). Tree level l (l = 0: the plane)
// lives in buf[l & 1] as 2^l bands of area H*W >> l each, band k at k*area, every
// band in plain row-major order of its (h, w). Level l >= 3 has two groups: bands
// [0, 2^(l-1)) of size (H >> (l-1), W/2) (the 'rows' half) and the rest of size
// (H/2, W >> (l-1)) (the 'cols' half). Children of band K are 2K and 2K+1; y0 is
// child 2K at level 1 and child 2K+1 below (the toolbox's child order).
//
// A stage of the tree is three phases, each a loop over work items
// `for (i = tid; i < count; i += nt)`, with a block barrier between phases:
//   split    buf[(l-1)&1] -> buf[l&1]: the polyphase components p0 -> y0 slot,
//            p1 -> y1 slot ('1r', '2c', P1/P2 on the 'rows' half, P3/P4 on the
//            'cols' half; the same integer maps as sstkd/kernels/dfb.py _addr);
//   ladder A y0 = (p0 - S1 p1)/sqrt2, in place over p0 (reads p1's window);
//   ladder B y1 = -sqrt2 p1 - S0 y0, in place over p1 (reads y0's window).
// The adjoint runs the transposed stages from the last level up (B^T, A^T, then
// the inverse split scatters the components back, scaling p0 by 1/sqrt2).
// Every ladder pass is dst = alpha*dst + beta*S_b(src), S_b the 12x12 separable
// 'pkva' filter with `b` rows/columns of extension before (S0: b = 5, S1: b = 6;
// the adjoint of S_b is S_{11-b}), periodic, or 'qper_col' at level 1 (rows
// outside the band come shifted by qs columns; the adjoint shifts by -qs).
// A pass writes only its dst slot at the positions it owns and reads only the
// other slot: no race, no extra buffer.
//
// The ladder block (ladder_block): a thread owns RB x CB outputs (BlockShape); it wraps the
// CB+11 window columns once (offset table in registers), marches down the RB+11
// window rows (one wrap step per row), filters each row horizontally into CB
// values (12 taps, compile-time constants) and accumulates the 12 vertical taps
// into its RB x CB accumulators. Fully unrolled: the static SASS of the block is
// its dynamic count (sstkd/benchmarks/kernel_facts.py measures it through
// dfb_ladder_probe in dfb_kernels.cu).
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>

#include "device_utils.cuh"
#include "lp_plane.cuh"

namespace sstkd {
namespace dfbp {

constexpr int kTaps = 12;
constexpr double kSqrt2 = 1.41421356237309504880;
constexpr double kInvSqrt2 = 0.70710678118654752440;

// The modulated 'pkva' ladder filter fm, flipped (the reference's conv2d correlates):
// out[i] = sum_t tap(t) * x[i + t - b]. fm is antisymmetric: tap(11 - t) = -tap(t).
template <typename Acc>
SSTKD_HD constexpr Acc tap(int t) {
  const double v = t == 0 || t == 11 ? 0.0144
                   : t == 1 || t == 10 ? 0.0272
                   : t == 2 || t == 9  ? 0.0526
                   : t == 3 || t == 8  ? 0.0972
                   : t == 4 || t == 7  ? 0.193
                                       : 0.63;
  return Acc(t < 6 ? -v : v);
}

// Outputs per thread of the ladder block: 16 x 4 in float32 (64 accumulators), 8 x 2 in float64
// (no spills at 128 registers); per extension kind (QPER: the level-1 'qper_col' block).
template <typename Acc, bool QPER>
struct BlockShape {
  static constexpr int RB = 16, CB = 4;
};
template <bool QPER>
struct BlockShape<double, QPER> {
  static constexpr int RB = 8, CB = 2;
};

// f(std::integral_constant<int, i>{}) for i = 0 .. N-1, unrolled at compile time (a plain
// `#pragma unroll` of the 27-row window loop is not honoured by nvcc once the body is large).
template <typename F, int... I>
SSTKD_HD void unroll_seq(F&& f, std::integer_sequence<int, I...>) {
  (f(std::integral_constant<int, I>{}), ...);
}
template <int N, typename F>
SSTKD_HD void unroll(F&& f) {
  unroll_seq(f, std::make_integer_sequence<int, N>{});
}

// Periodic successor of an index in [0, n).
SSTKD_HD int next_wrapped(int v, int n) { return v + 1 == n ? 0 : v + 1; }

// v mod n for v usually within one period of [0, n) (two compare-and-adds); the modulo only
// for the rare values further out (bands narrower than the shear).
SSTKD_HD int wrap_near(int v, int n) {
  v = v >= n ? v - n : v;
  v = v < 0 ? v + n : v;
  return (unsigned)v < (unsigned)n ? v : dev::wrap(v, n);
}

// Calls f(r, c) for every element of `rows` rows of `cols` columns: groups of up to 32 threads
// take rows, the threads of a group consecutive columns (conflict-free shared memory, coalesced
// global memory, no division per element).
template <typename F>
SSTKD_HD void for_rows(int rows, int cols, int tid, int nt, F&& f) {
  const int lanes = nt < 32 ? nt : 32, groups = nt / lanes;
  const int grp = tid / lanes, lane = tid - grp * lanes;
  if (grp >= groups) return;
  for (int r = grp; r < rows; r += groups)
    for (int c = lane; c < cols; c += lanes) f(r, c);
}

// One ladder block: dst[i][j] = alpha*dst[i][j] + beta*S_b(src)[i][j] for the RB x CB
// outputs at (i0, j0) of an h x w band (outputs outside the band are not written).
template <typename Acc, bool QPER>
SSTKD_HD void ladder_block(const Acc* __restrict__ src, Acc* __restrict__ dst, int h, int w, int i0, int j0, int b,
                           int qs, Acc alpha, Acc beta) {
  constexpr int RB = BlockShape<Acc, QPER>::RB, CB = BlockShape<Acc, QPER>::CB;
  constexpr int WR = RB + kTaps - 1, WC = CB + kTaps - 1;
  // window columns: one modulo, then periodic successors (offset tables in registers)
  int col[WC];
  int colq[QPER ? WC : 1];
  col[0] = dev::wrap(j0 - b, w);
  if (QPER) colq[0] = dev::wrap(j0 - b + qs, w);
#pragma unroll
  for (int c = 1; c < WC; ++c) {
    col[c] = next_wrapped(col[c - 1], w);
    if (QPER) colq[c] = next_wrapped(colq[c - 1], w);
  }
  Acc acc[RB][CB];
  const int er0 = i0 - b;  // extended row of window row 0
  int rr = dev::wrap(er0, h);
  unroll<WR>([&](auto rc) {
    constexpr int r = decltype(rc)::value;
    const Acc* row = src + rr * w;
    Acc x[WC];
    if (QPER) {
      const bool outside = (unsigned)(er0 + r) >= (unsigned)h;
#pragma unroll
      for (int c = 0; c < WC; ++c) x[c] = row[outside ? colq[c] : col[c]];
    } else {
#pragma unroll
      for (int c = 0; c < WC; ++c) x[c] = row[col[c]];
    }
    Acc hs[CB];
#pragma unroll
    for (int k = 0; k < CB; ++k) {
      Acc s = tap<Acc>(0) * x[k];
#pragma unroll
      for (int t = 1; t < kTaps; ++t) s += tap<Acc>(t) * x[k + t];
      hs[k] = s;
    }
    unroll<RB>([&](auto ic) {
      constexpr int i = decltype(ic)::value, t = r - i;
      if constexpr (t == 0) {
#pragma unroll
        for (int k = 0; k < CB; ++k) acc[i][k] = tap<Acc>(0) * hs[k];
      } else if constexpr (t > 0 && t < kTaps) {
#pragma unroll
        for (int k = 0; k < CB; ++k) acc[i][k] += tap<Acc>(t) * hs[k];
      }
    });
    rr = next_wrapped(rr, h);
  });
#pragma unroll
  for (int i = 0; i < RB; ++i) {
    if (i0 + i < h) {
      Acc* out = dst + (i0 + i) * w + j0;
#pragma unroll
      for (int k = 0; k < CB; ++k)
        if (j0 + k < w) out[k] = alpha * out[k] + beta * acc[i][k];
    }
  }
}

// ------------------------------------------------------------------------------- tree geometry
// Split kinds of a group's parents.
enum Split : int { k1r = 0, k2c = 1, kRows = 2, kCols = 3 };

// The bands of tree level l (1-based) that share a shape: children bands [band0, band0 + nb)
// of size h x w, made from parents of size ph x pw by `split`.
struct Group {
  int band0, nb, h, w, ph, pw, split;
};

SSTKD_HD int num_groups(int l) { return l >= 3 ? 2 : 1; }

SSTKD_HD Group group_of(int l, int g, int H, int W) {
  if (l == 1) return {0, 2, H / 2, W, H, W, k1r};
  if (l == 2) return {0, 4, H / 2, W / 2, H / 2, W, k2c};
  const int half = 1 << (l - 1);
  if (g == 0) return {0, half, H >> (l - 1), W / 2, H >> (l - 2), W / 2, kRows};
  return {half, half, H / 2, W >> (l - 1), H / 2, W >> (l - 2), kCols};
}

SSTKD_HD Group group_of_band(int l, int band, int H, int W) {
  return group_of(l, l >= 3 && band >= (1 << (l - 1)) ? 1 : 0, H, W);
}

// Slot of y0 among the two children 2K, 2K+1 of parent band K.
SSTKD_HD int y0_slot(int l) { return l == 1 ? 0 : 1; }

// Parent position (row, col) of component q at (rho, c) of parent band K (toolbox resamplings);
// parent size g.ph x g.pw. SPLIT is a template argument: the split loops are unswitched.
template <int SPLIT>
SSTKD_HD void split_source(const Group& g, int K, int q, int rho, int c, int& row, int& col) {
  const int H = g.ph, W = g.pw;
  if (SPLIT == k1r) {  // y = R2(x); p_q = R3(roll(y[q::2], -q, cols))
    col = wrap_near(c + rho + q, W);
    row = wrap_near(2 * rho + q - col, H);
  } else if (SPLIT == k2c) {  // y = R4(x); p_q = R1(roll(y[:, q::2], -q, rows))
    row = wrap_near(rho + c + q, H);
    col = wrap_near(2 * c + q - row, W);
  } else if (SPLIT == kRows) {  // P1 (even band) / P2 (odd band)
    const int odd = K & 1;
    row = 2 * rho + q;
    col = wrap_near(c + (1 - 2 * odd) * rho + q * (1 - odd), W);
  } else {  // P3 (even band) / P4 (odd band)
    const int odd = K & 1;
    col = 2 * c + q;
    row = wrap_near(rho + (1 - 2 * odd) * c + q * (1 - odd), H);
  }
}

// Index in the final sub-band order (dfb_dec's list) of child band `band` of the last level L.
SSTKD_HD int final_band(int L, int band) {
  if (L == 1) return band;
  if (L == 2) return band < 2 ? band : 5 - band;
  const int half = 1 << (L - 1);
  return band < half ? band : 3 * half - 1 - band;  // the second half is reversed
}

// Offset in the level-L buffer of position (row, col) of final sub-band fb (backsampling inverted).
SSTKD_HD int final_source(int L, int H, int W, int fb, int row, int col) {
  const int area = (H * W) >> L;
  if (L == 1) {  // backsampling R4, then R1 on even / odd columns
    const int h = H / 2, w = W;
    const int rho = wrap_near(row + col / 2, h);
    return fb * area + rho * w + wrap_near(col - rho, w);
  }
  if (L == 2) return final_band(2, fb) * area + row * (W / 2) + col;
  const int half = 1 << (L - 1), h4 = 1 << (L - 2);
  if (fb < half) {  // R3 with shift s
    const int w = W / 2, s = 2 * (fb / 2) + 1 - h4;
    return fb * area + row * w + wrap_near(col + s * row, w);
  }
  const int cb = 2 * half - 1 - fb;  // within the second half; R1 with shift s
  const int h = H / 2, w = W >> (L - 1), s = 2 * (cb / 2) + 1 - h4;
  return (half + cb) * area + wrap_near(row + s * col, h) * w + col;
}

// ------------------------------------------------------------------------------------ phases
enum Kind : int {
  kLoadX,          // x plane -> buf[0]
  kSplit,          // level l: buf[(l-1)&1] -> buf[l&1]
  kLadder,         // level l, pass `sub` (ladder_pass) on buf[l&1]
  kMerge,          // level l: inverse split buf[l&1] -> buf[(l-1)&1], p0 scaled by 1/sqrt2 if sub
  kWriteBands,     // buf[L&1] -> the sub-bands (final layout)
  kReadBands,      // sub-band cotangents (final layout) -> buf[L&1]; sub 1: from band_in[] (null: zeros)
  kEnergyPartial,  // per-band partial sums of squares of buf[L&1] -> buf[(L+1)&1]
  kEnergyFinal,    // partials -> en (N, K)
  kScaleG,         // buf[L&1] *= 2*g[n, final band]
  kStoreX,         // buf[0] -> gx plane
  kLowPartial,     // energy with a lowpass: kLowLanes partial sums of squares of `low` -> buf1
  kLowFinal,       // partials -> en[n, 0]
  kLowGrad,        // energy adjoint with a lowpass: g_low = 2*g[n, 0]*low
  // a whole pyramid level (kLevelEnergy / kLevelEnergyAdjoint): the LP level in shared memory,
  // buf0 = the level input -> its bandpass (sub 0: lp_dec) or g_band -> g_x (sub 1: the adjoint),
  // buf1 = the separable passes' temporary, lowbuf = the coarse plane (lp_plane.cuh)
  kLpARows,        // analysis, vertical: buf0 -> buf1
  kLpACols,        // analysis, horizontal: buf1 -> lowbuf (sub 1: lowbuf -= ...)
  kLpSRows,        // synthesis, vertical: lowbuf -> buf1
  kLpSCols,        // synthesis, horizontal: buf0 -= (sub 1: +=) ... buf1
  kStoreLow,       // lowbuf -> low_out (the next level's input)
  kLoadGLow,       // g_low_in -> lowbuf, or (the coarsest level) lowbuf *= 2*g[n, 0]
};

// Partial sums of the lowpass energy (a constant, not the thread count: the same sum on any launch).
constexpr int kLowLanes = 256;

struct Phase {
  int kind, level, sub;
};

constexpr int kMaxLevels = 20;
// The level-dec adjoint reads each sub-band cotangent where it lies (a pointer per band, no stacking
// copy): up to 2^kMaxBandPtrLevels bands.
constexpr int kMaxBandPtrLevels = 5;
constexpr int kMaxBandPtrs = 1 << kMaxBandPtrLevels;
constexpr int kMaxPhases = 6 * kMaxLevels + 12;  // the level-energy adjoint's program is the longest

// With a lowpass (energy modes only): the energy program starts with kLowPartial, kLowFinal,
// the adjoint's with kLowGrad.
SSTKD_HD int low_phases(DfbMode m, bool low) {
  return !low ? 0 : m == DfbMode::kEnergy ? 2 : m == DfbMode::kEnergyAdjoint ? 1 : 0;
}

SSTKD_HD int num_phases(DfbMode m, int L, bool low) {
  const int extra = low_phases(m, low);
  switch (m) {
    case DfbMode::kEnergy:
      return 3 * L + 3 + extra;
    case DfbMode::kEnergyAdjoint:
      return 6 * L + 3 + extra;
    default:  // dec, rec and their adjoints
      return 3 * L + 2;
  }
}

// Ladder passes (sub): 0 A, 1 B (dec); 2 B^T, 3 A^T (dec adjoint); 4 R1, 5 R2 (rec); 6 T1, 7 T2
// (rec adjoint):
//   A   y0 = (p0 - S1 p1)/sqrt2        B   y1 = -sqrt2 p1 - S0 y0
//   B^T t  = g_y0 - S0^T g_y1          A^T g_p1 = -sqrt2 g_y1 - S1^T t/sqrt2   (g_p0 = t/sqrt2 in the merge)
//   R1  p1 = -(y1 + S0 y0)/sqrt2       R2  p0 = sqrt2 y0 + S1 p1
//   T1  g_y1 = -(g_p1 + S1^T g_p0)/sqrt2   T2  g_y0 = sqrt2 g_p0 + S0^T g_y1
// with S0 = S_5, S1 = S_6, S_b^T = S_{11-b}.
struct LadderPass {
  bool dst_y0, adjoint;
  int b;
  int alpha, beta;  // coefficient codes (coefficient<Acc>): no float64 constants in float kernels
};

// 0: 1, 1: -1, 2: sqrt2, 3: -sqrt2, 4: 1/sqrt2, 5: -1/sqrt2, in Acc.
template <typename Acc>
SSTKD_HD Acc coefficient(int code) {
  const Acc m = code < 2 ? Acc(1) : code < 4 ? Acc(kSqrt2) : Acc(kInvSqrt2);
  return (code & 1) ? -m : m;
}

SSTKD_HD LadderPass ladder_pass(int sub) {
  switch (sub) {
    case 0: return {true, false, 6, 4, 5};   // A:   1/sqrt2, -1/sqrt2
    case 1: return {false, false, 5, 3, 1};  // B:   -sqrt2, -1
    case 2: return {true, true, 6, 0, 1};    // B^T: 1, -1
    case 3: return {false, true, 5, 3, 5};   // A^T: -sqrt2, -1/sqrt2
    case 4: return {false, false, 5, 5, 5};  // R1:  -1/sqrt2, -1/sqrt2
    case 5: return {true, false, 6, 2, 0};   // R2:  sqrt2, 1
    case 6: return {false, true, 5, 5, 5};   // T1:  -1/sqrt2, -1/sqrt2
    default: return {true, true, 6, 2, 0};   // T2:  sqrt2, 1
  }
}

// Top-down (split, ladder `first`, ladder `first`+1) per level, or bottom-up (ladder, ladder, merge).
SSTKD_HD Phase down_phase(int q, int first) { return {q % 3 == 0 ? kSplit : kLadder, q / 3 + 1, first + q % 3 - 1}; }
SSTKD_HD Phase up_phase(int q, int L, int first, int scale_p0) {
  return {q % 3 == 2 ? kMerge : kLadder, L - q / 3, q % 3 == 2 ? scale_p0 : first + q % 3};
}

SSTKD_HD Phase phase_at(DfbMode m, int L, int p, bool low) {
  const int extra = low_phases(m, low);
  if (p < extra) return {m == DfbMode::kEnergy ? (p == 0 ? kLowPartial : kLowFinal) : kLowGrad, 0, 0};
  p -= extra;
  const int tree = 3 * L;
  switch (m) {
    case DfbMode::kDec:
      if (p == 0) return {kLoadX, 0, 0};
      if (p <= tree) return down_phase(p - 1, 0);
      return {kWriteBands, L, 0};
    case DfbMode::kDecAdjoint:
      if (p == 0) return {kReadBands, L, 0};
      if (p <= tree) return up_phase(p - 1, L, 2, 1);
      return {kStoreX, 0, 0};
    case DfbMode::kRec:
      if (p == 0) return {kReadBands, L, 0};
      if (p <= tree) return up_phase(p - 1, L, 4, 0);
      return {kStoreX, 0, 0};
    case DfbMode::kRecAdjoint:
      if (p == 0) return {kLoadX, 0, 0};
      if (p <= tree) return down_phase(p - 1, 6);
      return {kWriteBands, L, 0};
    case DfbMode::kEnergy:
      if (p == 0) return {kLoadX, 0, 0};
      if (p <= tree) return down_phase(p - 1, 0);
      return {p == tree + 1 ? kEnergyPartial : kEnergyFinal, L, 0};
    default:
      if (p == 0) return {kLoadX, 0, 0};
      if (p <= tree) return down_phase(p - 1, 0);
      if (p == tree + 1) return {kScaleG, L, 0};
      if (p <= 2 * tree + 1) return up_phase(p - tree - 2, L, 2, 1);
      return {kStoreX, 0, 0};
  }
}

// Arguments of one launch. Element types are runtime values (`x_dtype` for x / gx,
// `band_dtype` for the sub-bands): one kernel instance per accumulation type Acc
// (float: float32/float16/bfloat16 tensors; double: float64) keeps the build short.
template <typename Acc>
struct Args {
  DfbMode mode;
  Dtype x_dtype, band_dtype;
  int levels, H, W;
  int64_t N;               // planes
  const void* x;           // (N, H, W)
  void* bands;             // (K, N, H*W/K) dec output
  const void* grad_bands;  // (K, N, H*W/K) dec adjoint input
  const Acc* g;            // (N, K) energy cotangent
  Acc* en;                 // (N, K) energies, or (N, 1 + K) with `low` (its energy first); g alike
  void* gx;                // (N, H, W)
  const void* low;         // energy modes: (N, low_hw) lowpass of x_dtype whose energy comes first, or null
  void* g_low;             // (N, low_hw) its gradient (energy adjoint)
  int low_hw;
  int64_t g_stride;        // row stride of g in elements (0: dense, K or 1 + K)
  int low_first;           // en / g have the lowpass column first (`low` given, or the coarsest level)
  void* low_out;           // level modes: (N, H/2, W/2) the level's lowpass, of low_dtype
  const void* g_low_in;    // level adjoints: (N, H/2, W/2) its cotangent, of low_dtype (level dec: null = zeros)
  Dtype low_dtype;         // of low_out / g_low_in (the level-energy modes: the accumulation type, set_program)
  const void* band_in[kMaxBandPtrs];  // level-dec adjoint: sub-band cotangent fb, (N, H*W/K) of band_dtype, or null
  // The program, decoded on the host (set_program): the kernel reads phase p from its
  // parameters instead of keeping mode-dependent decode state live next to the ladder block.
  int num_phases;
  Phase phases[kMaxPhases];
};

// The program of a whole pyramid level: the LP level, then the DFB energy tree on its bandpass
// (and the lowpass energy at the coarsest level); the adjoint recomputes both, runs the tree's
// adjoint on 2*g*y and the LP adjoint with the lowpass cotangent. The level decomposition
// (kLevelDec) stores the lowpass and the sub-bands instead; its adjoint (kLevelDecAdjoint) needs no
// recomputation (linear): the tree's adjoint of the sub-band cotangents, then the LP adjoint.
template <typename Acc>
SSTKD_HD void set_level_program(Args<Acc>& a) {
  const int L = a.levels;
  int p = 0;
  const auto add = [&](int kind, int level, int sub) { a.phases[p++] = Phase{kind, level, sub}; };
  const auto lp = [&](int sub) {
    add(kLpARows, 0, sub);
    add(kLpACols, 0, sub);
    add(kLpSRows, 0, sub);
    add(kLpSCols, 0, sub);
  };
  if (a.mode == DfbMode::kLevelDec) {
    add(kLoadX, 0, 0);
    lp(0);
    add(kStoreLow, 0, 0);
    for (int q = 0; q < 3 * L; ++q) a.phases[p++] = down_phase(q, 0);
    add(kWriteBands, L, 0);
    a.num_phases = p;
    return;
  }
  if (a.mode == DfbMode::kLevelDecAdjoint) {
    add(kReadBands, L, 1);
    for (int q = 0; q < 3 * L; ++q) a.phases[p++] = up_phase(q, L, 2, 1);
    add(kLoadGLow, 0, 0);
    lp(1);
    add(kStoreX, 0, 0);
    a.num_phases = p;
    return;
  }
  a.low_dtype = std::is_same<Acc, double>::value ? Dtype::kFloat64 : Dtype::kFloat32;
  const bool adj = a.mode == DfbMode::kLevelEnergyAdjoint;
  add(kLoadX, 0, 0);
  add(kLpARows, 0, 0);
  add(kLpACols, 0, 0);
  add(kLpSRows, 0, 0);
  add(kLpSCols, 0, 0);
  if (!adj) {
    add(kStoreLow, 0, 0);
    if (a.low_first) {
      add(kLowPartial, 0, 0);
      add(kLowFinal, 0, 0);
    }
  }
  for (int q = 0; q < 3 * L; ++q) a.phases[p++] = down_phase(q, 0);
  if (!adj) {
    add(kEnergyPartial, L, 0);
    add(kEnergyFinal, L, 0);
  } else {
    add(kScaleG, L, 0);
    for (int q = 0; q < 3 * L; ++q) a.phases[p++] = up_phase(q, L, 2, 1);
    add(kLoadGLow, 0, 0);
    add(kLpARows, 0, 1);
    add(kLpACols, 0, 1);
    add(kLpSRows, 0, 1);
    add(kLpSCols, 0, 1);
    add(kStoreX, 0, 0);
  }
  a.num_phases = p;
}

// Fills a.num_phases / a.phases from a.mode and a.levels (levels in [1, kMaxLevels]).
template <typename Acc>
SSTKD_HD void set_program(Args<Acc>& a) {
  if (a.mode == DfbMode::kLevelEnergy || a.mode == DfbMode::kLevelEnergyAdjoint || a.mode == DfbMode::kLevelDec ||
      a.mode == DfbMode::kLevelDecAdjoint) {
    set_level_program(a);
    return;
  }
  const bool low = a.low != nullptr;
  a.low_first = low ? 1 : 0;
  a.num_phases = num_phases(a.mode, a.levels, low);
  for (int p = 0; p < a.num_phases; ++p) a.phases[p] = phase_at(a.mode, a.levels, p, low);
}

// Element i of a tensor of dtype d, in Acc (a uniform branch per element: the
// load / store phases are a small part of the work).
SSTKD_HD float load_elem(const void* p, int64_t i, Dtype d, float) {
  switch (d) {
    case Dtype::kFloat16:
      return dev::to_acc(static_cast<const __half*>(p)[i]);
    case Dtype::kBFloat16:
      return dev::to_acc(static_cast<const __nv_bfloat16*>(p)[i]);
    default:
      return static_cast<const float*>(p)[i];
  }
}
SSTKD_HD double load_elem(const void* p, int64_t i, Dtype, double) { return static_cast<const double*>(p)[i]; }

SSTKD_HD void store_elem(void* p, int64_t i, Dtype d, float v) {
  switch (d) {
    case Dtype::kFloat16:
      dev::store(static_cast<__half*>(p) + i, v);
      break;
    case Dtype::kBFloat16:
      dev::store(static_cast<__nv_bfloat16*>(p) + i, v);
      break;
    default:
      static_cast<float*>(p)[i] = v;
  }
}
SSTKD_HD void store_elem(void* p, int64_t i, Dtype, double v) { static_cast<double*>(p)[i] = v; }

// Ladder blocks of one group: RB x CB outputs of every child band of its parents.
template <int RB, int CB>
SSTKD_HD int group_tiles(const Group& g) {
  return g.nb / 2 * ((g.h + RB - 1) / RB) * ((g.w + CB - 1) / CB);
}

// Ladder pass `sub` of level l on buf (tiles of every parent band of both groups); QPER: level 1.
template <typename Acc, bool QPER>
SSTKD_HD void ladder_tiles(Acc* buf, int l, int sub, int H, int W, int tid, int nt) {
  constexpr int RB = BlockShape<Acc, QPER>::RB, CB = BlockShape<Acc, QPER>::CB;
  const LadderPass lp = ladder_pass(sub);
  const bool dst_y0 = lp.dst_y0;
  const int b = lp.b;
  const Acc alpha = coefficient<Acc>(lp.alpha), beta = coefficient<Acc>(lp.beta);
  const int area = (H * W) >> l, ys = y0_slot(l);
  // tiles of group 0, then of group 1; the group geometry is recomputed per tile (a few integer
  // ops per block) rather than kept live next to the block's accumulators
  const int ng = num_groups(l);
  const int tiles0 = group_tiles<RB, CB>(group_of(l, 0, H, W));
  const int total = tiles0 + (ng == 2 ? group_tiles<RB, CB>(group_of(l, 1, H, W)) : 0);
  for (int t = tid; t < total; t += nt) {
    const bool second = t >= tiles0;
    const Group gr = group_of(l, second ? 1 : 0, H, W);
    const int u = second ? t - tiles0 : t, tc = (gr.w + CB - 1) / CB, per = (gr.h + RB - 1) / RB * tc;
    const int K = gr.band0 / 2 + u / per, rem = u % per;
    const int i0 = rem / tc * RB, j0 = rem % tc * CB;
    const int y0 = 2 * K + ys, y1 = 2 * K + 1 - ys;
    const Acc* src = buf + (int64_t)(dst_y0 ? y1 : y0) * area;
    Acc* dst = buf + (int64_t)(dst_y0 ? y0 : y1) * area;
    // 'qper_col': rows outside come shifted by round(w/2); the adjoint by -round(w/2)
    const int qs = QPER ? (lp.adjoint ? gr.w / 2 : (gr.w + 1) / 2) : 0;
    ladder_block<Acc, QPER>(src, dst, gr.h, gr.w, i0, j0, b, qs, alpha, beta);
  }
}

template <typename Acc>
SSTKD_HD void ladder_phase(Acc* buf, int l, int sub, int H, int W, int tid, int nt) {
  if (l == 1)
    ladder_tiles<Acc, true>(buf, l, sub, H, W, tid, nt);
  else
    ladder_tiles<Acc, false>(buf, l, sub, H, W, tid, nt);
}

// Split (forward) or merge (adjoint) of the rows of group g of level l: child element <-> parent element.
template <int SPLIT, typename Acc, bool MERGE>
SSTKD_HD void split_group(const Acc* from, Acc* to, const Group& g, int l, int H, int W, Acc p0_scale, int tid,
                          int nt) {
  const int area = (H * W) >> l, parea = (H * W) >> (l - 1), ys = y0_slot(l);
  for_rows(g.nb * g.h, g.w, tid, nt, [&](int r, int c) {
    const int band = g.band0 + r / g.h, rho = r - (band - g.band0) * g.h;
    const int K = band >> 1, q = (band & 1) == ys ? 0 : 1;
    int row, col;
    split_source<SPLIT>(g, K, q, rho, c, row, col);
    const int p = K * parea + row * g.pw + col, e = band * area + rho * g.w + c;
    if (MERGE)
      to[p] = q == 0 ? from[e] * p0_scale : from[e];
    else
      to[e] = from[p];
  });
}

template <typename Acc, bool MERGE>
SSTKD_HD void split_phase(const Acc* from, Acc* to, int l, int H, int W, Acc p0_scale, int tid, int nt) {
  for (int gi = 0; gi < num_groups(l); ++gi) {
    const Group g = group_of(l, gi, H, W);
    switch (g.split) {
      case k1r:
        split_group<k1r, Acc, MERGE>(from, to, g, l, H, W, p0_scale, tid, nt);
        break;
      case k2c:
        split_group<k2c, Acc, MERGE>(from, to, g, l, H, W, p0_scale, tid, nt);
        break;
      case kRows:
        split_group<kRows, Acc, MERGE>(from, to, g, l, H, W, p0_scale, tid, nt);
        break;
      default:
        split_group<kCols, Acc, MERGE>(from, to, g, l, H, W, p0_scale, tid, nt);
    }
  }
}

// Phase p of a launch for plane n (the program of set_program); buf0/buf1: the two H*W buffers,
// lowbuf: the H*W/4 coarse plane of the level modes (else unused).
template <typename Acc>
SSTKD_HD void run_phase(const Args<Acc>& a, int n, Acc* buf0, Acc* buf1, int p, int tid, int nt,
                        Acc* lowbuf = nullptr) {
  const int L = a.levels, H = a.H, W = a.W, HW = H * W, K = 1 << L, area = HW >> L;
  const int lo = a.low_first ? 1 : 0, es = K + lo;  // energies / g: row stride, first band's column
  const int low_hw = a.low != nullptr ? a.low_hw : HW / 4;  // the lowpass: global `low`, or lowbuf
  const Phase ph = a.phases[p];
  Acc* const cur = (ph.level & 1) ? buf1 : buf0;   // level ph.level
  Acc* const prev = (ph.level & 1) ? buf0 : buf1;  // level ph.level - 1 (or the free buffer)
  switch (ph.kind) {
    case kLoadX: {
      for (int e = tid; e < HW; e += nt) buf0[e] = load_elem(a.x, (int64_t)n * HW + e, a.x_dtype, Acc());
      break;
    }
    case kStoreX: {
      for (int e = tid; e < HW; e += nt) store_elem(a.gx, (int64_t)n * HW + e, a.x_dtype, buf0[e]);
      break;
    }
    case kSplit:
      split_phase<Acc, false>(prev, cur, ph.level, H, W, Acc(1), tid, nt);
      break;
    case kMerge:
      split_phase<Acc, true>(cur, prev, ph.level, H, W, Acc(ph.sub ? kInvSqrt2 : 1.0), tid, nt);
      break;
    case kLadder:
      ladder_phase<Acc>(cur, ph.level, ph.sub, H, W, tid, nt);
      break;
    case kWriteBands:
    case kReadBands: {
      for (int gi = 0; gi < num_groups(L); ++gi) {  // final bands of a group share its shape
        const Group g = group_of(L, gi, H, W);
        for_rows(g.nb * g.h, g.w, tid, nt, [&](int r, int col) {
          const int fb = g.band0 + r / g.h, row = r - (fb - g.band0) * g.h;
          const int s = final_source(L, H, W, fb, row, col);
          const int64_t o = ((int64_t)fb * a.N + n) * area + row * g.w + col;
          if (ph.kind == kWriteBands) {
            store_elem(a.bands, o, a.band_dtype, cur[s]);
          } else if (ph.sub) {  // the level-dec adjoint: each band where it lies
            const void* src = a.band_in[fb];
            cur[s] = src != nullptr ? load_elem(src, (int64_t)n * area + row * g.w + col, a.band_dtype, Acc()) : Acc(0);
          } else {
            cur[s] = load_elem(a.grad_bands, o, a.band_dtype, Acc());
          }
        });
      }
      break;
    }
    case kEnergyPartial: {  // K x lanes partial sums, lane-strided (fixed order: deterministic)
      const Acc* buf = cur;
      Acc* part = prev;
      const int lanes = area < 32 ? area : 32;
      for (int it = tid; it < K * lanes; it += nt) {
        const int k = it / lanes, lane = it - k * lanes;
        const Acc* v = buf + k * area;
        Acc s = Acc(0);
        for (int e = lane; e < area; e += lanes) s += v[e] * v[e];
        part[it] = s;
      }
      break;
    }
    case kEnergyFinal: {
      const Acc* part = prev;
      const int lanes = area < 32 ? area : 32;
      for (int k = tid; k < K; k += nt) {
        Acc s = Acc(0);
        for (int i = 0; i < lanes; ++i) s += part[k * lanes + i];
        a.en[(int64_t)n * es + lo + final_band(L, k)] = s;
      }
      break;
    }
    case kScaleG: {
      Acc* buf = cur;
      const Acc* g = a.g + (int64_t)n * (a.g_stride ? a.g_stride : es) + lo;
      for (int e = tid; e < HW; e += nt) {
        const int k = e / area;
        buf[e] *= Acc(2) * g[final_band(L, k)];
      }
      break;
    }
    case kLowPartial: {  // buf1 is free before the tree (lanes <= low_hw <= HW)
      const int lanes = low_hw < kLowLanes ? low_hw : kLowLanes;
      const int64_t base = (int64_t)n * low_hw;
      for (int it = tid; it < lanes; it += nt) {
        Acc s = Acc(0);
        for (int e = it; e < low_hw; e += lanes) {
          const Acc v = a.low != nullptr ? load_elem(a.low, base + e, a.x_dtype, Acc()) : lowbuf[e];
          s += v * v;
        }
        buf1[it] = s;
      }
      break;
    }
    case kLowFinal: {
      const int lanes = low_hw < kLowLanes ? low_hw : kLowLanes;
      if (tid == 0) {
        Acc s = Acc(0);
        for (int i = 0; i < lanes; ++i) s += buf1[i];
        a.en[(int64_t)n * es] = s;
      }
      break;
    }
    case kLowGrad: {
      const Acc g2 = Acc(2) * a.g[(int64_t)n * (a.g_stride ? a.g_stride : es)];
      const int64_t base = (int64_t)n * a.low_hw;
      for (int e = tid; e < a.low_hw; e += nt)
        store_elem(a.g_low, base + e, a.x_dtype, g2 * load_elem(a.low, base + e, a.x_dtype, Acc()));
      break;
    }
    case kLpARows:
      if (ph.sub)
        lpp::analysis_rows<lp::FiltG>(buf0, buf1, H, W, tid, nt);
      else
        lpp::analysis_rows<lp::FiltH>(buf0, buf1, H, W, tid, nt);
      break;
    case kLpACols:
      if (ph.sub)
        lpp::analysis_cols<lp::FiltG, true>(buf1, lowbuf, H, W, tid, nt);
      else
        lpp::analysis_cols<lp::FiltH, false>(buf1, lowbuf, H, W, tid, nt);
      break;
    case kLpSRows:
      if (ph.sub)
        lpp::synthesis_rows<lp::FiltH>(lowbuf, buf1, H, W, tid, nt);
      else
        lpp::synthesis_rows<lp::FiltG>(lowbuf, buf1, H, W, tid, nt);
      break;
    case kLpSCols:
      if (ph.sub)
        lpp::synthesis_cols<lp::FiltH>(buf1, buf0, H, W, Acc(1), tid, nt);
      else
        lpp::synthesis_cols<lp::FiltG>(buf1, buf0, H, W, Acc(-1), tid, nt);
      break;
    case kStoreLow: {
      for (int e = tid; e < low_hw; e += nt) store_elem(a.low_out, (int64_t)n * low_hw + e, a.low_dtype, lowbuf[e]);
      break;
    }
    case kLoadGLow: {
      if (a.low_first) {  // the coarsest level: the lowpass energy's gradient 2*g[n, 0]*low
        const Acc g2 = Acc(2) * a.g[(int64_t)n * (a.g_stride ? a.g_stride : es)];
        for (int e = tid; e < low_hw; e += nt) lowbuf[e] *= g2;
      } else {
        const void* gl = a.g_low_in;  // null (level dec, an unused lowpass): zeros
        for (int e = tid; e < low_hw; e += nt)
          lowbuf[e] = gl != nullptr ? load_elem(gl, (int64_t)n * low_hw + e, a.low_dtype, Acc()) : Acc(0);
      }
      break;
    }
  }
}

// Whether (x_dtype, band_dtype) is a supported pair: both float64 (double accumulation), or
// both among float32 / float16 / bfloat16 (float accumulation).
SSTKD_HD bool is_double(Dtype d) { return d == Dtype::kFloat64; }
SSTKD_HD bool dtypes_supported(Dtype x_dtype, Dtype band_dtype) { return is_double(x_dtype) == is_double(band_dtype); }

}  // namespace dfbp
}  // namespace sstkd
