// Helpers shared by the kernel translation units (no torch headers). They are
// __host__ __device__ so the host emulation test (csrc/tests/) runs the same code.
#pragma once

#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "sstkd_kernels.h"

#define SSTKD_HD __host__ __device__ __forceinline__

namespace sstkd {
namespace dev {

// Accumulation type of an element type: double for double, float otherwise.
template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

SSTKD_HD float to_acc(float v) { return v; }
SSTKD_HD double to_acc(double v) { return v; }
SSTKD_HD float to_acc(__half v) { return __half2float(v); }
SSTKD_HD float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

// Store an accumulator into an element (round to nearest for 16-bit types).
SSTKD_HD void store(float* p, float v) { *p = v; }
SSTKD_HD void store(double* p, double v) { *p = v; }
SSTKD_HD void store(__half* p, float v) { *p = __float2half_rn(v); }
SSTKD_HD void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// Periodic index: v mod n in [0, n), also when |v| exceeds n (tiny images).
SSTKD_HD int wrap(int v, int n) {
  if (v >= 0 && v < n) return v;
  v %= n;
  return v < 0 ? v + n : v;
}

}  // namespace dev

// Calls f(T*) with the element type named by `dtype` (one template instance each).
template <typename F>
cudaError_t dispatch_dtype(Dtype dtype, F&& f) {
  switch (dtype) {
    case Dtype::kFloat32:
      return f(static_cast<float*>(nullptr));
    case Dtype::kFloat64:
      return f(static_cast<double*>(nullptr));
    case Dtype::kFloat16:
      return f(static_cast<__half*>(nullptr));
    case Dtype::kBFloat16:
      return f(static_cast<__nv_bfloat16*>(nullptr));
  }
  return cudaErrorInvalidValue;
}

}  // namespace sstkd
