// The <= 2 taps of the soft quantization encoding (DESIGN §3.2), exactly as
// sstkd/ops/quantize.py computes them: lo = #(centers < s) - 1 clamped to
// [0, L-2], hi = lo + 1; same comparisons, clamps and tie rules. Shared by the
// CUDA kernels (quantize_kernels.cu) and the host emulation test (csrc/tests/).
#pragma once

#include "device_utils.cuh"

namespace sstkd {
namespace quant {

// The <= 2 taps of pixel value s: levels lo and lo + 1 with weights w_lo, w_hi
// and their slopes d w / d s.
template <typename Acc>
struct Taps {
  int lo;
  Acc w_lo, w_hi, dw_lo, dw_hi;
};

// Number of centers strictly below s (torch.searchsorted(right=False)).
template <typename Acc>
SSTKD_HD int count_below(const Acc* c, int L, Acc s) {
  int a = 0, b = L;
  while (a < b) {
    const int mid = (a + b) >> 1;
    if (c[mid] < s) a = mid + 1;
    else b = mid;
  }
  return a;
}

template <QuantKernel K, typename Acc>
SSTKD_HD Taps<Acc> taps(Acc s, const Acc* c, int L, Acc delta) {
  Taps<Acc> t;
  int lo = count_below(c, L, s) - 1;
  lo = lo < 0 ? 0 : (lo > L - 2 ? L - 2 : lo);
  t.lo = lo;
  const Acc c_lo = c[lo], c_hi = c[lo + 1];
  if (K == QuantKernel::kTriangular) {
    const Acc gap = c_hi - c_lo;
    Acc u, du;
    if (gap > Acc(0)) {
      const Acc inv = Acc(1) / gap;  // as the reference: (s - c_lo) * (1 / gap)
      const Acc raw = (s - c_lo) * inv;
      u = raw < Acc(0) ? Acc(0) : (raw > Acc(1) ? Acc(1) : raw);
      du = (raw >= Acc(0) && raw <= Acc(1)) ? inv : Acc(0);  // the slope on the closed interval, as autograd's clamp
    } else {
      u = s > c_lo ? Acc(1) : Acc(0);
      du = Acc(0);
    }
    t.w_lo = Acc(1) - u;
    t.w_hi = u;
    t.dw_lo = -du;
    t.dw_hi = du;
  } else {
    const Acc e_lo = s - c_lo, e_hi = s - c_hi;
    const Acc d_lo = e_lo < Acc(0) ? -e_lo : e_lo, d_hi = e_hi < Acc(0) ? -e_hi : e_hi;
    const bool m_lo = d_lo < delta || d_lo == Acc(0);
    const bool m_hi = (d_hi < delta || d_hi == Acc(0)) && c_hi > c_lo;
    const auto sgn = [](Acc e) { return e > Acc(0) ? Acc(1) : (e < Acc(0) ? Acc(-1) : Acc(0)); };
    t.w_lo = m_lo ? Acc(1) - d_lo : Acc(0);
    t.w_hi = m_hi ? Acc(1) - d_hi : Acc(0);
    t.dw_lo = m_lo ? -sgn(e_lo) : Acc(0);
    t.dw_hi = m_hi ? -sgn(e_hi) : Acc(0);
  }
  return t;
}

// Delta of the stlnet encoding: the mean spacing of the centers.
template <typename Acc>
SSTKD_HD Acc stl_delta(const Acc* c, int L) {
  return (c[L - 1] - c[0]) / Acc(L - 1);
}

// d/ds of sum_n (grad_counts[n] * E_n + grad_sums[n] * E_n * s) for one pixel.
template <QuantKernel K, typename Acc>
SSTKD_HD Acc grad_pixel(Acc s, const Acc* c, const Acc* grad_counts, const Acc* grad_sums, int L, Acc delta) {
  const Taps<Acc> t = taps<K>(s, c, L, delta);
  const int lo = t.lo, hi = t.lo + 1;
  return t.dw_lo * (grad_counts[lo] + grad_sums[lo] * s) + t.w_lo * grad_sums[lo] +
         t.dw_hi * (grad_counts[hi] + grad_sums[hi] * s) + t.w_hi * grad_sums[hi];
}

}  // namespace quant
}  // namespace sstkd
