// Compile-facts probe of the DFB ladder block (not part of the extension): each kernel runs
// exactly one dfbp::ladder_block, the fully unrolled body every ladder pass of
// dfb_plane_kernel (csrc/dfb_kernels.cu) runs per RB x CB outputs (dfbp::BlockShape), on a band in shared
// memory. sstkd/benchmarks/kernel_facts.py compiles it for sm_90 (nvcc -cubin) and
// divides each kernel's SASS count by RB * CB: "SASS per output" of the ladder pass.
//   heavy: QPER = true  (level 1, 'qper_col' extension: '1r' passes A / B and adjoints)
//   light: QPER = false (every other level: '2c', 'rows', 'cols' passes)
#include "../dfb_plane.cuh"

namespace sstkd {

template <typename Acc, bool QPER>
__global__ void __launch_bounds__(256, 2) dfb_ladder_probe(int h, int w, int b, int qs, Acc alpha, Acc beta) {
  extern __shared__ __align__(16) unsigned char dfb_smem[];
  Acc* buf = reinterpret_cast<Acc*>(dfb_smem);
  constexpr int RB = dfbp::BlockShape<Acc, QPER>::RB, CB = dfbp::BlockShape<Acc, QPER>::CB;
  const int tc = (w + CB - 1) / CB, t = threadIdx.x;
  dfbp::ladder_block<Acc, QPER>(buf, buf + h * w, h, w, t / tc * RB, t % tc * CB, b, qs, alpha, beta);
}

template __global__ void dfb_ladder_probe<float, true>(int, int, int, int, float, float);
template __global__ void dfb_ladder_probe<float, false>(int, int, int, int, float, float);
template __global__ void dfb_ladder_probe<double, true>(int, int, int, int, double, double);
template __global__ void dfb_ladder_probe<double, false>(int, int, int, int, double, double);

}  // namespace sstkd
