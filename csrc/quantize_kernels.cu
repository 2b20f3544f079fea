// Soft quantization counts: per-block shared-memory histograms with
// warp-aggregated atomics, merged into the global (B, L) result at the end.
// The taps reproduce sstkd/ops/quantize.py exactly (same comparisons, same
// clamps, same tie rules; quantize_taps.cuh). No torch headers here.
#include "quantize_taps.cuh"

namespace sstkd {
namespace {

using dev::to_acc;
using quant::Taps;
using quant::taps;
using quant::grad_pixel;

constexpr int kThreads = 256;
constexpr unsigned kFull = 0xffffffffu;

// One pixel's contribution: (weight, weight * s) to level `lo` and to level
// lo + 1. Must be called by all 32 lanes of the warp; lo < 0 adds nothing.
// Lanes with the same `lo` (pixels of similar intensity -- most of a warp on
// smooth maps) first sum their four values: the peer group comes from
// __match_any_sync, the sum is a log-step tree over it (each round a lane adds
// the value of its next remaining higher peer, then the lanes at odd
// positions drop out). One lane per group then issues the shared atomics.
template <typename Acc>
__device__ __forceinline__ void warp_aggregated_add(int lo, Acc v[4], Acc* cnt, Acc* sum) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
  const int lane = threadIdx.x & 31;
  unsigned peers = __match_any_sync(kFull, lo);
  const int leader = __ffs(peers) - 1;
  unsigned rank = __popc(peers & ((1u << lane) - 1u));  // my position among the peers
  peers &= 0xfffffffeu << lane;                          // only the higher peers
  while (__any_sync(kFull, peers != 0)) {
    const int next = __ffs(peers);  // 1-based lane of the next higher peer, 0 if none
    Acc t[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) t[k] = __shfl_sync(kFull, v[k], (next - 1) & 31);
    if (next) {
#pragma unroll
      for (int k = 0; k < 4; ++k) v[k] += t[k];
    }
    peers &= __ballot_sync(kFull, !(rank & 1u));  // lanes at odd positions are merged now
    rank >>= 1;
  }
  if (lane != leader) return;
#endif
  if (lo < 0) return;
  if (v[0] != Acc(0)) {
    atomicAdd(cnt + lo, v[0]);
    atomicAdd(sum + lo, v[1]);
  }
  if (v[2] != Acc(0)) {
    atomicAdd(cnt + lo + 1, v[2]);
    atomicAdd(sum + lo + 1, v[3]);
  }
}

template <typename T, QuantKernel K>
__global__ void __launch_bounds__(kThreads)
    quantize_count_kernel(const T* __restrict__ s, const typename dev::AccOf<T>::type* __restrict__ centers,
                          typename dev::AccOf<T>::type* __restrict__ counts,
                          typename dev::AccOf<T>::type* __restrict__ sums, int64_t N, int L) {
  using Acc = typename dev::AccOf<T>::type;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Acc* c_sh = reinterpret_cast<Acc*>(smem_raw);
  Acc* cnt_sh = c_sh + L;
  Acc* sum_sh = cnt_sh + L;
  const int64_t b = blockIdx.y;
  for (int n = threadIdx.x; n < L; n += kThreads) {
    c_sh[n] = centers[b * L + n];
    cnt_sh[n] = Acc(0);
    sum_sh[n] = Acc(0);
  }
  __syncthreads();
  const Acc delta = quant::stl_delta(c_sh, L);
  const T* sb = s + b * N;

  // The loop bound is uniform over the block, so every lane of a warp takes
  // part in each aggregated add (out-of-range lanes with key -1).
  const int64_t stride = (int64_t)gridDim.x * kThreads;
  for (int64_t base = (int64_t)blockIdx.x * kThreads; base < N; base += stride) {
    const int64_t i = base + threadIdx.x;
    const bool valid = i < N;
    const Acc sv = valid ? to_acc(sb[i]) : Acc(0);
    const Taps<Acc> t = taps<K>(sv, c_sh, L, delta);
    Acc v[4] = {t.w_lo, t.w_lo * sv, t.w_hi, t.w_hi * sv};
    warp_aggregated_add(valid ? t.lo : -1, v, cnt_sh, sum_sh);
  }
  __syncthreads();
  for (int n = threadIdx.x; n < L; n += kThreads) {
    if (cnt_sh[n] != Acc(0)) atomicAdd(counts + b * L + n, cnt_sh[n]);
    if (sum_sh[n] != Acc(0)) atomicAdd(sums + b * L + n, sum_sh[n]);
  }
}

template <typename T, QuantKernel K>
__global__ void __launch_bounds__(kThreads)
    quantize_count_backward_kernel(const T* __restrict__ s, const typename dev::AccOf<T>::type* __restrict__ centers,
                                   const typename dev::AccOf<T>::type* __restrict__ grad_counts,
                                   const typename dev::AccOf<T>::type* __restrict__ grad_sums, T* __restrict__ grad_s,
                                   int64_t N, int L) {
  using Acc = typename dev::AccOf<T>::type;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Acc* c_sh = reinterpret_cast<Acc*>(smem_raw);
  Acc* gc_sh = c_sh + L;
  Acc* gs_sh = gc_sh + L;
  const int64_t b = blockIdx.y;
  for (int n = threadIdx.x; n < L; n += kThreads) {
    c_sh[n] = centers[b * L + n];
    gc_sh[n] = grad_counts ? grad_counts[b * L + n] : Acc(0);
    gs_sh[n] = grad_sums ? grad_sums[b * L + n] : Acc(0);
  }
  __syncthreads();
  const Acc delta = quant::stl_delta(c_sh, L);
  const int64_t stride = (int64_t)gridDim.x * kThreads;
  for (int64_t i = (int64_t)blockIdx.x * kThreads + threadIdx.x; i < N; i += stride) {
    const Acc sv = to_acc(s[b * N + i]);
    dev::store(grad_s + b * N + i, grad_pixel<K>(sv, c_sh, gc_sh, gs_sh, L, delta));
  }
}

// Enough blocks per row to fill the device about 4x over, but at least
// ~4 pixels per thread so the per-block histogram setup and merge stay cheap.
inline unsigned blocks_per_row(int64_t B, int64_t N, int num_sms) {
  const int64_t want = (4 * (int64_t)(num_sms > 0 ? num_sms : 1) + B - 1) / B;
  const int64_t cap = (N + 4 * kThreads - 1) / (4 * kThreads);
  int64_t g = want < cap ? want : cap;
  g = g < 1 ? 1 : g;
  return (unsigned)(g > 65535 ? 65535 : g);
}

}  // namespace

