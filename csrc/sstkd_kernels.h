// Plain C++ interface between the kernel translation units (*.cu, no torch
// headers, fast to compile per arch) and the single binding file (bindings.cpp,
// the only one that includes torch headers). Pointers are untyped; `Dtype`
// says what they hold. Every launcher enqueues on `stream` and returns
// cudaGetLastError() of its launches; the caller checks it.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace sstkd {

// Element type of the tensor arguments. float16/bfloat16/float32 accumulate in
// float32, float64 in float64.
enum class Dtype : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// ---------------------------------------------------------------------------
// One periodic Laplacian-pyramid level ('9-7'), fused in one kernel per tile.
//
// With an analysis operator A (filter fa, then keep even rows/cols) and a
// synthesis operator S (zero-upsample, then filter fs), both periodic:
//   kDecompose:   c = A y;            out = y - S c      (writes c_out and out)
//   kReconstruct: out = S (c_in - A y) + y               (writes out)
// kForward uses fa = h (9 taps), fs = g (7 taps): lp_dec / lp_rec.
// kAdjoint uses fa = g, fs = h, which gives the adjoints:
//   lp_dec backward = kReconstruct/kAdjoint (c_in = grad_low, y = grad_band)
//   lp_rec backward = kDecompose/kAdjoint   (y = grad_x -> grad_low, grad_band)
// y/out are (n, H, W), c_in/c_out (n, H/2, W/2), all contiguous; H, W even.
// Inputs (y, c_in) are of `dtype`, outputs (c_out, out) of `out_dtype` (-1: `dtype`). Mixed pairs:
// only lp_dec of float16/bfloat16 y to float32 outputs (kDecompose/kForward) and its adjoint from
// float32 cotangents to a float16/bfloat16 gradient (kReconstruct/kAdjoint); others are invalid.
enum class LpMode : int { kDecompose = 0, kReconstruct = 1 };
enum class LpFilters : int { kForward = 0, kAdjoint = 1 };

cudaError_t lp_level_launch(Dtype dtype, LpMode mode, LpFilters filters, const void* y, const void* c_in,
                            void* c_out, void* out, int64_t n, int64_t H, int64_t W, cudaStream_t stream,
                            int out_dtype = -1);

// ---------------------------------------------------------------------------
// Soft quantization counts (DESIGN §3.2; exact taps of sstkd/ops/quantize.py).
// s (B, N) of `dtype`; centers (B, L) sorted ascending, in the accumulation
// type (float32, or float64 when dtype is float64); counts/sums (B, L) in the
// accumulation type, zero-filled by the caller:
//   counts[b, n] += sum_i E_in,   sums[b, n] += sum_i E_in * s_i.
// Each pixel has <= 2 taps: lo = #(centers < s) - 1 clamped to [0, L-2], hi = lo + 1.
enum class QuantKernel : int { kTriangular = 0, kStlnet = 1 };

// `num_sms` (the device's multiprocessor count) sizes the grid.
cudaError_t quantize_count_launch(Dtype dtype, QuantKernel kernel, const void* s, const void* centers, void* counts,
                                  void* sums, int64_t B, int64_t N, int64_t L, int num_sms, cudaStream_t stream);

// grad_s[b, i] = sum_taps dE/ds * (grad_counts[n] + grad_sums[n] * s_i) + E * grad_sums[n]
// (centers are constants). grad_counts/grad_sums in the accumulation type,
// grad_s in `dtype`. Either grad pointer may be null (treated as zeros).
cudaError_t quantize_count_backward_launch(Dtype dtype, QuantKernel kernel, const void* s, const void* centers,
                                           const void* grad_counts, const void* grad_sums, void* grad_s, int64_t B,
                                           int64_t N, int64_t L, cudaStream_t stream);

// Largest L the shared-memory histogram kernels accept (larger L is rejected by
// the binding with a clear error).
constexpr int64_t kMaxQuantLevels = 2048;

// ---------------------------------------------------------------------------
// Per-row sum of squares of x (rows, cols), contiguous, accumulated in the
// accumulation type: out[r] = sum_j x[r, j]^2. Deterministic (two passes
// through `partials`, which must hold rows * sum_squares_chunks(cols)
// accumulation-type elements).
int64_t sum_squares_chunks(int64_t cols);
cudaError_t sum_squares_launch(Dtype dtype, const void* x, void* partials, void* out, int64_t rows, int64_t cols,
                               cudaStream_t stream);

