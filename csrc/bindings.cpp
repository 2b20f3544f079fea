// The one translation unit that includes torch headers: registers the sstkd
// custom ops (TORCH_LIBRARY), their CUDA implementations (calling the plain
// C++ launchers of the *.cu files), Meta implementations (shapes only, with
// symbolic sizes, so torch.compile / FakeTensor can trace them) and CPU
// implementations that raise a clear error. Also the Python module init of
// sstkd._C (JIT: sstkd_C), which exists only to be importable.
//
// Ops (all inputs contiguous after the op makes them so; N = B*C images):
//   lp_dec(x (N,H,W), out_dtype?) -> (low (N,H/2,W/2), band (N,H,W)) in out_dtype (default x's; float32
//       for float16/bfloat16 x: the level read as it is, computed and stored in float32)
//   lp_dec_backward(grad_low, grad_band, out_dtype?) -> grad_x     (adjoint of lp_dec; out_dtype: default
//       the cotangents', or float16/bfloat16 from float32 cotangents)
//   lp_rec(low (N,H/2,W/2), band (N,H,W)) -> x (N,H,W)
//   lp_rec_backward(grad_x) -> (grad_low, grad_band)              (adjoint of lp_rec)
//   quantize_count(s (B,N), centers (B,L), kernel) -> (counts, sums)  (B,L), accumulation dtype;
//       not deterministic (float atomics): alerts under torch.use_deterministic_algorithms(True)
//   quantize_count_backward(s, centers, kernel, grad_counts?, grad_sums?) -> grad_s (B,N)
//   sum_squares(x (R, ...)) -> (R,) accumulation dtype
//   dfb_dec(x (N,H,W), levels, out_dtype?) -> bands (K, N, H*W/K), K = 2^levels, band-major, each
//       band in the final layout / order of dfb_dec; out_dtype (default x's): float64 for float64 x,
//       else float32/float16/bfloat16 (the sub-band and image dtypes of every dfb op pair that way)
//   dfb_dec_backward(grad (K, N, H*W/K), levels, H, W, x_dtype) -> grad_x (N,H,W) in x_dtype
//   dfb_rec(bands (K, N, H*W/K), levels, H, W, out_dtype?) -> x (N,H,W) (default: the bands' dtype)
//   dfb_rec_backward(grad_x (N,H,W), levels, band_dtype) -> grad_bands (K, N, H*W/K)
//   dfb_energy(x (N,H,W), levels) -> (N, K) accumulation dtype, per-sub-band sums of squares
//   dfb_energy_backward(x, grad (N, K), levels) -> grad_x (N,H,W) (recomputes the tree from x)
//   dfb_energy_low(x (N,H,W), low (N,h,w), levels) -> (N, 1 + K): dfb_energy with the sum of squares of
//       `low` (a contourlet's coarsest lowpass, x's dtype) first, in the same launch
//   dfb_energy_low_backward(x, low, grad (N, 1 + K), levels) -> (grad_x, grad_low = 2*grad[:, 0]*low)
//   level_energy(x (N,H,W), levels, last) -> (low (N,H/2,W/2), energies (N, K), or (N, 1 + K) with the
//       lowpass energy first when `last`), accumulation dtype: one contourlet pyramid level (LP + DFB
//       energies of its bandpass) in one launch (H*W*2.25 accumulation-dtype elements of shared memory)
//   level_energy_backward(x, grad (N, [1 +] K), grad_low? (N,H/2,W/2), levels, last) -> grad_x (N,H,W)
//       (recomputes the level from x; grad_low is required unless `last`)
//   level_dec(x (N,H,W), levels, band_dtype?, low_dtype?) -> (low (N,H/2,W/2) of low_dtype (default: the
//       accumulation dtype), bands (K, N, H*W/K) of band_dtype (default x's), band-major, dfb_dec's layout
//       and order): one contourlet pyramid level (lp_dec, then dfb_dec of its bandpass) in one launch;
//       levels in [1, 5]
//   level_dec_backward(grad_bands [K x (N, H*W/K) or None], grad_low? (N,H/2,W/2), levels, N, H, W, x_dtype)
//       -> grad_x (N,H,W): the DFB adjoint then the LP adjoint in one launch, each band's cotangent read
//       where it lies (no stacking copy); None: zeros
//   The dfb ops need the two H*W planes of one image in shared memory (dfb_plane_bytes); larger
//   planes raise (sstkd/ops/backends/cuda.py checks first and falls back to the Triton DFB).
// float16/bfloat16/float32 accumulate in float32, float64 in float64.
#include <Python.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "sstkd_kernels.h"

namespace sstkd {
namespace {

using at::Tensor;

template <typename T>
struct DtypeOf;
template <>
struct DtypeOf<float> {
  static constexpr Dtype value = Dtype::kFloat32;
};
template <>
struct DtypeOf<double> {
  static constexpr Dtype value = Dtype::kFloat64;
};
template <>
struct DtypeOf<at::Half> {
  static constexpr Dtype value = Dtype::kFloat16;
};
template <>
struct DtypeOf<at::BFloat16> {
  static constexpr Dtype value = Dtype::kBFloat16;
};

bool is_supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

void check_cuda(const char* op, const char* name, const Tensor& t) {
  TORCH_CHECK(t.is_cuda(), "sstkd::", op, ": ", name, " must be a CUDA tensor (got a ", t.device().type(),
              " tensor); the sstkd CUDA extension has no kernels for other devices, use backend='torch'");
}

void check_float(const char* op, const char* name, const Tensor& t) {
  TORCH_CHECK(is_supported_dtype(t.scalar_type()), "sstkd::", op, ": ", name,
              " must be float16, bfloat16, float32 or float64, got ", t.scalar_type());
}

void check_rank(const char* op, const char* name, const Tensor& t, int64_t rank, const char* layout) {
  TORCH_CHECK(t.dim() == rank, "sstkd::", op, ": ", name, " must be ", rank, "-D ", layout, ", got shape ",
              t.sizes());
}

Dtype dtype_of(const Tensor& t) {
  Dtype d = Dtype::kFloat32;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "sstkd_dtype_of",
                                  [&] { d = DtypeOf<scalar_t>::value; });
  return d;
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "sstkd::", op, ": kernel launch failed: ", cudaGetErrorString(err));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

int num_sms(int device) {
  static std::array<std::atomic<int>, 64> cache{};
  if (device < 0 || device >= 64) device = 0;
  int v = cache[device].load(std::memory_order_relaxed);
  if (v == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device));
    cache[device].store(v, std::memory_order_relaxed);
  }
  return v;
}

QuantKernel parse_kernel(const char* op, c10::string_view kernel) {
  if (kernel == "triangular") return QuantKernel::kTriangular;
  if (kernel == "stlnet") return QuantKernel::kStlnet;
  TORCH_CHECK(false, "sstkd::", op, ": kernel must be 'triangular' or 'stlnet', got '", std::string(kernel.data(), kernel.size()), "'");
}

// ----------------------------------------------------------------------------------------- LP
void check_fine(const char* op, const char* name, const Tensor& t) {
  check_rank(op, name, t, 3, "(N, H, W)");
  check_float(op, name, t);
  TORCH_CHECK(t.size(1) > 0 && t.size(2) > 0 && t.size(1) % 2 == 0 && t.size(2) % 2 == 0, "sstkd::", op, ": ",
              name, " must have even, non-zero H and W, got shape ", t.sizes());
  TORCH_CHECK(t.size(1) * t.size(2) <= INT32_MAX, "sstkd::", op, ": ", name, ": H*W too large, got shape ",
              t.sizes());
}

void check_coarse(const char* op, const char* cname, const Tensor& c, const char* fname, const Tensor& f) {
  check_rank(op, cname, c, 3, "(N, H/2, W/2)");
  TORCH_CHECK(c.size(0) == f.size(0) && c.size(1) * 2 == f.size(1) && c.size(2) * 2 == f.size(2), "sstkd::", op,
              ": ", cname, " must have shape (N, H/2, W/2) for ", fname, " of shape ", f.sizes(), ", got ", c.sizes());
  TORCH_CHECK(c.scalar_type() == f.scalar_type(), "sstkd::", op, ": ", cname, " dtype ", c.scalar_type(),
              " differs from ", fname, " dtype ", f.scalar_type());
  TORCH_CHECK(c.device() == f.device(), "sstkd::", op, ": ", cname, " is on ", c.device(), " but ", fname,
              " is on ", f.device());
}