cudaError_t quantize_count_launch(Dtype dtype, QuantKernel kernel, const void* s, const void* centers, void* counts,
                                  void* sums, int64_t B, int64_t N, int64_t L, int num_sms, cudaStream_t stream) {
  if (B <= 0 || N <= 0) return cudaSuccess;
  if (L < 2 || L > kMaxQuantLevels || B > 65535) return cudaErrorInvalidValue;
  return dispatch_dtype(dtype, [&](auto* tag) -> cudaError_t {
    using T = std::remove_pointer_t<decltype(tag)>;
    using Acc = typename dev::AccOf<T>::type;
    const dim3 grid(blocks_per_row(B, N, num_sms), (unsigned)B);
    const size_t smem = 3 * (size_t)L * sizeof(Acc);
    const auto* sp = static_cast<const T*>(s);
    const auto* cp = static_cast<const Acc*>(centers);
    auto* np = static_cast<Acc*>(counts);
    auto* mp = static_cast<Acc*>(sums);
    if (kernel == QuantKernel::kTriangular)
      quantize_count_kernel<T, QuantKernel::kTriangular><<<grid, kThreads, smem, stream>>>(sp, cp, np, mp, N, (int)L);
    else
      quantize_count_kernel<T, QuantKernel::kStlnet><<<grid, kThreads, smem, stream>>>(sp, cp, np, mp, N, (int)L);
    return cudaGetLastError();
  });
}

cudaError_t quantize_count_backward_launch(Dtype dtype, QuantKernel kernel, const void* s, const void* centers,
                                           const void* grad_counts, const void* grad_sums, void* grad_s, int64_t B,
                                           int64_t N, int64_t L, cudaStream_t stream) {
  if (B <= 0 || N <= 0) return cudaSuccess;
  if (L < 2 || L > kMaxQuantLevels || B > 65535) return cudaErrorInvalidValue;
  return dispatch_dtype(dtype, [&](auto* tag) -> cudaError_t {
    using T = std::remove_pointer_t<decltype(tag)>;
    using Acc = typename dev::AccOf<T>::type;
    const int64_t per_row = (N + 4 * kThreads - 1) / (4 * kThreads);  // ~4 pixels per thread
    const dim3 grid((unsigned)(per_row > 65535 ? 65535 : per_row), (unsigned)B);
    const size_t smem = 3 * (size_t)L * sizeof(Acc);
    const auto* sp = static_cast<const T*>(s);
    const auto* cp = static_cast<const Acc*>(centers);
    const auto* gcp = static_cast<const Acc*>(grad_counts);
    const auto* gsp = static_cast<const Acc*>(grad_sums);
    auto* gp = static_cast<T*>(grad_s);
    if (kernel == QuantKernel::kTriangular)
      quantize_count_backward_kernel<T, QuantKernel::kTriangular>
          <<<grid, kThreads, smem, stream>>>(sp, cp, gcp, gsp, gp, N, (int)L);
    else
      quantize_count_backward_kernel<T, QuantKernel::kStlnet>
          <<<grid, kThreads, smem, stream>>>(sp, cp, gcp, gsp, gp, N, (int)L);
    return cudaGetLastError();
  });
}

}  // namespace sstkd
