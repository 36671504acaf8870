// One BERT encoder layer as one op, composed of the kernels' cores (ops.h):
//   qkv = linear(x);  context = attention(qkv, mask);  a = LayerNorm(linear(context) + x);
//   y = LayerNorm(linear(GELU(linear(a))) + a)
// Every value is computed as the layer's separate ops compute it. Sequences that split evenly between the threads
// run sequence-parallel: each thread takes whole sequences through the whole layer, with no barrier between the
// steps and each step's rows still in its own core's caches when the next reads them. The rest of a batch (all of it
// when it has fewer sequences than threads) runs step by step, each step on every thread.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <memory>
#include <optional>

#include "ops.h"

namespace {

struct EncoderLayer {
  qbert::PackedWeights qkv, attention_output, intermediate, output;
  const float *norm1_weight, *norm1_bias, *norm2_weight, *norm2_bias;
  float eps1, eps2;
  int64_t heads;
  double scale;
  int64_t products;
};

// The layer on `batch` sequences of `seq` tokens, rows `width` wide: x, y [batch, seq, width]
void layer_rows(const EncoderLayer& layer, const float* x, int64_t batch, int64_t seq, int64_t width,
                const qbert::KeyMask& mask, float* y) {
  const int64_t tokens = batch * seq, inner_width = layer.intermediate.rows;
  const std::unique_ptr<float[]> qkv(new float[tokens * 3 * width]), context(new float[tokens * width]),
      attended(new float[tokens * width]), inner(new float[tokens * inner_width]);
  qbert::linear_rows(x, tokens, width, layer.qkv, false, nullptr, qkv.get());
  qbert::attention_heads(qkv.get(), batch, seq, layer.heads, width / layer.heads, mask, layer.scale, layer.products,
                         context.get());
  const qbert::ResidualLayerNorm norm1{x, layer.norm1_weight, layer.norm1_bias, layer.eps1};
  qbert::linear_rows(context.get(), tokens, width, layer.attention_output, false, &norm1, attended.get());
  qbert::linear_rows(attended.get(), tokens, width, layer.intermediate, true, nullptr, inner.get());
  const qbert::ResidualLayerNorm norm2{attended.get(), layer.norm2_weight, layer.norm2_bias, layer.eps2};
  qbert::linear_rows(inner.get(), tokens, inner_width, layer.output, false, &norm2, y);
}

const float* float_values(const at::Tensor& t, int64_t n, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == n, name, " must be ", n,
              " contiguous float32 values");
  return t.data_ptr<float>();
}

// hidden: float32 [batch, seq, width]; mask: bool [batch, 1, seq or 1, seq] (true: attend), or absent. `linears`:
// packed codes, row scales, row zero points and bias (as `linear` takes them) of the stacked Q/K/V projection, the
// attention output, the intermediate (GELU) and the output Linear, in that order; `bits` and `rows` theirs. `norms`:
// weight and bias of the attention block's LayerNorm, then the output's; `eps` theirs. `scale`, `products`: as
// `attention` takes them. Returns the layer's output [batch, seq, width].
at::Tensor encoder_layer(const at::Tensor& hidden, const std::optional<at::Tensor>& mask, at::TensorList linears,
                         at::IntArrayRef bits, at::IntArrayRef rows, at::TensorList norms, at::ArrayRef<double> eps,
                         int64_t heads, double scale, int64_t products) {
  TORCH_CHECK(hidden.dim() == 3 && hidden.scalar_type() == at::kFloat, "hidden must be float32 [batch, seq, width]");
  TORCH_CHECK(linears.size() == 16 && bits.size() == 4 && rows.size() == 4 && norms.size() == 4 && eps.size() == 2,
              "an encoder layer takes 4 Linear layers (4 tensors each, bits, rows), 2 LayerNorms (weight, bias, eps)");
  TORCH_CHECK(qbert::products_supported(products), "attention products ", products, " cannot run here (0: float32, "
              "1: bf16 on a CPU with AVX-512 BF16, 2: int16)");
  const auto x = hidden.contiguous();
  const int64_t batch = x.size(0), seq = x.size(1), width = x.size(2);
  TORCH_CHECK(heads > 0 && width % heads == 0, "the width must split into ", heads, " heads");
  TORCH_CHECK(rows[0] == 3 * width && rows[1] == width && rows[3] == width,
              "Q/K/V must give 3 x width outputs, the attention output and the output Linear width");
  const int64_t inputs[4] = {width, width, width, rows[2]};
  qbert::PackedWeights weights[4];
  for (int i = 0; i < 4; ++i)
    weights[i] = qbert::packed_weights(linears[4 * i], bits[i], rows[i], linears[4 * i + 1], linears[4 * i + 2],
                                       linears[4 * i + 3], inputs[i]);
  const EncoderLayer layer{weights[0],
                           weights[1],
                           weights[2],
                           weights[3],
                           float_values(norms[0], width, "the first LayerNorm's weight"),
                           float_values(norms[1], width, "the first LayerNorm's bias"),
                           float_values(norms[2], width, "the second LayerNorm's weight"),
                           float_values(norms[3], width, "the second LayerNorm's bias"),
                           static_cast<float>(eps[0]),
                           static_cast<float>(eps[1]),
                           heads,
                           scale,
                           products};
  at::Tensor m;
  if (mask.has_value() && mask->defined()) {
    TORCH_CHECK(mask->scalar_type() == at::kBool && mask->dim() == 4 && mask->size(1) == 1, "mask must be bool "
                "[batch, 1, seq or 1, seq]");
    m = mask->expand({batch, 1, seq, seq});
  }
  const bool* allowed = m.defined() ? m.data_ptr<bool>() : nullptr;
  const int64_t mb = m.defined() ? m.stride(0) : 0, mq = m.defined() ? m.stride(2) : 0, mk = m.defined() ? m.stride(3) : 0;
  auto out = at::empty_like(x);
  if (batch == 0 || seq == 0) return out;
  const float* xp = x.data_ptr<float>();
  float* yp = out.data_ptr<float>();
  const int64_t threads = at::get_num_threads(), sequence_rows = seq * width;
  const int64_t parallel_sequences = threads > 1 ? batch / threads * threads : 0;
  at::parallel_for(0, parallel_sequences, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const qbert::KeyMask one{allowed == nullptr ? nullptr : allowed + b * mb, mb, mq, mk};
      layer_rows(layer, xp + b * sequence_rows, 1, seq, width, one, yp + b * sequence_rows);
    }
  });
  const int64_t b = parallel_sequences;
  if (b < batch) {
    const qbert::KeyMask rest{allowed == nullptr ? nullptr : allowed + b * mb, mb, mq, mk};
    layer_rows(layer, xp + b * sequence_rows, batch - b, seq, width, rest, yp + b * sequence_rows);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(qbert_kernels, m) {
  m.def("encoder_layer(Tensor hidden, Tensor? mask, Tensor[] linears, int[] bits, int[] rows, Tensor[] norms, "
        "float[] eps, int heads, float scale, int products) -> Tensor");
}

TORCH_LIBRARY_IMPL(qbert_kernels, CompositeExplicitAutograd, m) { m.impl("encoder_layer", &encoder_layer); }