// The output dtype of lp_dec (dec) or lp_dec_backward (!dec) for inputs of dtype `in`: `in`, or the
// mixed pairs of lp_level_launch (float16/bfloat16 -> float32 for lp_dec, the reverse for its adjoint).
at::ScalarType lp_out_dtype(const char* op, at::ScalarType in, std::optional<at::ScalarType> out, bool dec) {
  const at::ScalarType o = out.value_or(in);
  if (o == in) return o;
  const bool low_in = in == at::kHalf || in == at::kBFloat16, low_out = o == at::kHalf || o == at::kBFloat16;
  TORCH_CHECK(dec ? (low_in && o == at::kFloat) : (in == at::kFloat && low_out), "sstkd::", op, ": out_dtype ", o,
              " is not supported for ", in, " input (",
              dec ? "float16/bfloat16 input may give float32 outputs" : "float32 cotangents may give a float16/bfloat16 "
                                                                         "gradient",
              ")");
  return o;
}

// decompose: (c, out) = (A y, y - S A y); reconstruct: out = S (c - A y) + y.
std::tuple<Tensor, Tensor> lp_decompose(const char* op, const Tensor& y_in, LpFilters filters,
                                        std::optional<at::ScalarType> out_dtype = std::nullopt) {
  check_cuda(op, "input", y_in);
  check_fine(op, "input", y_in);
  const at::ScalarType od = lp_out_dtype(op, y_in.scalar_type(), out_dtype, true);
  const c10::cuda::CUDAGuard guard(y_in.device());
  const Tensor y = y_in.contiguous();
  const int64_t n = y.size(0), H = y.size(1), W = y.size(2);
  Tensor c = at::empty({n, H / 2, W / 2}, y.options().dtype(od));
  Tensor out = at::empty({n, H, W}, y.options().dtype(od));
  if (n > 0) {
    check_launch(lp_level_launch(dtype_of(y), LpMode::kDecompose, filters, y.const_data_ptr(), nullptr,
                                 c.mutable_data_ptr(), out.mutable_data_ptr(), n, H, W,
                                 c10::cuda::getCurrentCUDAStream().stream(), (int)dtype_of(out)),
                 op);
  }
  return {c, out};
}

Tensor lp_reconstruct(const char* op, const Tensor& c_in, const char* cname, const Tensor& y_in, const char* yname,
                      LpFilters filters, std::optional<at::ScalarType> out_dtype = std::nullopt) {
  check_cuda(op, yname, y_in);
  check_cuda(op, cname, c_in);
  check_fine(op, yname, y_in);
  check_coarse(op, cname, c_in, yname, y_in);
  const at::ScalarType od = lp_out_dtype(op, y_in.scalar_type(), out_dtype, false);
  const c10::cuda::CUDAGuard guard(y_in.device());
  const Tensor y = y_in.contiguous();
  const Tensor c = c_in.contiguous();
  const int64_t n = y.size(0), H = y.size(1), W = y.size(2);
  Tensor out = at::empty({n, H, W}, y.options().dtype(od));
  if (n > 0) {
    check_launch(lp_level_launch(dtype_of(y), LpMode::kReconstruct, filters, y.const_data_ptr(), c.const_data_ptr(),
                                 nullptr, out.mutable_data_ptr(), n, H, W, c10::cuda::getCurrentCUDAStream().stream(),
                                 (int)dtype_of(out)),
                 op);
  }
  return out;
}

std::tuple<Tensor, Tensor> lp_dec_cuda(const Tensor& x, std::optional<at::ScalarType> out_dtype) {
  return lp_decompose("lp_dec", x, LpFilters::kForward, out_dtype);
}

Tensor lp_dec_backward_cuda(const Tensor& grad_low, const Tensor& grad_band, std::optional<at::ScalarType> out_dtype) {
  return lp_reconstruct("lp_dec_backward", grad_low, "grad_low", grad_band, "grad_band", LpFilters::kAdjoint,
                        out_dtype);
}

Tensor lp_rec_cuda(const Tensor& low, const Tensor& band) {
  return lp_reconstruct("lp_rec", low, "low", band, "band", LpFilters::kForward);
}

std::tuple<Tensor, Tensor> lp_rec_backward_cuda(const Tensor& grad_x) {
  return lp_decompose("lp_rec_backward", grad_x, LpFilters::kAdjoint);
}

// ----------------------------------------------------------------------------------- quantize
void check_quant_inputs(const char* op, const Tensor& s, const Tensor& centers) {
  check_cuda(op, "s", s);
  check_cuda(op, "centers", centers);
  check_rank(op, "s", s, 2, "(B, N)");
  check_rank(op, "centers", centers, 2, "(B, L)");
  check_float(op, "s", s);
  check_float(op, "centers", centers);
  TORCH_CHECK(centers.device() == s.device(), "sstkd::", op, ": centers is on ", centers.device(), " but s is on ",
              s.device());
  TORCH_CHECK(centers.size(0) == s.size(0), "sstkd::", op, ": centers batch ", centers.size(0),
              " does not match s batch ", s.size(0));
  TORCH_CHECK(centers.size(1) >= 2 && centers.size(1) <= kMaxQuantLevels, "sstkd::", op,
              ": centers must have 2..", kMaxQuantLevels, " levels, got ", centers.size(1));
  TORCH_CHECK(s.size(0) <= 65535, "sstkd::", op, ": at most 65535 rows, got ", s.size(0));
}

std::tuple<Tensor, Tensor> quantize_count_cuda(const Tensor& s_in, const Tensor& centers_in, c10::string_view kernel) {
  const char* op = "quantize_count";
  check_quant_inputs(op, s_in, centers_in);
  const QuantKernel k = parse_kernel(op, kernel);
  // float atomics: the summation order varies from run to run
  at::globalContext().alertNotDeterministic("sstkd::quantize_count");
  const c10::cuda::CUDAGuard guard(s_in.device());
  const Tensor s = s_in.contiguous();
  const at::ScalarType acc = acc_dtype(s.scalar_type());
  const Tensor centers = centers_in.to(acc).contiguous();
  const int64_t B = s.size(0), N = s.size(1), L = centers.size(1);
  Tensor counts = at::zeros({B, L}, s.options().dtype(acc));
  Tensor sums = at::zeros({B, L}, s.options().dtype(acc));
  if (B > 0 && N > 0) {
    check_launch(quantize_count_launch(dtype_of(s), k, s.const_data_ptr(), centers.const_data_ptr(),
                                       counts.mutable_data_ptr(), sums.mutable_data_ptr(), B, N, L,
                                       num_sms(s.get_device()), c10::cuda::getCurrentCUDAStream().stream()),
                 op);
  }
  return {counts, sums};
}

Tensor quantize_count_backward_cuda(const Tensor& s_in, const Tensor& centers_in, c10::string_view kernel,
                                    const std::optional<Tensor>& grad_counts_in,
                                    const std::optional<Tensor>& grad_sums_in) {
  const char* op = "quantize_count_backward";
  check_quant_inputs(op, s_in, centers_in);
  const QuantKernel k = parse_kernel(op, kernel);
  const c10::cuda::CUDAGuard guard(s_in.device());
  const Tensor s = s_in.contiguous();
  const at::ScalarType acc = acc_dtype(s.scalar_type());
  const Tensor centers = centers_in.to(acc).contiguous();
  const int64_t B = s.size(0), N = s.size(1), L = centers.size(1);
  const auto grad = [&](const std::optional<Tensor>& g, const char* name) -> Tensor {
    if (!g.has_value() || !g->defined()) return Tensor();
    check_cuda(op, name, *g);
    TORCH_CHECK(g->dim() == 2 && g->size(0) == B && g->size(1) == L, "sstkd::", op, ": ", name,
                " must have shape (B, L) = (", B, ", ", L, "), got ", g->sizes());
    TORCH_CHECK(g->device() == s.device(), "sstkd::", op, ": ", name, " is on ", g->device(), " but s is on ",
                s.device());
    return g->to(acc).contiguous();
  };
  const Tensor gc = grad(grad_counts_in, "grad_counts");
  const Tensor gs = grad(grad_sums_in, "grad_sums");
  if (!gc.defined() && !gs.defined()) return at::zeros_like(s);
  Tensor grad_s = at::empty_like(s);
  if (B > 0 && N > 0) {
    check_launch(quantize_count_backward_launch(dtype_of(s), k, s.const_data_ptr(), centers.const_data_ptr(),
                                                gc.defined() ? gc.const_data_ptr() : nullptr,
                                                gs.defined() ? gs.const_data_ptr() : nullptr,
                                                grad_s.mutable_data_ptr(), B, N, L,
                                                c10::cuda::getCurrentCUDAStream().stream()),
                 op);
  }
  return grad_s;
}

