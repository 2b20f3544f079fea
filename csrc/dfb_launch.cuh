// The whole-plane DFB kernel template and its launch, shared by the two kernel units:
// dfb_kernels.cu (float accumulation: float32 / float16 / bfloat16, and the public
// launcher) and dfb_kernels_f64.cu (float64), compiled in parallel. No torch headers.
#pragma once

#include "dfb_plane.cuh"

namespace sstkd {
namespace dfbk {

constexpr int kThreads = 256;

// One CTA per image plane: every phase of the program with a barrier in between.
template <typename Acc>
__global__ void __launch_bounds__(kThreads, 2) dfb_plane_kernel(const dfbp::Args<Acc> a) {
  extern __shared__ __align__(16) unsigned char dfb_smem[];
  Acc* buf0 = reinterpret_cast<Acc*>(dfb_smem);
  Acc* buf1 = buf0 + a.H * a.W;
  Acc* lowbuf = buf1 + a.H * a.W;  // level modes only (their launch sizes the shared memory for it)
  const int n = blockIdx.x;
  for (int p = 0; p < a.num_phases; ++p) {
    dfbp::run_phase(a, n, buf0, buf1, p, threadIdx.x, kThreads, lowbuf);
    __syncthreads();
  }
}

// Launches `a` (its program is set here) with `bytes` of dynamic shared memory (validated by the caller).
template <typename Acc>
cudaError_t launch(dfbp::Args<Acc>& a, int64_t bytes, cudaStream_t stream) {
  dfbp::set_program(a);
  if (bytes > 48 * 1024) {  // opt in (per device: set on every such launch, a cheap host call)
    const cudaError_t e =
        cudaFuncSetAttribute(dfb_plane_kernel<Acc>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
    if (e != cudaSuccess) return e;
  }
  dfb_plane_kernel<Acc><<<(unsigned)a.N, kThreads, (size_t)bytes, stream>>>(a);
  return cudaGetLastError();
}

// float64 planes (dfb_kernels_f64.cu).
cudaError_t launch_f64(dfbp::Args<double>& a, int64_t bytes, cudaStream_t stream);

}  // namespace dfbk
}  // namespace sstkd
