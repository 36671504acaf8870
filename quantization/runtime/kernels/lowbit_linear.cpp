// Packed 1/2/3/4/8-bit weight GEMM with per-token dynamic int8 activations, on AVX-512 VNNI.
//
//   y[t, r] = s_t * s_r * (sum_k xq[t, k] * c[r, k]  -  z_r * sum_k xq[t, k])  +  b[r]
//   xq[t, k] = round(x[t, k] / s_t),  s_t = max(max_k |x[t, k]|, 1e-8) / 127
//
// The codes c stay packed at their own width in memory; each tile is unpacked to bytes in registers right
// before the VNNI dot products (u8 codes x s8 activations -> int32, exact), and sums run over the whole row in
// int32, so the token and row scales are applied once per output.
//
// Layout (see `pack_codes`): rows in blocks of P parts of 16 rows (P = `parts(bits)`), the input dimension in
// quads of 4. The unit is a 64-byte VNNI tile T(h, q): byte 4*r + i = c[16*(P*b + h) + r][4*q + i]. Per row block,
// per group of `quads_per_group` quads, each part stores its tiles packed:
//   8 bits: 1 quad, T(h, q) as is;                          64 bytes per part
//   4 bits: 2 quads, nibble j of each byte from T(h, 2p+j); 64 bytes per part
//   2 bits: 4 quads, bit pair j from T(h, 4p+j);            64 bytes per part
//   1 bit:  8 quads, bit j from T(h, 8p+j);                 64 bytes per part
//   3 bits: 4 quads, the low two bits as 2-bit, then 4 x 64-bit masks of each tile's top bit; 96 bytes per part
// A micro-tile is `tile_rows(bits)` tokens x one row block: its P x tokens accumulators and P weight registers fit
// the 32 zmm registers (3-bit tiles take two more registers to unpack, so they use narrower blocks).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>

#include "ops.h"
#include "row_norm.h"
#include "vector_math.h"

namespace {

constexpr int parts(int64_t bits) { return bits == 3 ? 2 : 4; }
constexpr int tile_rows(int64_t bits) { return bits == 3 ? 12 : 6; }
constexpr int64_t block_rows(int64_t bits) { return 16 * parts(bits); }

int64_t quads_per_group(int64_t bits) { return bits == 8 ? 1 : bits == 4 ? 2 : bits == 1 ? 8 : 4; }
int64_t half_group_bytes(int64_t bits) { return bits == 3 ? 96 : 64; }
int64_t group_inputs(int64_t bits) { return 4 * quads_per_group(bits); }
int64_t padded(int64_t n, int64_t multiple) { return (n + multiple - 1) / multiple * multiple; }

bool cpu_supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vnni");
}

void check_bits(int64_t bits) {
  TORCH_CHECK(bits == 1 || bits == 2 || bits == 3 || bits == 4 || bits == 8, "bits must be 1, 2, 3, 4 or 8, got ",
              bits);
}

// codes: uint8 [rows, inputs], each < 2**bits -> packed uint8 [row_blocks, groups, parts, half_group_bytes]
at::Tensor pack_codes(const at::Tensor& codes, int64_t bits) {
  check_bits(bits);
  TORCH_CHECK(codes.dim() == 2 && codes.scalar_type() == at::kByte, "codes must be a 2-D uint8 tensor");
  TORCH_CHECK(codes.max().item<int64_t>() < (int64_t{1} << bits), "a code does not fit in ", bits, " bits");
  const auto c = codes.contiguous();
  const int64_t rows = c.size(0), inputs = c.size(1);
  const int64_t P = parts(bits), blocks = padded(rows, block_rows(bits)) / block_rows(bits);
  const int64_t groups = padded(inputs, group_inputs(bits)) / group_inputs(bits);
  const int64_t half_bytes = half_group_bytes(bits), quads = quads_per_group(bits);
  auto out = at::zeros({blocks, groups, P, half_bytes}, at::kByte);
  const uint8_t* src = c.data_ptr<uint8_t>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  auto code = [&](int64_t r, int64_t k) -> uint8_t { return (r < rows && k < inputs) ? src[r * inputs + k] : 0; };
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t g = 0; g < groups; ++g)
        for (int64_t h = 0; h < P; ++h) {
          uint8_t* tile = dst + ((b * groups + g) * P + h) * half_bytes;
          for (int64_t j = 0; j < quads; ++j) {
            const int64_t q = g * quads + j;
            for (int64_t byte = 0; byte < 64; ++byte) {
              const uint8_t v = code(16 * (b * P + h) + byte / 4, 4 * q + byte % 4);
              if (bits == 8) {
                tile[byte] = v;
              } else if (bits == 4) {
                tile[byte] |= static_cast<uint8_t>(v << (4 * j));
              } else if (bits == 1) {
                tile[byte] |= static_cast<uint8_t>(v << j);
              } else {
                tile[byte] |= static_cast<uint8_t>((v & 3) << (2 * j));
                if (bits == 3 && (v & 4)) tile[64 + 8 * j + byte / 8] |= static_cast<uint8_t>(1u << (byte % 8));
              }
            }
          }
        }
  });
  return out;
}