// ---------------------------------------------------------------------------------- reductions
Tensor sum_squares_cuda(const Tensor& x_in) {
  const char* op = "sum_squares";
  check_cuda(op, "x", x_in);
  check_float(op, "x", x_in);
  TORCH_CHECK(x_in.dim() >= 1, "sstkd::", op, ": x must have a leading row dimension, got a 0-D tensor");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Tensor x = x_in.contiguous();
  const int64_t rows = x.size(0);
  const int64_t cols = rows > 0 ? x.numel() / rows : 0;
  const at::ScalarType acc = acc_dtype(x.scalar_type());
  Tensor out = at::empty({rows}, x.options().dtype(acc));
  if (rows > 0) {
    Tensor partials = at::empty({rows * sum_squares_chunks(cols)}, x.options().dtype(acc));
    check_launch(sum_squares_launch(dtype_of(x), x.const_data_ptr(), partials.mutable_data_ptr(),
                                    out.mutable_data_ptr(), rows, cols, c10::cuda::getCurrentCUDAStream().stream()),
                 op);
  }
  return out;
}

// ---------------------------------------------------------------------------------------- DFB
int64_t dfb_multiple(int64_t levels) { return levels <= 1 ? 1 : (int64_t)1 << (levels - 1); }

// levels and (H, W) as sstkd.geometry.check_dfb_size requires (levels >= 1).
void check_dfb_geometry(const char* op, int64_t levels, int64_t H, int64_t W) {
  TORCH_CHECK(levels >= 1 && levels <= 20, "sstkd::", op, ": levels must be in [1, 20], got ", levels);
  const int64_t mh = levels == 1 ? 2 : dfb_multiple(levels), mw = dfb_multiple(levels);
  TORCH_CHECK(H % mh == 0 && H >= std::max<int64_t>(mh, 12), "sstkd::", op, ": height ", H,
              " is not valid for levels=", levels, ": need a multiple of ", mh, " (and >= ", std::max<int64_t>(mh, 12),
              ")");
  TORCH_CHECK(W % mw == 0 && W >= std::max<int64_t>(mw, 2), "sstkd::", op, ": width ", W,
              " is not valid for levels=", levels, ": need a multiple of ", mw, " (and >= ", std::max<int64_t>(mw, 2),
              ")");
  TORCH_CHECK(H * W <= (int64_t)1 << 24, "sstkd::", op, ": H*W too large, got ", H, "x", W);
}

// `need` bytes of shared memory for one H x W `what` of t's dtype fit one block of t's device, or
// an error that says what to use instead.
void check_smem_fits(const char* op, const Tensor& t, int64_t H, int64_t W, int64_t need, const char* what,
                     const char* instead) {
  int optin = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, t.get_device()));
  TORCH_CHECK(need <= optin, "sstkd::", op, ": a ", H, "x", W, " ", t.scalar_type(), " ", what, " needs ", need,
              " B of shared memory, the device allows ", optin, " B per block (use ", instead, ")");
}

void check_dfb_fits(const char* op, const Tensor& t, int64_t H, int64_t W) {
  check_smem_fits(op, t, H, W, dfb_plane_smem_bytes(dtype_of(t), H, W), "plane", "the Triton DFB");
}

// The dtype paired with `x` (default x itself): both float64, or both among float32/float16/bfloat16.
at::ScalarType dfb_band_dtype(const char* op, at::ScalarType x, std::optional<at::ScalarType> out) {
  const at::ScalarType o = out.value_or(x);
  TORCH_CHECK(is_supported_dtype(o) && (o == at::kDouble) == (x == at::kDouble), "sstkd::", op, ": out_dtype ", o,
              " cannot pair with ", x, " (float64 goes with float64; float32/float16/bfloat16 with each other)");
  return o;
}

void check_dfb_input(const char* op, const Tensor& x, int64_t levels) {
  check_rank(op, "x", x, 3, "(N, H, W)");
  check_float(op, "x", x);
  check_dfb_geometry(op, levels, x.size(1), x.size(2));
  TORCH_CHECK(x.size(0) <= INT32_MAX, "sstkd::", op, ": at most 2^31-1 planes, got ", x.size(0));
}

void launch_dfb(const char* op, DfbMode mode, const Tensor& like, at::ScalarType band_dtype, int64_t levels,
                const void* x, void* bands, const void* grad_bands, const void* g, void* en, void* gx, int64_t N,
                int64_t H, int64_t W, const void* low = nullptr, void* g_low = nullptr, int64_t low_hw = 0,
                int64_t g_stride = 0) {
  if (N == 0) return;
  Dtype bd = Dtype::kFloat32;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, band_dtype, "sstkd_dfb_band_dtype",
                                  [&] { bd = DtypeOf<scalar_t>::value; });
  check_launch(dfb_plane_launch(mode, dtype_of(like), bd, (int)levels, x, bands, grad_bands, g, en, gx, N, H, W,
                                c10::cuda::getCurrentCUDAStream().stream(), low, g_low, low_hw, g_stride),
               op);
}

// The energy cotangent (N, cols) as the kernel reads it: in the accumulation dtype with dense rows
// (a column slice of a wider cotangent is read through its row stride, not copied); `stride` is set.
Tensor energy_grad(const char* op, const Tensor& grad, const Tensor& x, int64_t cols, int64_t& stride) {
  const int64_t N = x.size(0);
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == N && grad.size(1) == cols, "sstkd::", op,
              ": grad must have shape (N, ", cols, ") = (", N, ", ", cols, "), got ", grad.sizes());
  TORCH_CHECK(grad.device() == x.device(), "sstkd::", op, ": grad is on ", grad.device(), " but x is on ",
              x.device());
  Tensor g = grad.to(acc_dtype(x.scalar_type()));
  if (g.stride(1) != 1 || g.stride(0) < cols) g = g.contiguous();
  stride = g.stride(0);
  return g;
}

// low (N, h, w) of x's dtype and device, h*w <= H*W: the lowpass folded into the energy ops.
Tensor checked_low(const char* op, const Tensor& low_in, const Tensor& x) {
  check_cuda(op, "low", low_in);
  check_rank(op, "low", low_in, 3, "(N, h, w)");
  TORCH_CHECK(low_in.size(0) == x.size(0) && low_in.size(1) * low_in.size(2) <= x.size(1) * x.size(2), "sstkd::", op,
              ": low must have shape (N, h, w) with h*w <= H*W for x of shape ", x.sizes(), ", got ", low_in.sizes());
  TORCH_CHECK(low_in.scalar_type() == x.scalar_type(), "sstkd::", op, ": low dtype ", low_in.scalar_type(),
              " differs from x dtype ", x.scalar_type());
  TORCH_CHECK(low_in.device() == x.device(), "sstkd::", op, ": low is on ", low_in.device(), " but x is on ",
              x.device());
  return low_in.contiguous();
}

Tensor dfb_dec_cuda(const Tensor& x_in, int64_t levels, std::optional<at::ScalarType> out_dtype) {
  const char* op = "dfb_dec";
  check_cuda(op, "x", x_in);
  check_dfb_input(op, x_in, levels);
  const at::ScalarType bd = dfb_band_dtype(op, x_in.scalar_type(), out_dtype);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Tensor x = x_in.contiguous();
  const int64_t N = x.size(0), H = x.size(1), W = x.size(2), K = (int64_t)1 << levels;
  check_dfb_fits(op, x, H, W);
  Tensor bands = at::empty({K, N, H * W / K}, x.options().dtype(bd));
  launch_dfb(op, DfbMode::kDec, x, bd, levels, x.const_data_ptr(), bands.mutable_data_ptr(), nullptr, nullptr, nullptr,
             nullptr, N, H, W);
  return bands;
}