// ---------------------------------------------------------------------------
// The whole-plane directional filter bank ('pkva', toolbox dfbdec_l), one CTA per
// image plane with the plane and every tree level in shared memory (dfb_plane.cuh).
// Planes x (input) / gx (output): (N, H, W) of `x_dtype`; sub-bands bands (output) /
// grad_bands (input): (K, N, H*W/K) band-major of `band_dtype`, K = 2^levels, each band in the
// final layout and order of dfb_dec; both dtypes float64, or both among float32 / float16 /
// bfloat16 (accumulation in float32); g / en: (N, K) in the accumulation type, final band order.
//   kDec:           x -> bands
//   kDecAdjoint:    grad_bands -> gx                  (the backward of dfb_dec)
//   kEnergy:        x -> en = per-band sums of squares
//   kEnergyAdjoint: (x, g) -> gx = adjoint of the tree applied to 2*g*y (y recomputed)
//   kRec:           grad_bands (the sub-bands) -> gx (the image)          (dfb_rec)
//   kRecAdjoint:    x (the image cotangent) -> bands (their cotangents)   (the backward of dfb_rec)
// The energy modes optionally fold in a lowpass `low` (N, low_hw) of x_dtype, low_hw <= H*W (the
// contourlet's coarsest LP level): en / g are then (N, 1 + K) with its energy first, and kEnergyAdjoint
// also writes g_low = 2*g[:, 0]*low (N, low_hw) in x_dtype. Null `low`: (N, K) as above.
// g_stride: the row stride of g in elements when its rows are not dense (0: dense).
// H, W as sstkd.geometry.check_dfb_size requires for `levels` >= 1; all contiguous.
enum class DfbMode : int {
  kDec = 0,
  kDecAdjoint = 1,
  kEnergy = 2,
  kEnergyAdjoint = 3,
  kRec = 4,
  kRecAdjoint = 5,
  kLevelEnergy = 6,         // dfb_level_launch only
  kLevelEnergyAdjoint = 7,  // dfb_level_launch only
  kLevelDec = 8,            // dfb_level_dec_launch only
  kLevelDecAdjoint = 9,     // dfb_level_dec_launch only
};

// Dynamic shared memory one CTA needs (two H*W planes of the accumulation type).
int64_t dfb_plane_smem_bytes(Dtype x_dtype, int64_t H, int64_t W);

// cudaErrorInvalidValue for bad sizes or dtype pairs; cudaErrorInvalidConfiguration when the
// planes do not fit in the current device's opt-in shared memory per block (the caller
// checks dfb_plane_smem_bytes first and falls back).
// ---------------------------------------------------------------------------
// A whole contourlet pyramid level per launch (issue 13): one CTA per image plane holds the
// level input x (N, H, W) of x_dtype, runs the LP level ('9-7', lp_plane.cuh) in shared memory
// and the DFB energy tree (`levels`) on its bandpass, with a third buffer of H*W/4 for the
// coarse plane.
//   forward (!adjoint): low_out (N, H/2, W/2) accumulation type = the level's lowpass (the next
//     level's input); en (N, K), or (N, 1 + K) with the lowpass energy first when `last`
//     (the coarsest level);
//   adjoint: (x, g, g_low) -> gx (N, H, W) of x_dtype: recomputes the level, the DFB adjoint of
//     2*g*y, and the LP adjoint with the lowpass cotangent g_low (N, H/2, W/2) accumulation
//     type (unused when `last`: then 2*g[:, 0]*low). g: row stride g_stride (0: dense).
// H, W even and valid DFB sizes for `levels`.
int64_t dfb_level_smem_bytes(Dtype x_dtype, int64_t H, int64_t W);
cudaError_t dfb_level_launch(bool adjoint, Dtype x_dtype, int levels, bool last, const void* x, const void* g,
                             int64_t g_stride, void* en, void* gx, void* low_out, const void* g_low, int64_t N,
                             int64_t H, int64_t W, cudaStream_t stream);

// The decomposition counterpart (contourlet_dec; same shared memory, dfb_level_smem_bytes):
//   forward (!adjoint): x (N, H, W) of x_dtype -> low_out (N, H/2, W/2) of low_dtype and the sub-bands
//     `bands` (K, N, H*W/K) band-major of band_dtype, each in dfb_dec's final layout and order;
//   adjoint: grad_bands[fb] (N, H*W/K) of band_dtype, each where it lies (null: zeros), and g_low
//     (N, H/2, W/2) of low_dtype (null: zeros) -> gx (N, H, W) of x_dtype: the DFB adjoint, then the
//     LP adjoint (linear: nothing recomputed, no input saved).
// x_dtype pairs with band_dtype and low_dtype as dfb_plane_launch's pairs; levels in [1, 5] (the
// adjoint reads at most 32 band pointers).
constexpr int kMaxLevelDecLevels = 5;
cudaError_t dfb_level_dec_launch(bool adjoint, Dtype x_dtype, Dtype band_dtype, Dtype low_dtype, int levels,
                                 const void* x, void* bands, void* low_out, const void* const* grad_bands,
                                 const void* g_low, void* gx, int64_t N, int64_t H, int64_t W, cudaStream_t stream);

cudaError_t dfb_plane_launch(DfbMode mode, Dtype x_dtype, Dtype band_dtype, int levels, const void* x,
                             void* bands, const void* grad_bands, const void* g, void* en, void* gx, int64_t N,
                             int64_t H, int64_t W, cudaStream_t stream, const void* low = nullptr,
                             void* g_low = nullptr, int64_t low_hw = 0, int64_t g_stride = 0);

}  // namespace sstkd