// The inverse of pack_codes (tests check the round trip exactly).
at::Tensor unpack_codes(const at::Tensor& packed, int64_t bits, int64_t rows, int64_t inputs) {
  check_bits(bits);
  const auto p = packed.contiguous();
  const int64_t groups = p.size(1), half_bytes = half_group_bytes(bits), quads = quads_per_group(bits);
  const int64_t P = parts(bits);
  TORCH_CHECK(p.dim() == 4 && p.size(2) == P && p.size(3) == half_bytes, "not codes packed at ", bits, " bits");
  TORCH_CHECK(p.size(0) * block_rows(bits) >= rows && groups * group_inputs(bits) >= inputs, "shape does not fit");
  auto out = at::empty({rows, inputs}, at::kByte);
  const uint8_t* src = p.data_ptr<uint8_t>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < inputs; ++k) {
      const int64_t b = r / block_rows(bits), h = (r % block_rows(bits)) / 16, row = r % 16;
      const int64_t g = k / group_inputs(bits), j = (k / 4) % quads, byte = 4 * row + k % 4;
      const uint8_t* tile = src + ((b * groups + g) * P + h) * half_bytes;
      uint8_t v;
      if (bits == 8) v = tile[byte];
      else if (bits == 4) v = (tile[byte] >> (4 * j)) & 15;
      else if (bits == 1) v = (tile[byte] >> j) & 1;
      else {
        v = (tile[byte] >> (2 * j)) & 3;
        if (bits == 3) v |= ((tile[64 + 8 * j + byte / 8] >> (byte % 8)) & 1) << 2;
      }
      dst[r * inputs + k] = v;
    }
  return out;
}

// Per-token scales, int8 codes and their row sums, on the calling thread. The codes go to micro-tile order, so that a
// micro-tile's kernel reads every token's quad from one pointer: [tiles][quads][mr][4], zero-padded in both directions.
// Sizes and pointers are by-value locals: a byte store may alias any memory, so a value read through a reference or
// a capture would be loaded again after each one.
void quantize_tokens(const float* x, int64_t tokens, int64_t width, int64_t tile_quads, int64_t tile_tokens,
                     int8_t* codes, float* scales, int32_t* sums) {
  for (int64_t t = 0; t < tokens; ++t) {
    const float* row = x + t * width;
    __m512 vmax = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= width; k += 16) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_loadu_ps(row + k)));
    float amax = _mm512_reduce_max_ps(vmax);
    for (; k < width; ++k) amax = std::max(amax, std::fabs(row[k]));
    const float scale = std::max(amax, 1e-8f) / 127.0f;
    scales[t] = scale;
    const __m512 vscale = _mm512_set1_ps(scale);
    __m512i vsum = _mm512_setzero_si512();
    int8_t* out = codes + (t / tile_tokens) * tile_quads * tile_tokens * 4 + (t % tile_tokens) * 4;
    for (k = 0; k + 16 <= width; k += 16) {
      // a true division and round-half-to-even, as torch.round(x / s) computes it
      const __m512 q = _mm512_roundscale_ps(_mm512_div_ps(_mm512_loadu_ps(row + k), vscale),
                                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __m512i qi = _mm512_cvtps_epi32(q);
      vsum = _mm512_add_epi32(vsum, qi);
      alignas(16) int8_t bytes[16];
      _mm_store_si128(reinterpret_cast<__m128i*>(bytes), _mm512_cvtsepi32_epi8(qi));
      for (int quad = 0; quad < 4; ++quad) std::memcpy(out + (k / 4 + quad) * tile_tokens * 4, bytes + 4 * quad, 4);
    }
    int32_t sum = _mm512_reduce_add_epi32(vsum);
    for (; k < tile_quads * 4; ++k) {
      const int32_t q = k < width ? static_cast<int32_t>(std::nearbyint(row[k] / scale)) : 0;
      out[(k / 4) * tile_tokens * 4 + k % 4] = static_cast<int8_t>(q);
      sum += q;
    }
    sums[t] = sum;
  }
}

