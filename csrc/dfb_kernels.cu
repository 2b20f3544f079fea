// The whole-plane DFB kernel (dfb_plane.cuh holds the engine): one CTA per image
// plane, the plane and every tree level in dynamic shared memory, one launch per
// direction. No torch headers here.
#include "dfb_plane.cuh"

namespace sstkd {
namespace {

constexpr int kDfbThreads = 256;

template <typename Acc>
__global__ void __launch_bounds__(kDfbThreads, 2) dfb_plane_kernel(const dfbp::Args<Acc> a) {
  extern __shared__ __align__(16) unsigned char dfb_smem[];
  Acc* buf0 = reinterpret_cast<Acc*>(dfb_smem);
  Acc* buf1 = buf0 + a.H * a.W;
  const int n = blockIdx.x;
  for (int p = 0; p < a.num_phases; ++p) {
    dfbp::run_phase(a, n, buf0, buf1, p, threadIdx.x, kDfbThreads);
    __syncthreads();
  }
}

template <typename Acc>
cudaError_t launch(dfbp::Args<Acc>& a, int64_t bytes, cudaStream_t stream) {
  dfbp::set_program(a);
  if (bytes > 48 * 1024) {  // opt in (per device: set on every such launch, a cheap host call)
    const cudaError_t e =
        cudaFuncSetAttribute(dfb_plane_kernel<Acc>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
    if (e != cudaSuccess) return e;
  }
  dfb_plane_kernel<Acc><<<(unsigned)a.N, kDfbThreads, (size_t)bytes, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

int64_t dfb_plane_smem_bytes(Dtype x_dtype, int64_t H, int64_t W) {
  return 2 * H * W * (x_dtype == Dtype::kFloat64 ? 8 : 4);
}

cudaError_t dfb_plane_launch(DfbMode mode, Dtype x_dtype, Dtype band_dtype, int levels, const void* x,
                             void* bands, const void* grad_bands, const void* g, void* en, void* gx, int64_t N,
                             int64_t H, int64_t W, cudaStream_t stream) {
  if (N <= 0) return cudaSuccess;
  if ((int)mode < 0 || (int)mode > 5 || levels < 1 || levels > dfbp::kMaxLevels || H <= 0 || W <= 0 || N > INT32_MAX ||
      H * W > (int64_t)1 << 24 || (H * W) % ((int64_t)1 << levels) != 0)
    return cudaErrorInvalidValue;
  const int64_t bytes = dfb_plane_smem_bytes(x_dtype, H, W);
  int device = 0, optin = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) return err;
  if (bytes > optin) return cudaErrorInvalidConfiguration;
  if (!dfbp::dtypes_supported(x_dtype, band_dtype)) return cudaErrorInvalidValue;
  if (dfbp::is_double(x_dtype)) {
    dfbp::Args<double> a{mode, x_dtype, band_dtype, levels, (int)H, (int)W, N, x, bands, grad_bands,
                               static_cast<const double*>(g), static_cast<double*>(en), gx};
    return launch(a, bytes, stream);
  }
  dfbp::Args<float> a{mode, x_dtype, band_dtype, levels, (int)H, (int)W, N, x, bands, grad_bands,
                            static_cast<const float*>(g), static_cast<float*>(en), gx};
  return launch(a, bytes, stream);
}

}  // namespace sstkd
