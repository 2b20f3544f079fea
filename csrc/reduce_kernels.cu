// Per-row sum of squares (the building block of the structural-loss energy):
// pass 1 reduces fixed-size chunks of each row (thread-strided partial sums,
// warp shuffles, then one value per warp through shared memory), pass 2 sums
// each row's chunk partials with one warp. The chunking and the reduction
// order are fixed, so the result is deterministic. No torch headers here.
#include "device_utils.cuh"

namespace sstkd {
namespace {

using dev::to_acc;

constexpr int kThreads = 256;
constexpr int kItems = 16;                     // elements per thread and chunk
constexpr int64_t kChunk = kThreads * kItems;  // elements per block
constexpr unsigned kFull = 0xffffffffu;

template <typename Acc>
__device__ __forceinline__ Acc warp_sum(Acc v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    sum_squares_partial_kernel(const T* __restrict__ x, typename dev::AccOf<T>::type* __restrict__ partials,
                               int64_t cols, int64_t chunks) {
  using Acc = typename dev::AccOf<T>::type;
  __shared__ Acc warp_part[kThreads / 32];
  const int64_t row = blockIdx.y;
  const int64_t start = (int64_t)blockIdx.x * kChunk;
  const int64_t stop = start + kChunk < cols ? start + kChunk : cols;
  const T* xr = x + row * cols;
  Acc acc = Acc(0);
  for (int64_t j = start + threadIdx.x; j < stop; j += kThreads) {  // coalesced
    const Acc v = to_acc(xr[j]);
    acc += v * v;
  }
  acc = warp_sum(acc);
  if ((threadIdx.x & 31) == 0) warp_part[threadIdx.x >> 5] = acc;
  __syncthreads();
  if (threadIdx.x < 32) {
    Acc v = threadIdx.x < kThreads / 32 ? warp_part[threadIdx.x] : Acc(0);
    v = warp_sum(v);
    if (threadIdx.x == 0) partials[row * chunks + blockIdx.x] = v;
  }
}

// One warp per row; blockDim = (32, rows per block).
template <typename Acc>
__global__ void sum_partials_kernel(const Acc* __restrict__ partials, Acc* __restrict__ out, int64_t rows,
                                    int64_t chunks) {
  const int64_t row = (int64_t)blockIdx.x * blockDim.y + threadIdx.y;
  if (row >= rows) return;  // uniform per warp
  Acc acc = Acc(0);
  for (int64_t j = threadIdx.x; j < chunks; j += 32) acc += partials[row * chunks + j];
  acc = warp_sum(acc);
  if (threadIdx.x == 0) out[row] = acc;
}

}  // namespace

int64_t sum_squares_chunks(int64_t cols) { return cols <= 0 ? 1 : (cols + kChunk - 1) / kChunk; }

cudaError_t sum_squares_launch(Dtype dtype, const void* x, void* partials, void* out, int64_t rows, int64_t cols,
                               cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  if (rows > 65535 * (int64_t)65535) return cudaErrorInvalidValue;
  const int64_t chunks = sum_squares_chunks(cols);
  return dispatch_dtype(dtype, [&](auto* tag) -> cudaError_t {
    using T = std::remove_pointer_t<decltype(tag)>;
    using Acc = typename dev::AccOf<T>::type;
    auto* part = static_cast<Acc*>(partials);
    // grid.y is limited to 65535: launch the rows in slabs.
    for (int64_t r0 = 0; r0 < rows; r0 += 65535) {
      const int64_t nr = rows - r0 < 65535 ? rows - r0 : 65535;
      const dim3 grid((unsigned)chunks, (unsigned)nr);
      sum_squares_partial_kernel<T><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(x) + r0 * cols,
                                                                  part + r0 * chunks, cols, chunks);
      const cudaError_t err = cudaGetLastError();
      if (err != cudaSuccess) return err;
    }
    const dim3 block(32, 8);
    const int64_t nblocks = (rows + 7) / 8;
    sum_partials_kernel<Acc><<<(unsigned)nblocks, block, 0, stream>>>(part, static_cast<Acc*>(out), rows, chunks);
    return cudaGetLastError();
  });
}

}  // namespace sstkd