inline __m512i bcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// One micro-tile: MR tokens (`a`: their codes in micro-tile order) x one 32-row block, over every input group.
template <int MR, int BITS>
inline __attribute__((always_inline)) void tile_sums(const int8_t* a, int64_t groups, const uint8_t* w,
                                                     __m512i (&acc)[MR][parts(BITS)]) {
  constexpr int kParts = parts(BITS), kTileRows = tile_rows(BITS);
  for (int t = 0; t < MR; ++t)
    for (int h = 0; h < kParts; ++h) acc[t][h] = _mm512_setzero_si512();
  const __m512i low1 = _mm512_set1_epi8(1), low2 = _mm512_set1_epi8(3), low4 = _mm512_set1_epi8(15);
  const __m512i four = _mm512_set1_epi8(4);
  constexpr int64_t kQuads = BITS == 8 ? 1 : BITS == 4 ? 2 : BITS == 1 ? 8 : 4;
  constexpr int64_t kHalf = BITS == 3 ? 96 : 64;
  for (int64_t g = 0; g < groups; ++g, w += kParts * kHalf) {
#pragma GCC unroll 8
    for (int j = 0; j < kQuads; ++j, a += kTileRows * 4) {
      __m512i wv[kParts];
#pragma GCC unroll 4
      for (int h = 0; h < kParts; ++h) {
        const uint8_t* part = w + h * kHalf;
        if constexpr (BITS == 8) {
          wv[h] = _mm512_loadu_si512(part);
        } else if constexpr (BITS == 4) {
          wv[h] = _mm512_and_si512(_mm512_srli_epi16(_mm512_loadu_si512(part), 4 * j), low4);
        } else if constexpr (BITS == 1) {
          wv[h] = _mm512_and_si512(_mm512_srli_epi16(_mm512_loadu_si512(part), j), low1);
        } else {
          wv[h] = _mm512_and_si512(_mm512_srli_epi16(_mm512_loadu_si512(part), 2 * j), low2);
          if constexpr (BITS == 3) {
            __mmask64 top;
            std::memcpy(&top, part + 64 + 8 * j, 8);
            wv[h] = _mm512_or_si512(wv[h], _mm512_maskz_mov_epi8(top, four));
          }
        }
      }
#pragma GCC unroll 16
      for (int t = 0; t < MR; ++t) {
        const __m512i x = bcast4(a + 4 * t);
#pragma GCC unroll 4
        for (int h = 0; h < kParts; ++h) acc[t][h] = _mm512_dpbusd_epi32(acc[t][h], wv[h], x);
      }
    }
  }
}

template <int MR, int BITS>
void tile(const int8_t* a, int64_t groups, const uint8_t* w, const float* token_scales,
          const int32_t* token_sums, const float* row_scale, const int32_t* row_zero, const float* bias,
          int64_t rows_left, float* y, int64_t ldy, bool gelu) {
  constexpr int kParts = parts(BITS);
  __m512i acc[MR][kParts];
  tile_sums<MR, BITS>(a, groups, w, acc);
  // h and t unrolled: an accumulator indexed at run time would live in memory, not in a register
#pragma GCC unroll 4
  for (int h = 0; h < kParts; ++h) {
    const __mmask16 mask = qbert::first_lanes(rows_left - 16 * h);
    const __m512 scale = _mm512_loadu_ps(row_scale + 16 * h);
    const __m512i zero = _mm512_loadu_si512(row_zero + 16 * h);
    const __m512 b = _mm512_loadu_ps(bias + 16 * h);
#pragma GCC unroll 16
    for (int t = 0; t < MR; ++t) {
      const __m512i exact = _mm512_sub_epi32(acc[t][h], _mm512_mullo_epi32(zero, _mm512_set1_epi32(token_sums[t])));
      const __m512 out = _mm512_fmadd_ps(_mm512_cvtepi32_ps(exact), _mm512_mul_ps(scale, _mm512_set1_ps(token_scales[t])), b);
      _mm512_mask_storeu_ps(y + t * ldy + 16 * h, mask, gelu ? qbert::gelu_ps(out) : out);
    }
  }
}