Tensor dfb_dec_backward_cuda(const Tensor& grad_in, int64_t levels, int64_t H, int64_t W, at::ScalarType x_dtype) {
  const char* op = "dfb_dec_backward";
  check_cuda(op, "grad", grad_in);
  check_rank(op, "grad", grad_in, 3, "(K, N, H*W/K)");
  check_float(op, "grad", grad_in);
  TORCH_CHECK(is_supported_dtype(x_dtype), "sstkd::", op, ": x_dtype must be a float dtype, got ", x_dtype);
  check_dfb_geometry(op, levels, H, W);
  const int64_t K = (int64_t)1 << levels;
  TORCH_CHECK(grad_in.size(0) == K && grad_in.size(2) == H * W / K, "sstkd::", op, ": grad must have shape (", K,
              ", N, ", H * W / K, ") for levels=", levels, " and a ", H, "x", W, " image, got ", grad_in.sizes());
  dfb_band_dtype(op, x_dtype, grad_in.scalar_type());
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const Tensor grad = grad_in.contiguous();
  const int64_t N = grad.size(1);
  Tensor gx = at::empty({N, H, W}, grad.options().dtype(x_dtype));
  check_dfb_fits(op, gx, H, W);
  launch_dfb(op, DfbMode::kDecAdjoint, gx, grad.scalar_type(), levels, nullptr, nullptr, grad.const_data_ptr(),
             nullptr, nullptr, gx.mutable_data_ptr(), N, H, W);
  return gx;
}

Tensor dfb_energy_cuda(const Tensor& x_in, int64_t levels) {
  const char* op = "dfb_energy";
  check_cuda(op, "x", x_in);
  check_dfb_input(op, x_in, levels);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Tensor x = x_in.contiguous();
  const int64_t N = x.size(0), H = x.size(1), W = x.size(2), K = (int64_t)1 << levels;
  check_dfb_fits(op, x, H, W);
  Tensor en = at::empty({N, K}, x.options().dtype(acc_dtype(x.scalar_type())));
  launch_dfb(op, DfbMode::kEnergy, x, x.scalar_type(), levels, x.const_data_ptr(), nullptr, nullptr, nullptr,
             en.mutable_data_ptr(), nullptr, N, H, W);
  return en;
}

Tensor dfb_energy_backward_cuda(const Tensor& x_in, const Tensor& grad_in, int64_t levels) {
  const char* op = "dfb_energy_backward";
  check_cuda(op, "x", x_in);
  check_cuda(op, "grad", grad_in);
  check_dfb_input(op, x_in, levels);
  const int64_t N = x_in.size(0), H = x_in.size(1), W = x_in.size(2), K = (int64_t)1 << levels;
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Tensor x = x_in.contiguous();
  int64_t gs = 0;
  const Tensor g = energy_grad(op, grad_in, x, K, gs);
  check_dfb_fits(op, x, H, W);
  Tensor gx = at::empty_like(x);
  launch_dfb(op, DfbMode::kEnergyAdjoint, x, x.scalar_type(), levels, x.const_data_ptr(), nullptr, nullptr,
             g.const_data_ptr(), nullptr, gx.mutable_data_ptr(), N, H, W, nullptr, nullptr, 0, gs);
  return gx;
}

Tensor dfb_energy_low_cuda(const Tensor& x_in, const Tensor& low_in, int64_t levels) {
  const char* op = "dfb_energy_low";
  check_cuda(op, "x", x_in);
  check_dfb_input(op, x_in, levels);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Tensor x = x_in.contiguous();
  const Tensor low = checked_low(op, low_in, x);
  const int64_t N = x.size(0), H = x.size(1), W = x.size(2), K = (int64_t)1 << levels;
  check_dfb_fits(op, x, H, W);
  Tensor en = at::empty({N, 1 + K}, x.options().dtype(acc_dtype(x.scalar_type())));
  launch_dfb(op, DfbMode::kEnergy, x, x.scalar_type(), levels, x.const_data_ptr(), nullptr, nullptr, nullptr,
             en.mutable_data_ptr(), nullptr, N, H, W, low.const_data_ptr(), nullptr, low.size(1) * low.size(2));
  return en;
}

std::tuple<Tensor, Tensor> dfb_energy_low_backward_cuda(const Tensor& x_in, const Tensor& low_in,
                                                        const Tensor& grad_in, int64_t levels) {
  const char* op = "dfb_energy_low_backward";
  check_cuda(op, "x", x_in);
  check_cuda(op, "grad", grad_in);
  check_dfb_input(op, x_in, levels);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Tensor x = x_in.contiguous();
  const Tensor low = checked_low(op, low_in, x);
  const int64_t N = x.size(0), H = x.size(1), W = x.size(2), K = (int64_t)1 << levels;
  int64_t gs = 0;
  const Tensor g = energy_grad(op, grad_in, x, 1 + K, gs);
  check_dfb_fits(op, x, H, W);
  Tensor gx = at::empty_like(x);
  Tensor g_low = at::empty_like(low);
  launch_dfb(op, DfbMode::kEnergyAdjoint, x, x.scalar_type(), levels, x.const_data_ptr(), nullptr, nullptr,
             g.const_data_ptr(), nullptr, gx.mutable_data_ptr(), N, H, W, low.const_data_ptr(),
             g_low.mutable_data_ptr(), low.size(1) * low.size(2), gs);
  return {gx, g_low};
}

void check_level_input(const char* op, const Tensor& x, int64_t levels) {
  check_dfb_input(op, x, levels);
  TORCH_CHECK(x.size(1) % 2 == 0 && x.size(2) % 2 == 0, "sstkd::", op, ": x must have even H and W, got shape ",
              x.sizes());
}

void check_level_fits(const char* op, const Tensor& x) {
  check_smem_fits(op, x, x.size(1), x.size(2), dfb_level_smem_bytes(dtype_of(x), x.size(1), x.size(2)), "level",
                  "lp_dec + dfb_energy");
}

std::tuple<Tensor, Tensor> level_energy_cuda(const Tensor& x_in, int64_t levels, bool last) {
  const char* op = "level_energy";
  check_cuda(op, "x", x_in);
  check_level_input(op, x_in, levels);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Tensor x = x_in.contiguous();
  const int64_t N = x.size(0), H = x.size(1), W = x.size(2), K = (int64_t)1 << levels;
  check_level_fits(op, x);
  const auto acc = x.options().dtype(acc_dtype(x.scalar_type()));
  Tensor low = at::empty({N, H / 2, W / 2}, acc);
  Tensor en = at::empty({N, (last ? 1 : 0) + K}, acc);
  check_launch(dfb_level_launch(false, dtype_of(x), (int)levels, last, x.const_data_ptr(), nullptr, 0,
                                en.mutable_data_ptr(), nullptr, low.mutable_data_ptr(), nullptr, N, H, W,
                                c10::cuda::getCurrentCUDAStream().stream()),
               op);
  return {low, en};
}

Tensor level_energy_backward_cuda(const Tensor& x_in, const Tensor& grad_in, const std::optional<Tensor>& grad_low_in,
                                  int64_t levels, bool last) {
  const char* op = "level_energy_backward";
  check_cuda(op, "x", x_in);
  check_cuda(op, "grad", grad_in);
  check_level_input(op, x_in, levels);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Tensor x = x_in.contiguous();
  const int64_t N = x.size(0), H = x.size(1), W = x.size(2), K = (int64_t)1 << levels;
  int64_t gs = 0;
  const Tensor g = energy_grad(op, grad_in, x, (last ? 1 : 0) + K, gs);
  Tensor gl;
  if (!last) {
    TORCH_CHECK(grad_low_in.has_value(), "sstkd::", op, ": grad_low is required unless last=True");
    check_cuda(op, "grad_low", *grad_low_in);
    TORCH_CHECK(grad_low_in->dim() == 3 && grad_low_in->size(0) == N && grad_low_in->size(1) == H / 2 &&
                    grad_low_in->size(2) == W / 2,
                "sstkd::", op, ": grad_low must have shape (N, H/2, W/2) = (", N, ", ", H / 2, ", ", W / 2, "), got ",
                grad_low_in->sizes());
    TORCH_CHECK(grad_low_in->device() == x.device(), "sstkd::", op, ": grad_low is on ", grad_low_in->device(),
                " but x is on ", x.device());
    gl = grad_low_in->to(acc_dtype(x.scalar_type())).contiguous();
  }
  check_level_fits(op, x);
  Tensor gx = at::empty_like(x);
  check_launch(dfb_level_launch(true, dtype_of(x), (int)levels, last, x.const_data_ptr(), g.const_data_ptr(), gs,
                                nullptr, gx.mutable_data_ptr(), nullptr, last ? nullptr : gl.const_data_ptr(), N, H,
                                W, c10::cuda::getCurrentCUDAStream().stream()),
               op);
  return gx;
}

