// The whole-plane DFB kernel for float64 planes (dfb_launch.cuh); a unit of its own so
// that it compiles in parallel with the float one (dfb_kernels.cu). No torch headers.
#include "dfb_launch.cuh"

namespace sstkd {
namespace dfbk {

cudaError_t launch_f64(dfbp::Args<double>& a, int64_t bytes, cudaStream_t stream) { return launch(a, bytes, stream); }

}  // namespace dfbk
}  // namespace sstkd