// The micro-tile for n tokens (n <= MR), instantiated for each n up to the full tile.
template <int BITS, int MR = tile_rows(BITS)>
void run_tile(int n, const int8_t* a, int64_t groups, const uint8_t* w, const float* ts, const int32_t* tsum,
              const float* rs, const int32_t* rz, const float* bias, int64_t rows_left, float* y, int64_t ldy,
              bool gelu) {
  if (n == MR) return tile<MR, BITS>(a, groups, w, ts, tsum, rs, rz, bias, rows_left, y, ldy, gelu);
  if constexpr (MR > 1) run_tile<BITS, MR - 1>(n, a, groups, w, ts, tsum, rs, rz, bias, rows_left, y, ldy, gelu);
}

// Scratch memory that is not zeroed (a partial micro-tile's missing tokens are never read)
template <typename T>
std::unique_ptr<T[]> uninitialized(int64_t n) {
  return std::unique_ptr<T[]>(new T[static_cast<size_t>(n)]);
}

}  // namespace

qbert::PackedWeights qbert::packed_weights(const at::Tensor& packed, int64_t bits, int64_t rows,
                                           const at::Tensor& row_scale, const at::Tensor& row_zero,
                                           const at::Tensor& bias, int64_t inputs) {
  check_bits(bits);
  TORCH_CHECK(packed.dim() == 4 && packed.scalar_type() == at::kByte && packed.is_contiguous() &&
                  packed.size(2) == parts(bits) && packed.size(3) == half_group_bytes(bits),
              "not codes packed at ", bits, " bits");
  const int64_t blocks = packed.size(0), groups = packed.size(1);
  const int64_t padded_inputs = groups * group_inputs(bits);
  TORCH_CHECK(padded_inputs >= inputs && padded_inputs - inputs < group_inputs(bits), "x does not match the weights");
  const int64_t covered = blocks * block_rows(bits);
  TORCH_CHECK(row_scale.scalar_type() == at::kFloat && row_zero.scalar_type() == at::kInt &&
                  bias.scalar_type() == at::kFloat && row_scale.is_contiguous() && row_zero.is_contiguous() &&
                  bias.is_contiguous(),
              "row_scale and bias must be contiguous float32, row_zero contiguous int32");
  TORCH_CHECK(covered >= rows && row_scale.numel() >= covered && row_zero.numel() >= covered && bias.numel() >= covered,
              "row parameters must cover the padded rows");
  return {packed.data_ptr<uint8_t>(), blocks, groups, bits, rows, row_scale.data_ptr<float>(),
          row_zero.data_ptr<int32_t>(), bias.data_ptr<float>()};
}