Tensor dfb_rec_cuda(const Tensor& bands_in, int64_t levels, int64_t H, int64_t W,
                    std::optional<at::ScalarType> out_dtype) {
  const char* op = "dfb_rec";
  check_cuda(op, "bands", bands_in);
  check_rank(op, "bands", bands_in, 3, "(K, N, H*W/K)");
  check_float(op, "bands", bands_in);
  check_dfb_geometry(op, levels, H, W);
  const int64_t K = (int64_t)1 << levels;
  TORCH_CHECK(bands_in.size(0) == K && bands_in.size(2) == H * W / K, "sstkd::", op, ": bands must have shape (", K,
              ", N, ", H * W / K, ") for levels=", levels, " and a ", H, "x", W, " image, got ", bands_in.sizes());
  const at::ScalarType xd = dfb_band_dtype(op, bands_in.scalar_type(), out_dtype);
  const c10::cuda::CUDAGuard guard(bands_in.device());
  const Tensor bands = bands_in.contiguous();
  const int64_t N = bands.size(1);
  Tensor x = at::empty({N, H, W}, bands.options().dtype(xd));
  check_dfb_fits(op, x, H, W);
  launch_dfb(op, DfbMode::kRec, x, bands.scalar_type(), levels, nullptr, nullptr, bands.const_data_ptr(), nullptr,
             nullptr, x.mutable_data_ptr(), N, H, W);
  return x;
}

Tensor dfb_rec_backward_cuda(const Tensor& gx_in, int64_t levels, at::ScalarType band_dtype) {
  const char* op = "dfb_rec_backward";
  check_cuda(op, "grad_x", gx_in);
  check_dfb_input(op, gx_in, levels);
  dfb_band_dtype(op, gx_in.scalar_type(), band_dtype);
  const c10::cuda::CUDAGuard guard(gx_in.device());
  const Tensor gx = gx_in.contiguous();
  const int64_t N = gx.size(0), H = gx.size(1), W = gx.size(2), K = (int64_t)1 << levels;
  check_dfb_fits(op, gx, H, W);
  Tensor gb = at::empty({K, N, H * W / K}, gx.options().dtype(band_dtype));
  launch_dfb(op, DfbMode::kRecAdjoint, gx, band_dtype, levels, gx.const_data_ptr(), gb.mutable_data_ptr(), nullptr,
             nullptr, nullptr, nullptr, N, H, W);
  return gb;
}

// --------------------------------------------------------------------------- level decomposition
Dtype dtype_of_type(at::ScalarType t) {
  return t == at::kDouble ? Dtype::kFloat64 : t == at::kHalf ? Dtype::kFloat16 : t == at::kBFloat16 ? Dtype::kBFloat16
                                                                                                    : Dtype::kFloat32;
}

void check_level_dec_levels(const char* op, int64_t levels) {
  TORCH_CHECK(levels >= 1 && levels <= kMaxLevelDecLevels, "sstkd::", op, ": levels must be in [1, ",
              kMaxLevelDecLevels, "], got ", levels, " (larger trees: lp_dec + dfb_dec)");
}

// The dtype of a level-dec output (`name`): `given`, else `fallback`; it must pair with x's.
at::ScalarType level_dec_dtype(const char* op, const char* name, at::ScalarType x, std::optional<at::ScalarType> given,
                               at::ScalarType fallback) {
  const at::ScalarType o = given.value_or(fallback);
  TORCH_CHECK(is_supported_dtype(o) && (o == at::kDouble) == (x == at::kDouble), "sstkd::", op, ": ", name, " ", o,
              " cannot pair with ", x, " (float64 goes with float64; float32/float16/bfloat16 with each other)");
  return o;
}

std::tuple<Tensor, Tensor> level_dec_cuda(const Tensor& x_in, int64_t levels, std::optional<at::ScalarType> band_dtype,
                                          std::optional<at::ScalarType> low_dtype) {
  const char* op = "level_dec";
  check_cuda(op, "x", x_in);
  check_level_input(op, x_in, levels);
  check_level_dec_levels(op, levels);
  const at::ScalarType xt = x_in.scalar_type();
  const at::ScalarType bd = level_dec_dtype(op, "band_dtype", xt, band_dtype, xt);
  const at::ScalarType ld = level_dec_dtype(op, "low_dtype", xt, low_dtype, acc_dtype(xt));
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Tensor x = x_in.contiguous();
  const int64_t N = x.size(0), H = x.size(1), W = x.size(2), K = (int64_t)1 << levels;
  check_level_fits(op, x);
  Tensor low = at::empty({N, H / 2, W / 2}, x.options().dtype(ld));
  Tensor bands = at::empty({K, N, H * W / K}, x.options().dtype(bd));
  check_launch(dfb_level_dec_launch(false, dtype_of(x), dtype_of(bands), dtype_of(low), (int)levels,
                                    x.const_data_ptr(), bands.mutable_data_ptr(), low.mutable_data_ptr(), nullptr,
                                    nullptr, nullptr, N, H, W, c10::cuda::getCurrentCUDAStream().stream()),
               op);
  return {low, bands};
}

Tensor level_dec_backward_cuda(const c10::List<std::optional<Tensor>>& grad_bands,
                               const std::optional<Tensor>& grad_low_in, int64_t levels, int64_t N, int64_t H,
                               int64_t W, at::ScalarType x_dtype) {
  const char* op = "level_dec_backward";
  check_level_dec_levels(op, levels);
  check_dfb_geometry(op, levels, H, W);
  TORCH_CHECK(H % 2 == 0 && W % 2 == 0 && N >= 0 && N <= INT32_MAX, "sstkd::", op,
              ": expected N in [0, 2^31-1] and even H, W, got N=", N, ", H=", H, ", W=", W);
  TORCH_CHECK(is_supported_dtype(x_dtype), "sstkd::", op, ": x_dtype must be a float dtype, got ", x_dtype);
  const int64_t K = (int64_t)1 << levels, area = H * W / K;
  TORCH_CHECK((int64_t)grad_bands.size() == K, "sstkd::", op, ": expected ", K, " sub-band cotangents for levels=",
              levels, ", got ", grad_bands.size());
  // the device and the band dtype: of the first cotangent given; the others are brought to it
  std::optional<Tensor> first;
  for (const auto& g : grad_bands) {
    const std::optional<Tensor> t = g;
    if (t.has_value() && t->defined()) {
      first = t;
      break;
    }
  }
  if (!first && grad_low_in.has_value() && grad_low_in->defined()) first = grad_low_in;
  TORCH_CHECK(first.has_value(), "sstkd::", op, ": needs at least one cotangent (every grad_bands entry and grad_low are None)");
  check_cuda(op, "grad", *first);
  const c10::cuda::CUDAGuard guard(first->device());
  const at::ScalarType acc = acc_dtype(x_dtype);
  at::ScalarType bd = acc;
  for (const auto& g : grad_bands) {
    const std::optional<Tensor> t = g;
    if (t.has_value() && t->defined()) {
      if ((t->scalar_type() == at::kDouble) == (x_dtype == at::kDouble) && is_supported_dtype(t->scalar_type()))
        bd = t->scalar_type();
      break;
    }
  }
  std::vector<Tensor> keep;
  std::array<const void*, 32> ptrs{};
  for (int64_t k = 0; k < K; ++k) {
    const std::optional<Tensor> t = grad_bands.get(k);
    if (!t.has_value() || !t->defined()) continue;
    check_cuda(op, "grad_bands", *t);
    check_float(op, "grad_bands", *t);
    TORCH_CHECK(t->device() == first->device(), "sstkd::", op, ": grad_bands[", k, "] is on ", t->device(),
                " but the first cotangent is on ", first->device());
    TORCH_CHECK(t->numel() == N * area && t->dim() >= 1 && t->size(0) == N, "sstkd::", op, ": grad_bands[", k,
                "] must hold (N, ", area, ") = (", N, ", ", area, ") elements, got shape ", t->sizes());
    keep.push_back(t->to(bd).contiguous());
    ptrs[k] = keep.back().const_data_ptr();
  }
  Tensor gl;
  if (grad_low_in.has_value() && grad_low_in->defined()) {
    check_cuda(op, "grad_low", *grad_low_in);
    check_float(op, "grad_low", *grad_low_in);
    TORCH_CHECK(grad_low_in->dim() == 3 && grad_low_in->size(0) == N && grad_low_in->size(1) == H / 2 &&
                    grad_low_in->size(2) == W / 2,
                "sstkd::", op, ": grad_low must have shape (N, H/2, W/2) = (", N, ", ", H / 2, ", ", W / 2, "), got ",
                grad_low_in->sizes());
    TORCH_CHECK(grad_low_in->device() == first->device(), "sstkd::", op, ": grad_low is on ", grad_low_in->device(),
                " but the first cotangent is on ", first->device());
    const at::ScalarType lt = grad_low_in->scalar_type();
    gl = grad_low_in->to((lt == at::kDouble) == (x_dtype == at::kDouble) ? lt : acc).contiguous();
  }
  Tensor gx = at::empty({N, H, W}, first->options().dtype(x_dtype));
  check_level_fits(op, gx);
  check_launch(dfb_level_dec_launch(true, dtype_of(gx), dtype_of_type(bd), gl.defined() ? dtype_of(gl) : dtype_of_type(acc),
                                    (int)levels, nullptr, nullptr, nullptr, ptrs.data(),
                                    gl.defined() ? gl.const_data_ptr() : nullptr, gx.mutable_data_ptr(), N, H, W,
                                    c10::cuda::getCurrentCUDAStream().stream()),
               op);
  return gx;
}

