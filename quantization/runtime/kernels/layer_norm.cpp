// LayerNorm(x + residual) over the last dimension, in one pass over the rows: each row's sum is written to the
// output and normalized there while it is in L1. Inductor's lowering of the same expression (torch 2.13, dynamic
// shapes) splits it into a mean, a variance and a normalizing loop over the whole tensor, each reading both inputs
// from L2 or L3 again. Mean and variance are computed in two passes over the row, as ATen's CPU LayerNorm does.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "row_norm.h"

namespace {

// x, residual: float32 of one shape [..., width]; weight, bias: float32 [width]. Returns LayerNorm(x + residual).
at::Tensor add_layer_norm(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                          const at::Tensor& bias, double eps) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && residual.scalar_type() == at::kFloat &&
                  weight.scalar_type() == at::kFloat && bias.scalar_type() == at::kFloat,
              "add_layer_norm takes float32 tensors");
  TORCH_CHECK(x.dim() >= 1 && x.sizes() == residual.sizes(), "x and residual must have one shape");
  const int64_t width = x.size(-1);
  TORCH_CHECK(weight.numel() == width && bias.numel() == width, "weight and bias must have the last dimension's size");
  const auto xc = x.contiguous(), rc = residual.contiguous(), wc = weight.contiguous(), bc = bias.contiguous();
  auto out = at::empty_like(xc);
  const int64_t rows = width == 0 ? 0 : xc.numel() / width;
  const float *xp = xc.data_ptr<float>(), *rp = rc.data_ptr<float>(), *wp = wc.data_ptr<float>(),
              *bp = bc.data_ptr<float>();
  float* op = out.data_ptr<float>();
  // a few rows a task: a row of BERT-base is 3 KB, and a short sequence's few rows are not worth a second thread
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      qbert::add_row_norm(xp + r * width, rp + r * width, wp, bp, width, static_cast<float>(eps), op + r * width);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(qbert_kernels, m) {
  m.def("add_layer_norm(Tensor x, Tensor residual, Tensor weight, Tensor bias, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(qbert_kernels, CompositeExplicitAutograd, m) { m.impl("add_layer_norm", &add_layer_norm); }
