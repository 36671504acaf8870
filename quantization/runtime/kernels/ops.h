// The kernels' cores that other kernels compose (encoder_layer.cpp runs a whole BERT layer from them): raw rows in
// and out, no tensor operations, so that they can also run inside another op's parallel region. There each runs on the calling
// thread alone (at::parallel_for does not nest), with the same arithmetic for every output value.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace qbert {

// A packed Linear layer's weights: codes as `pack_codes` lays them out, and its row parameters padded to the row
// blocks (lowbit_linear.cpp)
struct PackedWeights {
  const uint8_t* packed;
  int64_t blocks, groups;  // the packed codes' first two dimensions
  int64_t bits, rows;      // rows: the layer's output features
  const float* row_scale;
  const int32_t* row_zero;
  const float* bias;
};

// The weights of a packed Linear layer for rows `inputs` wide, checked: packed from pack_codes; row_scale, bias
// float32 and row_zero int32, contiguous, covering the padded rows (the tensors must outlive the result's use).
PackedWeights packed_weights(const at::Tensor& packed, int64_t bits, int64_t rows, const at::Tensor& row_scale,
                             const at::Tensor& row_zero, const at::Tensor& bias, int64_t inputs);

// The LayerNorm of each output row's sum with a residual [tokens, rows], as a GEMM's epilogue
struct ResidualLayerNorm {
  const float* residual;
  const float* weight;
  const float* bias;
  float eps;
};

// y[tokens, w.rows] = x[tokens, inputs] times the packed weights (per-token int8 activations), then GELU (erf) where
// `gelu`, or the LayerNorm of its sum with a residual where `norm` is given.
void linear_rows(const float* x, int64_t tokens, int64_t inputs, const PackedWeights& w, bool gelu,
                 const ResidualLayerNorm* norm, float* y);

// Where a query may attend a key: allowed[b * batch_stride + q * query_stride + k * key_stride] (true: attend); a
// null `allowed` attends every key.
struct KeyMask {
  const bool* allowed;
  int64_t batch_stride, query_stride, key_stride;
};

// Whether attention_heads can take `products` here (bf16 needs AVX-512 BF16)
bool products_supported(int64_t products);

// softmax(q·kᵀ·scale + mask)·v for every head: qkv float32 [batch, seq, 3, heads, dim] -> out [batch, seq, heads·dim];
// `products` as attention.cpp's `Products`.
void attention_heads(const float* qkv, int64_t batch, int64_t seq, int64_t heads, int64_t dim, const KeyMask& mask,
                     double scale, int64_t products, float* out);

}  // namespace qbert
