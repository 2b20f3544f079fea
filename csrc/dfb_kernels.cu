// The whole-plane DFB launcher and its float-accumulation kernel (dfb_launch.cuh: the
// kernel, dfb_plane.cuh: the engine; float64 planes: dfb_kernels_f64.cu): one CTA per
// image plane, the plane and every tree level in dynamic shared memory, one launch per
// direction. No torch headers here.
#include "dfb_launch.cuh"

namespace sstkd {

// cudaErrorInvalidConfiguration when `bytes` of dynamic shared memory exceed this device's opt-in limit.
static cudaError_t check_smem_optin(int64_t bytes) {
  int device = 0, optin = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) return err;
  return bytes > optin ? cudaErrorInvalidConfiguration : cudaSuccess;
}

int64_t dfb_plane_smem_bytes(Dtype x_dtype, int64_t H, int64_t W) {
  return 2 * H * W * (x_dtype == Dtype::kFloat64 ? 8 : 4);
}

cudaError_t dfb_plane_launch(DfbMode mode, Dtype x_dtype, Dtype band_dtype, int levels, const void* x,
                             void* bands, const void* grad_bands, const void* g, void* en, void* gx, int64_t N,
                             int64_t H, int64_t W, cudaStream_t stream, const void* low, void* g_low,
                             int64_t low_hw, int64_t g_stride) {
  if (N <= 0) return cudaSuccess;
  if ((int)mode < 0 || (int)mode > 5 || levels < 1 || levels > dfbp::kMaxLevels || H <= 0 || W <= 0 ||
      N > INT32_MAX || H * W > (int64_t)1 << 24 || (H * W) % ((int64_t)1 << levels) != 0)
    return cudaErrorInvalidValue;
  if (g_stride < 0) return cudaErrorInvalidValue;
  if (low != nullptr && (!(mode == DfbMode::kEnergy || mode == DfbMode::kEnergyAdjoint) || low_hw < 0 ||
                         low_hw > H * W || (mode == DfbMode::kEnergyAdjoint && g_low == nullptr)))
    return cudaErrorInvalidValue;
  const int64_t bytes = dfb_plane_smem_bytes(x_dtype, H, W);
  if (const cudaError_t err = check_smem_optin(bytes); err != cudaSuccess) return err;
  if (!dfbp::dtypes_supported(x_dtype, band_dtype)) return cudaErrorInvalidValue;
  if (dfbp::is_double(x_dtype)) {
    dfbp::Args<double> a{mode, x_dtype, band_dtype, levels, (int)H, (int)W, N, x, bands, grad_bands,
                         static_cast<const double*>(g), static_cast<double*>(en), gx, low, g_low, (int)low_hw,
                         g_stride};
    return dfbk::launch_f64(a, bytes, stream);
  }
  dfbp::Args<float> a{mode, x_dtype, band_dtype, levels, (int)H, (int)W, N, x, bands, grad_bands,
                      static_cast<const float*>(g), static_cast<float*>(en), gx, low, g_low, (int)low_hw, g_stride};
  return dfbk::launch(a, bytes, stream);
}

int64_t dfb_level_smem_bytes(Dtype x_dtype, int64_t H, int64_t W) {
  return dfb_plane_smem_bytes(x_dtype, H, W) + H * W / 4 * (x_dtype == Dtype::kFloat64 ? 8 : 4);
}

cudaError_t dfb_level_launch(bool adjoint, Dtype x_dtype, int levels, bool last, const void* x, const void* g,
                             int64_t g_stride, void* en, void* gx, void* low_out, const void* g_low, int64_t N,
                             int64_t H, int64_t W, cudaStream_t stream) {
  if (N <= 0) return cudaSuccess;
  if (levels < 1 || levels > dfbp::kMaxLevels || H <= 0 || W <= 0 || ((H | W) & 1) || N > INT32_MAX ||
      H * W > (int64_t)1 << 24 || (H * W) % ((int64_t)1 << levels) != 0 || g_stride < 0 || x == nullptr)
    return cudaErrorInvalidValue;
  if (adjoint ? (g == nullptr || gx == nullptr || (!last && g_low == nullptr)) : (en == nullptr || low_out == nullptr))
    return cudaErrorInvalidValue;
  const int64_t bytes = dfb_level_smem_bytes(x_dtype, H, W);
  if (const cudaError_t err = check_smem_optin(bytes); err != cudaSuccess) return err;
  const DfbMode mode = adjoint ? DfbMode::kLevelEnergyAdjoint : DfbMode::kLevelEnergy;
  const auto run = [&](auto acc_tag) -> cudaError_t {
    using Acc = decltype(acc_tag);
    dfbp::Args<Acc> a{mode, x_dtype, x_dtype, levels, (int)H, (int)W, N, x, nullptr, nullptr,
                      static_cast<const Acc*>(g), static_cast<Acc*>(en), gx, nullptr, nullptr, 0, g_stride,
                      last ? 1 : 0, static_cast<Acc*>(low_out), static_cast<const Acc*>(g_low)};
    if constexpr (std::is_same_v<Acc, double>)
      return dfbk::launch_f64(a, bytes, stream);
    else
      return dfbk::launch(a, bytes, stream);
  };
  return dfbp::is_double(x_dtype) ? run(0.0) : run(0.0f);
}

cudaError_t dfb_level_dec_launch(bool adjoint, Dtype x_dtype, Dtype band_dtype, Dtype low_dtype, int levels,
                                 const void* x, void* bands, void* low_out, const void* const* grad_bands,
                                 const void* g_low, void* gx, int64_t N, int64_t H, int64_t W, cudaStream_t stream) {
  if (N <= 0) return cudaSuccess;
  if (levels < 1 || levels > kMaxLevelDecLevels || levels > dfbp::kMaxBandPtrLevels || H <= 0 || W <= 0 ||
      ((H | W) & 1) || N > INT32_MAX || H * W > (int64_t)1 << 24 || (H * W) % ((int64_t)1 << levels) != 0)
    return cudaErrorInvalidValue;
  if (!dfbp::dtypes_supported(x_dtype, band_dtype) || !dfbp::dtypes_supported(x_dtype, low_dtype))
    return cudaErrorInvalidValue;
  if (adjoint ? (gx == nullptr || grad_bands == nullptr) : (x == nullptr || bands == nullptr || low_out == nullptr))
    return cudaErrorInvalidValue;
  const int64_t bytes = dfb_level_smem_bytes(x_dtype, H, W);
  if (const cudaError_t err = check_smem_optin(bytes); err != cudaSuccess) return err;
  const auto run = [&](auto acc_tag) -> cudaError_t {
    using Acc = decltype(acc_tag);
    dfbp::Args<Acc> a{adjoint ? DfbMode::kLevelDecAdjoint : DfbMode::kLevelDec, x_dtype, band_dtype, levels, (int)H,
                      (int)W, N, x, bands, nullptr, nullptr, nullptr, gx, nullptr, nullptr, 0, 0, 0, low_out,
                      g_low, low_dtype};
    if (adjoint)
      for (int k = 0; k < (1 << levels); ++k) a.band_in[k] = grad_bands[k];
    if constexpr (std::is_same_v<Acc, double>)
      return dfbk::launch_f64(a, bytes, stream);
    else
      return dfbk::launch(a, bytes, stream);
  };
  return dfbp::is_double(x_dtype) ? run(0.0) : run(0.0f);
}

}  // namespace sstkd