// ---------------------------------------------------------------------------------------- Meta
// Shapes and dtypes only; sizes are SymInts so dynamic-shape tracing works.
std::tuple<Tensor, Tensor> lp_decompose_meta(const char* op, const char* name, const Tensor& x) {
  check_rank(op, name, x, 3, "(N, H, W)");
  check_float(op, name, x);
  const auto n = x.sym_size(0), H = x.sym_size(1), W = x.sym_size(2);
  return {at::empty_symint({n, H / 2, W / 2}, x.options()), at::empty_symint({n, H, W}, x.options())};
}

std::tuple<Tensor, Tensor> lp_dec_meta(const Tensor& x, std::optional<at::ScalarType> out_dtype) {
  check_rank("lp_dec", "x", x, 3, "(N, H, W)");
  check_float("lp_dec", "x", x);
  const at::ScalarType od = lp_out_dtype("lp_dec", x.scalar_type(), out_dtype, true);
  const auto n = x.sym_size(0), H = x.sym_size(1), W = x.sym_size(2);
  return {at::empty_symint({n, H / 2, W / 2}, x.options().dtype(od)), at::empty_symint({n, H, W}, x.options().dtype(od))};
}

Tensor lp_dec_backward_meta(const Tensor& grad_low, const Tensor& grad_band, std::optional<at::ScalarType> out_dtype) {
  check_rank("lp_dec_backward", "grad_band", grad_band, 3, "(N, H, W)");
  check_rank("lp_dec_backward", "grad_low", grad_low, 3, "(N, H/2, W/2)");
  check_float("lp_dec_backward", "grad_band", grad_band);
  const at::ScalarType od = lp_out_dtype("lp_dec_backward", grad_band.scalar_type(), out_dtype, false);
  return at::empty_symint(grad_band.sym_sizes(), grad_band.options().dtype(od));
}

Tensor lp_rec_meta(const Tensor& low, const Tensor& band) {
  check_rank("lp_rec", "band", band, 3, "(N, H, W)");
  check_rank("lp_rec", "low", low, 3, "(N, H/2, W/2)");
  check_float("lp_rec", "band", band);
  return at::empty_symint(band.sym_sizes(), band.options());
}

std::tuple<Tensor, Tensor> lp_rec_backward_meta(const Tensor& grad_x) {
  return lp_decompose_meta("lp_rec_backward", "grad_x", grad_x);
}

std::tuple<Tensor, Tensor> quantize_count_meta(const Tensor& s, const Tensor& centers, c10::string_view kernel) {
  check_rank("quantize_count", "s", s, 2, "(B, N)");
  check_rank("quantize_count", "centers", centers, 2, "(B, L)");
  check_float("quantize_count", "s", s);
  parse_kernel("quantize_count", kernel);
  const auto opts = s.options().dtype(acc_dtype(s.scalar_type()));
  const auto B = s.sym_size(0), L = centers.sym_size(1);
  return {at::empty_symint({B, L}, opts), at::empty_symint({B, L}, opts)};
}

Tensor quantize_count_backward_meta(const Tensor& s, const Tensor& centers, c10::string_view kernel,
                                    const std::optional<Tensor>&, const std::optional<Tensor>&) {
  check_rank("quantize_count_backward", "s", s, 2, "(B, N)");
  parse_kernel("quantize_count_backward", kernel);
  return at::empty_symint(s.sym_sizes(), s.options());
}

Tensor sum_squares_meta(const Tensor& x) {
  check_float("sum_squares", "x", x);
  TORCH_CHECK(x.dim() >= 1, "sstkd::sum_squares: x must have a leading row dimension, got a 0-D tensor");
  return at::empty_symint({x.sym_size(0)}, x.options().dtype(acc_dtype(x.scalar_type())));
}

Tensor dfb_dec_meta(const Tensor& x, int64_t levels, std::optional<at::ScalarType> out_dtype) {
  check_rank("dfb_dec", "x", x, 3, "(N, H, W)");
  check_float("dfb_dec", "x", x);
  TORCH_CHECK(levels >= 1 && levels <= 20, "sstkd::dfb_dec: levels must be in [1, 20], got ", levels);
  const at::ScalarType bd = dfb_band_dtype("dfb_dec", x.scalar_type(), out_dtype);
  const int64_t K = (int64_t)1 << levels;
  return at::empty_symint({c10::SymInt(K), x.sym_size(0), x.sym_size(1) * x.sym_size(2) / K}, x.options().dtype(bd));
}

Tensor dfb_dec_backward_meta(const Tensor& grad, int64_t levels, int64_t H, int64_t W, at::ScalarType x_dtype) {
  check_rank("dfb_dec_backward", "grad", grad, 3, "(K, N, H*W/K)");
  return at::empty_symint({grad.sym_size(1), c10::SymInt(H), c10::SymInt(W)}, grad.options().dtype(x_dtype));
}

Tensor dfb_rec_meta(const Tensor& bands, int64_t levels, int64_t H, int64_t W,
                    std::optional<at::ScalarType> out_dtype) {
  check_rank("dfb_rec", "bands", bands, 3, "(K, N, H*W/K)");
  check_float("dfb_rec", "bands", bands);
  const at::ScalarType xd = dfb_band_dtype("dfb_rec", bands.scalar_type(), out_dtype);
  return at::empty_symint({bands.sym_size(1), c10::SymInt(H), c10::SymInt(W)}, bands.options().dtype(xd));
}

Tensor dfb_rec_backward_meta(const Tensor& gx, int64_t levels, at::ScalarType band_dtype) {
  check_rank("dfb_rec_backward", "grad_x", gx, 3, "(N, H, W)");
  TORCH_CHECK(levels >= 1 && levels <= 20, "sstkd::dfb_rec_backward: levels must be in [1, 20], got ", levels);
  const int64_t K = (int64_t)1 << levels;
  return at::empty_symint({c10::SymInt(K), gx.sym_size(0), gx.sym_size(1) * gx.sym_size(2) / K},
                          gx.options().dtype(band_dtype));
}

Tensor dfb_energy_meta(const Tensor& x, int64_t levels) {
  check_rank("dfb_energy", "x", x, 3, "(N, H, W)");
  check_float("dfb_energy", "x", x);
  TORCH_CHECK(levels >= 1 && levels <= 20, "sstkd::dfb_energy: levels must be in [1, 20], got ", levels);
  return at::empty_symint({x.sym_size(0), c10::SymInt((int64_t)1 << levels)},
                          x.options().dtype(acc_dtype(x.scalar_type())));
}