void qbert::linear_rows(const float* x, int64_t tokens, int64_t inputs, const PackedWeights& w, bool gelu,
                        const ResidualLayerNorm* norm, float* y) {
  if (tokens == 0) return;
  const int64_t bits = w.bits, rows = w.rows, blocks = w.blocks, groups = w.groups;
  const int64_t padded_inputs = groups * group_inputs(bits);
  const int64_t mr = tile_rows(bits), quads = padded_inputs / 4, token_tiles = (tokens + mr - 1) / mr;
  const auto xq = uninitialized<int8_t>(token_tiles * quads * mr * 4);
  const auto scales = uninitialized<float>(tokens);
  const auto sums = uninitialized<int32_t>(tokens);
  int8_t* const xqp = xq.get();
  float* const ts = scales.get();
  int32_t* const tsum = sums.get();
  const uint8_t* wp = w.packed;
  const float *rs = w.row_scale, *bp = w.bias;
  const int32_t* rz = w.row_zero;
  float* yp = y;
  const int64_t block_bytes = groups * parts(bits) * half_group_bytes(bits);
  // tokens [t0, t1) (t0 a multiple of mr: the start of a micro-tile) times row block b
  auto block_of_tokens = [&](int64_t t0, int64_t t1, int64_t b) {
    const int64_t r0 = b * block_rows(bits);
    for (int64_t t = t0; t < t1; t += mr) {
      const int n = static_cast<int>(std::min<int64_t>(mr, t1 - t));
      const int8_t* xt = xqp + t * quads * 4;
      const uint8_t* wb = wp + b * block_bytes;
      float* yt = yp + t * rows + r0;
      switch (bits) {
        case 1: run_tile<1>(n, xt, groups, wb, ts + t, tsum + t, rs + r0, rz + r0, bp + r0, rows - r0, yt, rows, gelu); break;
        case 2: run_tile<2>(n, xt, groups, wb, ts + t, tsum + t, rs + r0, rz + r0, bp + r0, rows - r0, yt, rows, gelu); break;
        case 3: run_tile<3>(n, xt, groups, wb, ts + t, tsum + t, rs + r0, rz + r0, bp + r0, rows - r0, yt, rows, gelu); break;
        case 4: run_tile<4>(n, xt, groups, wb, ts + t, tsum + t, rs + r0, rz + r0, bp + r0, rows - r0, yt, rows, gelu); break;
        default: run_tile<8>(n, xt, groups, wb, ts + t, tsum + t, rs + r0, rz + r0, bp + r0, rows - r0, yt, rows, gelu); break;
      }
    }
  };
  auto normalize = [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      qbert::add_row_norm(yp + t * rows, norm->residual + t * rows, norm->weight, norm->bias, rows, norm->eps,
                          yp + t * rows);
  };
  // tokens [t0, t1) quantized by the calling thread (t0 a multiple of mr)
  auto quantize = [&](int64_t t0, int64_t t1) {
    quantize_tokens(x + t0 * inputs, t1 - t0, inputs, quads, mr, xqp + t0 * quads * 4, ts + t0, tsum + t0);
  };
  // Tokens go in chunks whose codes stay in cache while every row block passes over them.
  const int64_t chunk_budget = 96 * 1024;  // bytes of codes
  const int64_t threads = at::get_num_threads();
  if (threads > 1 && token_tiles >= threads && tokens * padded_inputs >= threads * chunk_budget) {
    // Enough tokens for each thread to take its own: whole micro-tiles, as even as they allow. Each thread quantizes
    // its tokens, runs them chunk by chunk past every row block and normalizes each chunk while it is in its cache:
    // one parallel region, nothing shared between the threads, no thread waiting on a chunk count that does not
    // split evenly.
    at::parallel_for(0, threads, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t t0 = token_tiles * p / threads * mr, t1 = std::min(tokens, token_tiles * (p + 1) / threads * mr);
        quantize(t0, t1);
        const int64_t pieces = std::max<int64_t>(1, (t1 - t0) * padded_inputs / chunk_budget);
        const int64_t chunk = padded((t1 - t0 + pieces - 1) / pieces, mr);
        for (int64_t c0 = t0; c0 < t1; c0 += chunk) {
          const int64_t c1 = std::min(t1, c0 + chunk);
          for (int64_t b = 0; b < blocks; ++b) block_of_tokens(c0, c1, b);
          if (norm != nullptr) normalize(c0, c1);
        }
      }
    });
    return;
  }
  // Few tokens: the threads split the row blocks (chunk by chunk where the tokens' codes need more than one), after
  // every token is quantized.
  at::parallel_for(0, token_tiles, (16 + mr - 1) / mr, [&](int64_t g0, int64_t g1) {
    quantize(g0 * mr, std::min(tokens, g1 * mr));
  });
  const int64_t chunks = std::max<int64_t>(1, tokens * padded_inputs / chunk_budget);
  const int64_t chunk = padded((tokens + chunks - 1) / chunks, mr);
  const int64_t used_chunks = (tokens + chunk - 1) / chunk;
  at::parallel_for(0, used_chunks * blocks, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t c = i / blocks;
      block_of_tokens(c * chunk, std::min(tokens, (c + 1) * chunk), i % blocks);
    }
  });
  if (norm != nullptr) at::parallel_for(0, tokens, 16, normalize);
}

