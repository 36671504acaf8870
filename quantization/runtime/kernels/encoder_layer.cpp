// Consecutive BERT encoder layers (one, or a whole encoder) as one op, composed of the kernels' cores (ops.h); a layer:
//   qkv = linear(x);  context = attention(qkv, mask);  a = LayerNorm(linear(context) + x);
//   y = LayerNorm(linear(GELU(linear(a))) + a)
// Every value is computed as the layer's separate ops compute it. Sequences that split evenly between the threads
// run sequence-parallel: each thread takes whole sequences through every layer, with no barrier between the steps or
// the layers, and each step's rows still in its own core's caches when the next reads them. The rest of a batch (all
// of it when it has fewer sequences than threads) runs step by step, each step on every thread.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

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

// The layer on `batch` sequences of `seq` tokens, rows `width` wide: x, y [batch, seq, width] (y may be x: x's rows are
// read before the last step writes y's)
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

// hidden: float32 [batch, seq, width]; mask: bool [batch, 1, seq or 1, seq] (true: attend), or absent. Per layer, in
// order: `linears`, the packed codes, row scales, row zero points and bias (as `linear` takes them) of the stacked
// Q/K/V projection, the attention output, the intermediate (GELU) and the output Linear, and `bits` and `rows`
// theirs; `norms`, the weight and bias of the attention block's LayerNorm, then the output's, and `eps` theirs.
// `scale`, `products`: as `attention` takes them. Returns the last layer's output [batch, seq, width].
at::Tensor encoder_layers(const at::Tensor& hidden, const std::optional<at::Tensor>& mask, at::TensorList linears,
                          at::IntArrayRef bits, at::IntArrayRef rows, at::TensorList norms, at::ArrayRef<double> eps,
                          int64_t heads, double scale, int64_t products) {
  TORCH_CHECK(hidden.dim() == 3 && hidden.scalar_type() == at::kFloat, "hidden must be float32 [batch, seq, width]");
  const int64_t count = static_cast<int64_t>(bits.size()) / 4;
  TORCH_CHECK(count > 0 && bits.size() == 4 * count && linears.size() == 16 * count && rows.size() == 4 * count &&
                  norms.size() == 4 * count && eps.size() == 2 * count,
              "each encoder layer takes 4 Linear layers (4 tensors each, bits, rows) and 2 LayerNorms (weight, bias, "
              "eps)");
  TORCH_CHECK(qbert::products_supported(products), "attention products ", products, " cannot run here (0: float32, "
              "1: bf16 on a CPU with AVX-512 BF16, 2: int16)");
  const auto x = hidden.contiguous();
  const int64_t batch = x.size(0), seq = x.size(1), width = x.size(2);
  TORCH_CHECK(heads > 0 && width % heads == 0, "the width must split into ", heads, " heads");
  std::vector<EncoderLayer> layers;
  for (int64_t l = 0; l < count; ++l) {
    const int64_t* r = rows.data() + 4 * l;
    TORCH_CHECK(r[0] == 3 * width && r[1] == width && r[3] == width,
                "Q/K/V must give 3 x width outputs, the attention output and the output Linear width");
    const int64_t inputs[4] = {width, width, width, r[2]};
    qbert::PackedWeights weights[4];
    for (int64_t i = 0; i < 4; ++i) {
      const at::Tensor* t = linears.data() + 16 * l + 4 * i;
      weights[i] = qbert::packed_weights(t[0], bits[4 * l + i], r[i], t[1], t[2], t[3], inputs[i]);
    }
    const at::Tensor* n = norms.data() + 4 * l;
    layers.push_back({weights[0], weights[1], weights[2], weights[3],
                      float_values(n[0], width, "the first LayerNorm's weight"),
                      float_values(n[1], width, "the first LayerNorm's bias"),
                      float_values(n[2], width, "the second LayerNorm's weight"),
                      float_values(n[3], width, "the second LayerNorm's bias"), static_cast<float>(eps[2 * l]),
                      static_cast<float>(eps[2 * l + 1]), heads, scale, products});
  }
  at::Tensor m;
  if (mask.has_value() && mask->defined()) {
    TORCH_CHECK(mask->scalar_type() == at::kBool && mask->dim() == 4 && mask->size(1) == 1, "mask must be bool "
                "[batch, 1, seq or 1, seq]");
    m = mask->expand({batch, 1, seq, seq});
  }
  const bool* allowed = m.defined() ? m.data_ptr<bool>() : nullptr;
  const int64_t mb = m.defined() ? m.stride(0) : 0, mq = m.defined() ? m.stride(2) : 0, mk = m.defined() ? m.stride(3) : 0;
  // the layers run in place on the output: a layer reads its input rows before it writes its last step's
  auto out = x.clone();
  if (batch == 0 || seq == 0) return out;
  float* yp = out.data_ptr<float>();
  const int64_t threads = at::get_num_threads(), sequence_rows = seq * width;
  const int64_t parallel_sequences = threads > 1 ? batch / threads * threads : 0;
  auto sequences_from = [&](int64_t b) {
    return qbert::KeyMask{allowed == nullptr ? nullptr : allowed + b * mb, mb, mq, mk};
  };
  // layer by layer within a thread's sequences, so that both threads read each layer's weights at about the same
  // time (they stay in the shared cache between them); no barrier between the layers
  at::parallel_for(0, parallel_sequences, 1, [&](int64_t b0, int64_t b1) {
    for (const EncoderLayer& layer : layers)
      for (int64_t b = b0; b < b1; ++b)
        layer_rows(layer, yp + b * sequence_rows, 1, seq, width, sequences_from(b), yp + b * sequence_rows);
  });
  const int64_t b = parallel_sequences;
  for (const EncoderLayer& layer : layers)
    if (b < batch) layer_rows(layer, yp + b * sequence_rows, batch - b, seq, width, sequences_from(b), yp + b * sequence_rows);
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(qbert_kernels, m) {
  m.def("encoder_layers(Tensor hidden, Tensor? mask, Tensor[] linears, int[] bits, int[] rows, Tensor[] norms, "
        "float[] eps, int heads, float scale, int products) -> Tensor");
}

TORCH_LIBRARY_IMPL(qbert_kernels, CompositeExplicitAutograd, m) { m.impl("encoder_layers", &encoder_layers); }
