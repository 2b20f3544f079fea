// The whole-plane DFB kernel (dfb_plane.cuh holds the engine): one CTA per image
// plane, the plane and every tree level in dynamic shared memory, one launch per
// direction. No torch headers here.
#include "dfb_plane.cuh"

namespace sstkd {
namespace {

constexpr int kDfbThreads = 256;

template <typename T, typename O>
__global__ void __launch_bounds__(kDfbThreads, 2) dfb_plane_kernel(const dfbp::Args<T, O> a) {
  using Acc = typename dfbp::Args<T, O>::Acc;
  extern __shared__ __align__(16) unsigned char dfb_smem[];
  Acc* buf0 = reinterpret_cast<Acc*>(dfb_smem);
  Acc* buf1 = buf0 + a.H * a.W;
  const int64_t n = blockIdx.x;
  const int phases = dfbp::num_phases(a.mode, a.levels);
  for (int p = 0; p < phases; ++p) {
    dfbp::run_phase(a, n, buf0, buf1, p, threadIdx.x, kDfbThreads);
    __syncthreads();
  }
}

// Compile-facts probe (sstkd/benchmarks/kernel_facts.py): exactly one ladder block in
// shared memory, so the kernel's SASS / (RB * CB) is the block body's count per output.
template <typename Acc, bool QPER>
__global__ void __launch_bounds__(kDfbThreads, 2) dfb_ladder_probe(int h, int w, int b, int qs, Acc alpha, Acc beta) {
  extern __shared__ __align__(16) unsigned char dfb_smem[];
  Acc* buf = reinterpret_cast<Acc*>(dfb_smem);
  const int tc = (w + dfbp::BlockShape<Acc>::CB - 1) / dfbp::BlockShape<Acc>::CB;
  const int t = threadIdx.x;
  dfbp::ladder_block<Acc, QPER>(buf, buf + h * w, h, w, t / tc * dfbp::BlockShape<Acc>::RB,
                                t % tc * dfbp::BlockShape<Acc>::CB, b, qs, alpha, beta);
}

}  // namespace

// Keeps the probes in the cubin (nvcc drops unreferenced template instances).
void* dfb_ladder_probes[] = {
    reinterpret_cast<void*>(&dfb_ladder_probe<float, true>),
    reinterpret_cast<void*>(&dfb_ladder_probe<float, false>),
    reinterpret_cast<void*>(&dfb_ladder_probe<double, true>),
    reinterpret_cast<void*>(&dfb_ladder_probe<double, false>),
};

int64_t dfb_plane_smem_bytes(Dtype x_dtype, int64_t H, int64_t W) {
  return 2 * H * W * (x_dtype == Dtype::kFloat64 ? 8 : 4);
}

cudaError_t dfb_plane_launch(DfbMode mode, Dtype x_dtype, Dtype band_dtype, int levels, const void* x,
                             void* bands, const void* grad_bands, const void* g, void* en, void* gx, int64_t N,
                             int64_t H, int64_t W, cudaStream_t stream) {
  if (N <= 0) return cudaSuccess;
  if (levels < 1 || levels > 24 || H <= 0 || W <= 0 || N > INT32_MAX || H * W > (int64_t)1 << 24 ||
      (H * W) % ((int64_t)1 << levels) != 0)
    return cudaErrorInvalidValue;
  const int64_t bytes = dfb_plane_smem_bytes(x_dtype, H, W);
  int device = 0, optin = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) return err;
  if (bytes > optin) return cudaErrorInvalidConfiguration;
  return dfbp::with_dfb_types(x_dtype, band_dtype, [&](auto* xt, auto* ot) -> cudaError_t {
    using T = std::remove_pointer_t<decltype(xt)>;
    using O = std::remove_pointer_t<decltype(ot)>;
    using Acc = typename dfbp::Args<T, O>::Acc;
    if (bytes > 48 * 1024) {  // opt in (per device: set on every such launch, a cheap host call)
      const cudaError_t e =
          cudaFuncSetAttribute(dfb_plane_kernel<T, O>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
      if (e != cudaSuccess) return e;
    }
    const dfbp::Args<T, O> a{mode, levels, (int)H, (int)W, N, static_cast<const T*>(x), static_cast<O*>(bands),
                             static_cast<const O*>(grad_bands), static_cast<const Acc*>(g), static_cast<Acc*>(en),
                             static_cast<T*>(gx)};
    dfb_plane_kernel<T, O><<<(unsigned)N, kDfbThreads, (size_t)bytes, stream>>>(a);
    return cudaGetLastError();
  });
}

}  // namespace sstkd