namespace {

// x: float32 [tokens, inputs]; packed from pack_codes; row_scale, bias: float32 [>= padded rows];
// row_zero: int32 [>= padded rows]. Returns float32 [tokens, rows], through GELU (erf) where `gelu`, or the LayerNorm
// of its sum with a residual where `norm` is given.
at::Tensor linear_with(const at::Tensor& x, const at::Tensor& packed, int64_t bits, int64_t rows,
                       const at::Tensor& row_scale, const at::Tensor& row_zero, const at::Tensor& bias, bool gelu,
                       const qbert::ResidualLayerNorm* norm) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, "x must be a 2-D float32 tensor");
  const auto xc = x.contiguous();
  const int64_t tokens = xc.size(0), inputs = xc.size(1);
  const auto weights = qbert::packed_weights(packed, bits, rows, row_scale, row_zero, bias, inputs);
  auto y = at::empty({tokens, rows}, x.options());
  qbert::linear_rows(xc.data_ptr<float>(), tokens, inputs, weights, gelu, norm, y.data_ptr<float>());
  return y;
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& packed, int64_t bits, int64_t rows,
                  const at::Tensor& row_scale, const at::Tensor& row_zero, const at::Tensor& bias, bool gelu) {
  return linear_with(x, packed, bits, rows, row_scale, row_zero, bias, gelu, nullptr);
}

// LayerNorm(linear(x) + residual) over the output rows: residual float32 [tokens, rows]; weight, ln_bias float32
// [rows]. The same bits as `linear` followed by `add_layer_norm`, in one call and, for larger inputs, with each
// chunk of tokens normalized by the thread that computed it, while its rows are in that thread's cache.
at::Tensor linear_add_layer_norm(const at::Tensor& x, const at::Tensor& packed, int64_t bits, int64_t rows,
                                 const at::Tensor& row_scale, const at::Tensor& row_zero, const at::Tensor& bias,
                                 const at::Tensor& residual, const at::Tensor& weight, const at::Tensor& ln_bias,
                                 double eps) {
  TORCH_CHECK(residual.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat &&
                  ln_bias.scalar_type() == at::kFloat,
              "linear_add_layer_norm takes a float32 residual, weight and bias");
  TORCH_CHECK(residual.dim() == 2 && residual.size(0) == x.size(0) && residual.size(1) == rows,
              "the residual must be [tokens, rows]");
  TORCH_CHECK(weight.numel() == rows && ln_bias.numel() == rows, "weight and bias must have `rows` values");
  const auto rc = residual.contiguous(), wc = weight.contiguous(), bc = ln_bias.contiguous();
  const qbert::ResidualLayerNorm norm{rc.data_ptr<float>(), wc.data_ptr<float>(), bc.data_ptr<float>(),
                               static_cast<float>(eps)};
  return linear_with(x, packed, bits, rows, row_scale, row_zero, bias, false, &norm);
}

}  // namespace

TORCH_LIBRARY(qbert_kernels, m) {
  m.def("cpu_supported() -> bool", &cpu_supported);
  m.def("pack_codes(Tensor codes, int bits) -> Tensor");
  m.def("unpack_codes(Tensor packed, int bits, int rows, int inputs) -> Tensor");
  m.def("linear(Tensor x, Tensor packed, int bits, int rows, Tensor row_scale, Tensor row_zero, Tensor bias, "
        "bool gelu=False) -> Tensor");
  m.def("linear_add_layer_norm(Tensor x, Tensor packed, int bits, int rows, Tensor row_scale, Tensor row_zero, "
        "Tensor bias, Tensor residual, Tensor weight, Tensor ln_bias, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(qbert_kernels, CompositeExplicitAutograd, m) {
  m.impl("pack_codes", &pack_codes);
  m.impl("unpack_codes", &unpack_codes);
  m.impl("linear", &linear);
  m.impl("linear_add_layer_norm", &linear_add_layer_norm);
}