Tensor dfb_energy_backward_meta(const Tensor& x, const Tensor& grad, int64_t levels) {
  check_rank("dfb_energy_backward", "x", x, 3, "(N, H, W)");
  return at::empty_symint(x.sym_sizes(), x.options());
}

Tensor dfb_energy_low_meta(const Tensor& x, const Tensor& low, int64_t levels) {
  check_rank("dfb_energy_low", "x", x, 3, "(N, H, W)");
  check_rank("dfb_energy_low", "low", low, 3, "(N, h, w)");
  check_float("dfb_energy_low", "x", x);
  TORCH_CHECK(low.scalar_type() == x.scalar_type(), "sstkd::dfb_energy_low: low dtype ", low.scalar_type(),
              " differs from x dtype ", x.scalar_type());
  TORCH_CHECK(levels >= 1 && levels <= 20, "sstkd::dfb_energy_low: levels must be in [1, 20], got ", levels);
  return at::empty_symint({x.sym_size(0), c10::SymInt(1 + ((int64_t)1 << levels))},
                          x.options().dtype(acc_dtype(x.scalar_type())));
}

std::tuple<Tensor, Tensor> level_energy_meta(const Tensor& x, int64_t levels, bool last) {
  check_rank("level_energy", "x", x, 3, "(N, H, W)");
  check_float("level_energy", "x", x);
  TORCH_CHECK(levels >= 1 && levels <= 20, "sstkd::level_energy: levels must be in [1, 20], got ", levels);
  const auto acc = x.options().dtype(acc_dtype(x.scalar_type()));
  const auto n = x.sym_size(0), H = x.sym_size(1), W = x.sym_size(2);
  return {at::empty_symint({n, H / 2, W / 2}, acc),
          at::empty_symint({n, c10::SymInt((last ? 1 : 0) + ((int64_t)1 << levels))}, acc)};
}

Tensor level_energy_backward_meta(const Tensor& x, const Tensor& grad, const std::optional<Tensor>& grad_low,
                                  int64_t levels, bool last) {
  check_rank("level_energy_backward", "x", x, 3, "(N, H, W)");
  TORCH_CHECK(last || grad_low.has_value(), "sstkd::level_energy_backward: grad_low is required unless last=True");
  return at::empty_symint(x.sym_sizes(), x.options());
}

std::tuple<Tensor, Tensor> dfb_energy_low_backward_meta(const Tensor& x, const Tensor& low, const Tensor& grad,
                                                        int64_t levels) {
  check_rank("dfb_energy_low_backward", "x", x, 3, "(N, H, W)");
  check_rank("dfb_energy_low_backward", "low", low, 3, "(N, h, w)");
  return {at::empty_symint(x.sym_sizes(), x.options()), at::empty_symint(low.sym_sizes(), low.options())};
}

std::tuple<Tensor, Tensor> level_dec_meta(const Tensor& x, int64_t levels, std::optional<at::ScalarType> band_dtype,
                                          std::optional<at::ScalarType> low_dtype) {
  const char* op = "level_dec";
  check_rank(op, "x", x, 3, "(N, H, W)");
  check_float(op, "x", x);
  check_level_dec_levels(op, levels);
  const at::ScalarType xt = x.scalar_type();
  const at::ScalarType bd = level_dec_dtype(op, "band_dtype", xt, band_dtype, xt);
  const at::ScalarType ld = level_dec_dtype(op, "low_dtype", xt, low_dtype, acc_dtype(xt));
  const int64_t K = (int64_t)1 << levels;
  const auto n = x.sym_size(0), H = x.sym_size(1), W = x.sym_size(2);
  return {at::empty_symint({n, H / 2, W / 2}, x.options().dtype(ld)),
          at::empty_symint({c10::SymInt(K), n, H * W / K}, x.options().dtype(bd))};
}

Tensor level_dec_backward_meta(const c10::List<std::optional<Tensor>>& grad_bands,
                               const std::optional<Tensor>& grad_low, int64_t levels, int64_t N, int64_t H,
                               int64_t W, at::ScalarType x_dtype) {
  const char* op = "level_dec_backward";
  check_level_dec_levels(op, levels);
  TORCH_CHECK((int64_t)grad_bands.size() == ((int64_t)1 << levels), "sstkd::", op, ": expected ",
              (int64_t)1 << levels, " sub-band cotangents for levels=", levels, ", got ", grad_bands.size());
  for (const auto& g : grad_bands) {
    const std::optional<Tensor> t = g;
    if (t.has_value() && t->defined()) return at::empty({N, H, W}, t->options().dtype(x_dtype));
  }
  TORCH_CHECK(grad_low.has_value() && grad_low->defined(), "sstkd::", op,
              ": needs at least one cotangent (every grad_bands entry and grad_low are None)");
  return at::empty({N, H, W}, grad_low->options().dtype(x_dtype));
}

// ----------------------------------------------------------------------------------------- CPU
[[noreturn]] void cpu_error(const char* op, const char* name, const Tensor& t) {
  check_cuda(op, name, t);  // throws: t is a CPU tensor here
  TORCH_CHECK(false, "sstkd::", op, ": ", name, " must be a CUDA tensor");
}

}  // namespace
}  // namespace sstkd

TORCH_LIBRARY(sstkd, m) {
  m.def("lp_dec(Tensor x, ScalarType? out_dtype=None) -> (Tensor low, Tensor band)");
  m.def("lp_dec_backward(Tensor grad_low, Tensor grad_band, ScalarType? out_dtype=None) -> Tensor");
  m.def("lp_rec(Tensor low, Tensor band) -> Tensor");
  m.def("lp_rec_backward(Tensor grad_x) -> (Tensor grad_low, Tensor grad_band)");
  m.def("quantize_count(Tensor s, Tensor centers, str kernel) -> (Tensor counts, Tensor sums)");
  m.def(
      "quantize_count_backward(Tensor s, Tensor centers, str kernel, Tensor? grad_counts, Tensor? grad_sums) -> "
      "Tensor");
  m.def("sum_squares(Tensor x) -> Tensor");
  m.def("dfb_dec(Tensor x, int levels, ScalarType? out_dtype=None) -> Tensor");
  m.def("dfb_dec_backward(Tensor grad, int levels, int H, int W, ScalarType x_dtype) -> Tensor");
  m.def("dfb_energy(Tensor x, int levels) -> Tensor");
  m.def("dfb_energy_backward(Tensor x, Tensor grad, int levels) -> Tensor");
  m.def("dfb_energy_low(Tensor x, Tensor low, int levels) -> Tensor");
  m.def("dfb_energy_low_backward(Tensor x, Tensor low, Tensor grad, int levels) -> (Tensor grad_x, Tensor grad_low)");
  m.def("level_energy(Tensor x, int levels, bool last) -> (Tensor low, Tensor energies)");
  m.def("level_energy_backward(Tensor x, Tensor grad, Tensor? grad_low, int levels, bool last) -> Tensor");
  m.def("level_dec(Tensor x, int levels, ScalarType? band_dtype=None, ScalarType? low_dtype=None) -> "
        "(Tensor low, Tensor bands)");
  m.def("level_dec_backward(Tensor?[] grad_bands, Tensor? grad_low, int levels, int N, int H, int W, "
        "ScalarType x_dtype) -> Tensor");
  m.def("dfb_rec(Tensor bands, int levels, int H, int W, ScalarType? out_dtype=None) -> Tensor");
  m.def("dfb_rec_backward(Tensor grad_x, int levels, ScalarType band_dtype) -> Tensor");
}

TORCH_LIBRARY_IMPL(sstkd, CUDA, m) {
  m.impl("lp_dec", &sstkd::lp_dec_cuda);
  m.impl("lp_dec_backward", &sstkd::lp_dec_backward_cuda);
  m.impl("lp_rec", &sstkd::lp_rec_cuda);
  m.impl("lp_rec_backward", &sstkd::lp_rec_backward_cuda);
  m.impl("quantize_count", &sstkd::quantize_count_cuda);
  m.impl("quantize_count_backward", &sstkd::quantize_count_backward_cuda);
  m.impl("sum_squares", &sstkd::sum_squares_cuda);
  m.impl("dfb_dec", &sstkd::dfb_dec_cuda);
  m.impl("dfb_dec_backward", &sstkd::dfb_dec_backward_cuda);
  m.impl("dfb_energy", &sstkd::dfb_energy_cuda);
  m.impl("dfb_energy_backward", &sstkd::dfb_energy_backward_cuda);
  m.impl("dfb_energy_low", &sstkd::dfb_energy_low_cuda);
  m.impl("dfb_energy_low_backward", &sstkd::dfb_energy_low_backward_cuda);
  m.impl("level_energy", &sstkd::level_energy_cuda);
  m.impl("level_energy_backward", &sstkd::level_energy_backward_cuda);
  m.impl("level_dec", &sstkd::level_dec_cuda);
  m.impl("level_dec_backward", &sstkd::level_dec_backward_cuda);
  m.impl("dfb_rec", &sstkd::dfb_rec_cuda);
  m.impl("dfb_rec_backward", &sstkd::dfb_rec_backward_cuda);
}

