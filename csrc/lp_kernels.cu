// One periodic Laplacian-pyramid level ('9-7') and its adjoint, fused in one
// kernel per tile (lp_tile.cuh holds the tile engine). No torch headers here.
#include "lp_tile.cuh"

namespace sstkd {
namespace {

constexpr int kThreads = 256;

template <class TileT>
__global__ void __launch_bounds__(kThreads)
    lp_level_kernel(const typename TileT::Elem* __restrict__ y, const typename TileT::Elem* __restrict__ c_in,
                    typename TileT::Out* __restrict__ c_out, typename TileT::Out* __restrict__ out,
                    int64_t n_images, int H, int W) {
  __shared__ typename TileT::Smem sm;
  const int h = H / 2, w = W / 2;
  const int P0 = blockIdx.y * TileT::TCH_, Q0 = blockIdx.x * TileT::TCW_;
  const int tid = threadIdx.x;
  for (int64_t img = blockIdx.z; img < n_images; img += gridDim.z) {
    const int64_t fine = img * H * W, coarse = img * h * w;
    TileT::load(sm, y + fine, P0, Q0, H, W, tid, kThreads);
    __syncthreads();
    TileT::analysis_rows(sm, tid, kThreads);
    __syncthreads();
    TileT::analysis_cols(sm, c_in + coarse, c_out + coarse, P0, Q0, h, w, tid, kThreads);
    __syncthreads();
    TileT::synthesis_rows(sm, tid, kThreads);
    __syncthreads();
    TileT::synthesis_cols(sm, out + fine, P0, Q0, H, W, tid, kThreads);
    __syncthreads();  // the next image reuses the shared tiles
  }
}

}  // namespace

cudaError_t lp_level_launch(Dtype dtype, LpMode mode, LpFilters filters, const void* y, const void* c_in,
                            void* c_out, void* out, int64_t n, int64_t H, int64_t W, cudaStream_t stream,
                            int out_dtype) {
  if (n <= 0 || H <= 0 || W <= 0) return cudaSuccess;
  if (((H | W) & 1) || H * W > INT32_MAX) return cudaErrorInvalidValue;
  const auto run = [&](auto tile) -> cudaError_t {
    using TileT = decltype(tile);
    using T = typename TileT::Elem;
    using TO = typename TileT::Out;
    const int64_t h = H / 2, w = W / 2;
    const dim3 grid((unsigned)((w + TileT::TCW_ - 1) / TileT::TCW_), (unsigned)((h + TileT::TCH_ - 1) / TileT::TCH_),
                    (unsigned)(n < 65535 ? n : 65535));
    lp_level_kernel<TileT><<<grid, kThreads, 0, stream>>>(
        static_cast<const T*>(y), static_cast<const T*>(c_in), static_cast<TO*>(c_out), static_cast<TO*>(out), n,
        (int)H, (int)W);
    return cudaGetLastError();
  };
  if (out_dtype >= 0 && Dtype(out_dtype) != dtype) return lp::with_mixed_tile(dtype, Dtype(out_dtype), mode, filters, run);
  return dispatch_dtype(dtype, [&](auto* tag) -> cudaError_t {
    using T = std::remove_pointer_t<decltype(tag)>;
    return lp::with_tile<T>(mode, filters, run);
  });
}

}  // namespace sstkd