TORCH_LIBRARY_IMPL(sstkd, Meta, m) {
  m.impl("lp_dec", &sstkd::lp_dec_meta);
  m.impl("lp_dec_backward", &sstkd::lp_dec_backward_meta);
  m.impl("lp_rec", &sstkd::lp_rec_meta);
  m.impl("lp_rec_backward", &sstkd::lp_rec_backward_meta);
  m.impl("quantize_count", &sstkd::quantize_count_meta);
  m.impl("quantize_count_backward", &sstkd::quantize_count_backward_meta);
  m.impl("sum_squares", &sstkd::sum_squares_meta);
  m.impl("dfb_dec", &sstkd::dfb_dec_meta);
  m.impl("dfb_dec_backward", &sstkd::dfb_dec_backward_meta);
  m.impl("dfb_energy", &sstkd::dfb_energy_meta);
  m.impl("dfb_energy_backward", &sstkd::dfb_energy_backward_meta);
  m.impl("dfb_energy_low", &sstkd::dfb_energy_low_meta);
  m.impl("dfb_energy_low_backward", &sstkd::dfb_energy_low_backward_meta);
  m.impl("level_energy", &sstkd::level_energy_meta);
  m.impl("level_energy_backward", &sstkd::level_energy_backward_meta);
  m.impl("level_dec", &sstkd::level_dec_meta);
  m.impl("level_dec_backward", &sstkd::level_dec_backward_meta);
  m.impl("dfb_rec", &sstkd::dfb_rec_meta);
  m.impl("dfb_rec_backward", &sstkd::dfb_rec_backward_meta);
}

// CPU tensors get a clear error instead of the dispatcher's "could not run".
TORCH_LIBRARY_IMPL(sstkd, CPU, m) {
  using at::Tensor;
  using sstkd::cpu_error;
  m.impl("lp_dec", [](const Tensor& x, std::optional<at::ScalarType>) -> std::tuple<Tensor, Tensor> {
    cpu_error("lp_dec", "x", x);
  });
  m.impl("lp_dec_backward", [](const Tensor& gl, const Tensor& gb, std::optional<at::ScalarType>) -> Tensor {
    cpu_error("lp_dec_backward", "grad_band", gb);
  });
  m.impl("lp_rec", [](const Tensor& low, const Tensor& band) -> Tensor { cpu_error("lp_rec", "band", band); });
  m.impl("lp_rec_backward",
         [](const Tensor& gx) -> std::tuple<Tensor, Tensor> { cpu_error("lp_rec_backward", "grad_x", gx); });
  m.impl("quantize_count", [](const Tensor& s, const Tensor&, c10::string_view) -> std::tuple<Tensor, Tensor> {
    cpu_error("quantize_count", "s", s);
  });
  m.impl("quantize_count_backward",
         [](const Tensor& s, const Tensor&, c10::string_view, const std::optional<Tensor>&,
            const std::optional<Tensor>&) -> Tensor { cpu_error("quantize_count_backward", "s", s); });
  m.impl("sum_squares", [](const Tensor& x) -> Tensor { cpu_error("sum_squares", "x", x); });
  m.impl("dfb_dec", [](const Tensor& x, int64_t, std::optional<at::ScalarType>) -> Tensor {
    cpu_error("dfb_dec", "x", x);
  });
  m.impl("dfb_dec_backward", [](const Tensor& g, int64_t, int64_t, int64_t, at::ScalarType) -> Tensor {
    cpu_error("dfb_dec_backward", "grad", g);
  });
  m.impl("dfb_energy", [](const Tensor& x, int64_t) -> Tensor { cpu_error("dfb_energy", "x", x); });
  m.impl("dfb_energy_backward",
         [](const Tensor& x, const Tensor&, int64_t) -> Tensor { cpu_error("dfb_energy_backward", "x", x); });
  m.impl("dfb_energy_low",
         [](const Tensor& x, const Tensor&, int64_t) -> Tensor { cpu_error("dfb_energy_low", "x", x); });
  m.impl("dfb_energy_low_backward",
         [](const Tensor& x, const Tensor&, const Tensor&, int64_t) -> std::tuple<Tensor, Tensor> {
           cpu_error("dfb_energy_low_backward", "x", x);
         });
  m.impl("level_energy",
         [](const Tensor& x, int64_t, bool) -> std::tuple<Tensor, Tensor> { cpu_error("level_energy", "x", x); });
  m.impl("level_energy_backward",
         [](const Tensor& x, const Tensor&, const std::optional<Tensor>&, int64_t, bool) -> Tensor {
           cpu_error("level_energy_backward", "x", x);
         });
  m.impl("level_dec",
         [](const Tensor& x, int64_t, std::optional<at::ScalarType>,
            std::optional<at::ScalarType>) -> std::tuple<Tensor, Tensor> { cpu_error("level_dec", "x", x); });
  m.impl("level_dec_backward", [](const c10::List<std::optional<Tensor>>& gb, const std::optional<Tensor>& gl, int64_t,
                                  int64_t, int64_t, int64_t, at::ScalarType) -> Tensor {
    for (const auto& g : gb) {
      const std::optional<Tensor> t = g;
      if (t.has_value() && t->defined()) cpu_error("level_dec_backward", "grad_bands", *t);
    }
    if (gl.has_value() && gl->defined()) cpu_error("level_dec_backward", "grad_low", *gl);
    TORCH_CHECK(false, "sstkd::level_dec_backward: needs at least one cotangent, as a CUDA tensor");
  });
  m.impl("dfb_rec", [](const Tensor& b, int64_t, int64_t, int64_t, std::optional<at::ScalarType>) -> Tensor {
    cpu_error("dfb_rec", "bands", b);
  });
  m.impl("dfb_rec_backward", [](const Tensor& g, int64_t, at::ScalarType) -> Tensor {
    cpu_error("dfb_rec_backward", "grad_x", g);
  });
}

// ------------------------------------------------------------------------------ Python module
// Importing the module loads the library, which runs the registrations above.
#ifndef TORCH_EXTENSION_NAME
#define TORCH_EXTENSION_NAME _C
#endif
#define SSTKD_STR_(x) #x
#define SSTKD_STR(x) SSTKD_STR_(x)
#define SSTKD_CAT_(a, b) a##b
#define SSTKD_CAT(a, b) SSTKD_CAT_(a, b)

extern "C" PyMODINIT_FUNC SSTKD_CAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  static struct PyModuleDef def = {
      PyModuleDef_HEAD_INIT, SSTKD_STR(TORCH_EXTENSION_NAME),
      "sstkd CUDA kernels; the ops are registered as torch.ops.sstkd.*", -1, nullptr,
  };
  PyObject* mod = PyModule_Create(&def);
  if (mod == nullptr) return nullptr;
  if (PyModule_AddIntConstant(mod, "cuda_runtime_version", CUDART_VERSION) < 0 ||
      PyModule_AddObject(mod, "ops",
                         Py_BuildValue("(sssssssssssssssssss)", "lp_dec", "lp_dec_backward", "lp_rec",
                                       "lp_rec_backward", "quantize_count", "quantize_count_backward", "sum_squares",
                                       "dfb_dec", "dfb_dec_backward", "dfb_energy", "dfb_energy_backward",
                                       "dfb_energy_low", "dfb_energy_low_backward", "level_energy",
                                       "level_energy_backward", "level_dec", "level_dec_backward", "dfb_rec",
                                       "dfb_rec_backward")) < 0) {
    Py_DECREF(mod);
    return nullptr;
  }
  return mod;
}
