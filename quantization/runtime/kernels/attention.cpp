// softmax(q·kᵀ·scale + mask)·v for every head of a BERT encoder block, read straight from the stacked Q/K/V
// projection's output [batch, seq, 3, heads, dim] and written as [batch, seq, heads·dim] (no tensor transposes: each
// head's keys are transposed in registers, and its values copied contiguous, into per-thread buffers; its queries are
// read in place, the scale applied to the scores). A head's rows lie a page or more apart, so the next head's rows
// are prefetched while this one computes. Float32 throughout; the exponential is a degree-6 polynomial on a
// range-reduced argument (relative error ~1e-7). Masked stores only at the ends of rows (slow on AMD's cores).
// The two products run on float32 operands, on bf16 ones (AVX-512 BF16) or on int16 codes (AVX-512 VNNI's
// vpdpwssd: pairs of int16 products summed exactly into int32, the bf16 instruction's rate with 12 to 15 bits of
// each operand kept instead of 8); `Products` below.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#include "ops.h"
#include "vector_math.h"

namespace {

int64_t padded(int64_t n, int64_t multiple) { return (n + multiple - 1) / multiple * multiple; }

// dst[c][r] = src[r][c] for a block of up to 16 x 16 floats (`rows` x `cols` valid; missing rows read as zeros,
// so the 16 columns written for each of the `cols` valid ones are whole), transposed in registers.
inline void transpose_block(const float* src, int64_t src_stride, int64_t rows, int64_t cols, float* dst,
                            int64_t dst_stride) {
  const __mmask16 col_mask = qbert::first_lanes(cols);
  __m512 r[16], t[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) r[i] = i < rows ? _mm512_maskz_loadu_ps(col_mask, src + i * src_stride) : _mm512_setzero_ps();
#pragma GCC unroll 8
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  auto pd = [](__m512 v) { return _mm512_castps_pd(v); };
#pragma GCC unroll 4
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(t[i]), pd(t[i + 2])));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(t[i]), pd(t[i + 2])));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(t[i + 1]), pd(t[i + 3])));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(t[i + 1]), pd(t[i + 3])));
  }
#pragma GCC unroll 2
  for (int h = 0; h < 16; h += 8)
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      t[h + i] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0x88);
      t[h + i + 4] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0xdd);
    }
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
  }
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i)
    if (i < cols) _mm512_storeu_ps(dst + i * dst_stride, r[i]);
}

// Query rows per tile: 6 x 4 accumulators (of 16 keys for the scores, of 16 dims for the values), 6 broadcasts and
// the one key or value register fit the 32 registers, and each key or value loaded serves 6 rows (a 64-key slice
// of the transposed keys, 16 KiB where a head has 64 dims, stays in L1 while the tile's rows pass over it).
constexpr int kQueryRows = 6;

// A tile's accumulators (kQueryRows rows x N chunks of 16), zeroed and stored: shared by the float32 and bf16 forms
// of the products (inlined into both; these need AVX-512F only).
template <int N>
inline __attribute__((always_inline)) void zero_tile(__m512 (&acc)[kQueryRows][N]) {
#pragma GCC unroll 6
  for (int r = 0; r < kQueryRows; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < N; ++c) acc[r][c] = _mm512_setzero_ps();
}

template <int N>
inline __attribute__((always_inline)) void store_scores(__m512 (&acc)[kQueryRows][N], float* scores, int64_t ld_scores,
                                                        int64_t c0) {
#pragma GCC unroll 6
  for (int r = 0; r < kQueryRows; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < N; ++c) _mm512_storeu_ps(scores + r * ld_scores + c0 + 16 * c, acc[r][c]);
}

// scores[r][c0 + 16c ...] = acc[r][c] * scale, and each row's running maximum over its first `keys` scores kept as
// 16 lanes in row_max[16r ...]: the float32 form's scores leave the tile scaled, so an unmasked row's softmax reads
// them once (its maximum is known), not twice
template <int N>
inline __attribute__((always_inline)) void store_scaled_scores(__m512 (&acc)[kQueryRows][N], __m512 scale,
                                                               int64_t keys, float* scores, int64_t ld_scores,
                                                               int64_t c0, float* row_max) {
#pragma GCC unroll 6
  for (int r = 0; r < kQueryRows; ++r) {
    __m512 top = _mm512_loadu_ps(row_max + 16 * r);
#pragma GCC unroll 4
    for (int c = 0; c < N; ++c) {
      const __m512 s = _mm512_mul_ps(acc[r][c], scale);
      _mm512_storeu_ps(scores + r * ld_scores + c0 + 16 * c, s);
      // padded keys (past `keys`, in the last chunk only) score 0, which must not raise the maximum
      top = keys - c0 - 16 * c >= 16 ? _mm512_max_ps(top, s)
                                     : _mm512_mask_max_ps(top, qbert::first_lanes(keys - c0 - 16 * c), top, s);
    }
    _mm512_storeu_ps(row_max + 16 * r, top);
  }
}

// out[r][d0 + 16c ...] = acc[r][c] * inv[r] for the `rows` valid rows, the last chunk stored masked
template <int N>
inline __attribute__((always_inline)) void store_normalized(__m512 (&acc)[kQueryRows][N], int rows, const float* inv,
                                                            int64_t d0, int64_t dim, float* const* out) {
#pragma GCC unroll 6
  for (int r = 0; r < kQueryRows; ++r) {
    if (r >= rows) break;
#pragma GCC unroll 4
    for (int c = 0; c < N; ++c) {
      const __m512 o = _mm512_mul_ps(acc[r][c], _mm512_set1_ps(inv[r]));
      if (dim - d0 - 16 * c >= 16) _mm512_storeu_ps(out[r] + d0 + 16 * c, o);
      else _mm512_mask_storeu_ps(out[r] + d0 + 16 * c, qbert::first_lanes(dim - d0 - 16 * c), o);
    }
  }
}

// scores[r][c0 + 16c ...] = scale * sum_d q[r][d] * kt[d][c0 + 16c ...] for NC chunks of 16 keys, each row's
// maximum over its first `keys` kept in row_max (`store_scaled_scores`). Every one of the kQueryRows query pointers
// is valid (a short tile repeats its last row), so the loops carry no row tests.
template <int NC>
inline void score_chunks(const float* const* q, int64_t dim, const float* kt, int64_t ld, int64_t c0, __m512 scale,
                         int64_t keys, float* scores, int64_t ld_scores, float* row_max) {
  __m512 acc[kQueryRows][NC];
  zero_tile<NC>(acc);
  for (int64_t d = 0; d < dim; ++d) {
    __m512 qd[kQueryRows];
#pragma GCC unroll 6
    for (int r = 0; r < kQueryRows; ++r) qd[r] = _mm512_set1_ps(q[r][d]);
#pragma GCC unroll 4
    for (int c = 0; c < NC; ++c) {
      __m512 k = _mm512_loadu_ps(kt + d * ld + c0 + 16 * c);
      __asm__("" : "+v"(k));  // one load per chunk: GCC would fold it into each of the three FMAs
#pragma GCC unroll 6
      for (int r = 0; r < kQueryRows; ++r) acc[r][c] = _mm512_fmadd_ps(qd[r], k, acc[r][c]);
    }
  }
  store_scaled_scores<NC>(acc, scale, keys, scores, ld_scores, c0, row_max);
}

template <int NC>
void score_chunks_upto(int nc, const float* const* q, int64_t dim, const float* kt, int64_t ld, int64_t c0,
                       __m512 scale, int64_t keys, float* scores, int64_t ld_scores, float* row_max) {
  if (nc == NC) return score_chunks<NC>(q, dim, kt, ld, c0, scale, keys, scores, ld_scores, row_max);
  if constexpr (NC > 1) score_chunks_upto<NC - 1>(nc, q, dim, kt, ld, c0, scale, keys, scores, ld_scores, row_max);
}

// out[r][d0 + 16c ...] = sum_j p[r][j] * v[j][d0 + 16c ...] * inv[r] for ND chunks of 16 (the last one stored
// masked). `v` is the head's values copied contiguous, rows zero-padded to whole chunks; all kQueryRows rows of `p`
// are finite, so the loop carries no row tests (only the `rows` valid ones are stored).
template <int ND>
inline void weighted_values(const float* p, int64_t ld_p, int rows, const float* v, int64_t ld_v, int64_t keys,
                            int64_t d0, int64_t dim, const float* inv, float* const* out) {
  __m512 acc[kQueryRows][ND];
  zero_tile<ND>(acc);
  for (int64_t j = 0; j < keys; ++j) {
    __m512 vj[ND];
#pragma GCC unroll 4
    for (int c = 0; c < ND; ++c) vj[c] = _mm512_loadu_ps(v + j * ld_v + d0 + 16 * c);
#pragma GCC unroll 6
    for (int r = 0; r < kQueryRows; ++r) {
      const __m512 pj = _mm512_set1_ps(p[r * ld_p + j]);
#pragma GCC unroll 4
      for (int c = 0; c < ND; ++c) acc[r][c] = _mm512_fmadd_ps(pj, vj[c], acc[r][c]);
    }
  }
  store_normalized<ND>(acc, rows, inv, d0, dim, out);
}

template <int ND>
void weighted_values_upto(int nd, const float* p, int64_t ld_p, int rows, const float* v, int64_t ld_v,
                          int64_t keys, int64_t d0, int64_t dim, const float* inv, float* const* out) {
  if (nd == ND) return weighted_values<ND>(p, ld_p, rows, v, ld_v, keys, d0, dim, inv, out);
  if constexpr (ND > 1) weighted_values_upto<ND - 1>(nd, p, ld_p, rows, v, ld_v, keys, d0, dim, inv, out);
}

// The bf16 forms of the two products (AVX-512 BF16's vdpbf16ps: pairs of bf16 products summed into float32, twice
// the multiply-adds of an FMA per instruction). Operands are bf16 pairs held as 32-bit words: a query's or a
// probability row's consecutive pair is one broadcast word; keys are stored [dim pair][key] and values
// [key pair][dim], so that one 16-word load holds 16 keys' (or dims') pairs. Sums stay float32.
#define QBERT_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

QBERT_BF16 inline __m512 dot_pairs(__m512 acc, __m512i pairs, __m512i broadcast) {
  return _mm512_dpbf16_ps(acc, (__m512bh)pairs, (__m512bh)broadcast);
}

// 16 floats rounded to bf16 (to nearest even), as 8 pair words in the low half of the result
QBERT_BF16 inline __m256i to_bf16(__m512 x) { return (__m256i)_mm512_cvtneps_pbh(x); }

// dst[0, n) (n even or padded with a zero) as bf16 pair words, from n floats at src
QBERT_BF16 inline void row_to_pairs(const float* src, int64_t n, uint32_t* dst) {
  int64_t d = 0;
  for (; d + 16 <= n; d += 16) _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + d / 2), to_bf16(_mm512_loadu_ps(src + d)));
  if (d < n) {
    const __m256i tail = to_bf16(_mm512_maskz_loadu_ps(qbert::first_lanes(n - d), src + d));
    _mm256_mask_storeu_epi32(dst + d / 2, static_cast<__mmask8>((1u << ((n - d + 1) / 2)) - 1), tail);
  }
}

template <int NC>
QBERT_BF16 inline void score_chunks_bf16(const uint32_t* const* q, int64_t pairs, const uint32_t* kt, int64_t ld,
                                         int64_t c0, float* scores, int64_t ld_scores) {
  __m512 acc[kQueryRows][NC];
  zero_tile<NC>(acc);
  for (int64_t p = 0; p < pairs; ++p) {
    __m512i qp[kQueryRows];
#pragma GCC unroll 6
    for (int r = 0; r < kQueryRows; ++r) qp[r] = _mm512_set1_epi32(static_cast<int>(q[r][p]));
#pragma GCC unroll 4
    for (int c = 0; c < NC; ++c) {
      __m512i k = _mm512_loadu_si512(kt + p * ld + c0 + 16 * c);
      __asm__("" : "+v"(k));  // one load per chunk, as in score_chunks
#pragma GCC unroll 6
      for (int r = 0; r < kQueryRows; ++r) acc[r][c] = dot_pairs(acc[r][c], k, qp[r]);
    }
  }
  store_scores<NC>(acc, scores, ld_scores, c0);
}

template <int NC>
QBERT_BF16 void score_chunks_bf16_upto(int nc, const uint32_t* const* q, int64_t pairs, const uint32_t* kt, int64_t ld,
                                       int64_t c0, float* scores, int64_t ld_scores) {
  if (nc == NC) return score_chunks_bf16<NC>(q, pairs, kt, ld, c0, scores, ld_scores);
  if constexpr (NC > 1) score_chunks_bf16_upto<NC - 1>(nc, q, pairs, kt, ld, c0, scores, ld_scores);
}

template <int ND>
QBERT_BF16 inline void weighted_values_bf16(const uint32_t* p, int64_t ld_p, int rows, const uint32_t* v, int64_t ld_v,
                                            int64_t key_pairs, int64_t d0, int64_t dim, const float* inv,
                                            float* const* out) {
  __m512 acc[kQueryRows][ND];
  zero_tile<ND>(acc);
  for (int64_t j = 0; j < key_pairs; ++j) {
    __m512i vj[ND];
#pragma GCC unroll 4
    for (int c = 0; c < ND; ++c) vj[c] = _mm512_loadu_si512(v + j * ld_v + d0 + 16 * c);
#pragma GCC unroll 6
    for (int r = 0; r < kQueryRows; ++r) {
      const __m512i pj = _mm512_set1_epi32(static_cast<int>(p[r * ld_p + j]));
#pragma GCC unroll 4
      for (int c = 0; c < ND; ++c) acc[r][c] = dot_pairs(acc[r][c], vj[c], pj);
    }
  }
  store_normalized<ND>(acc, rows, inv, d0, dim, out);
}

template <int ND>
QBERT_BF16 void weighted_values_bf16_upto(int nd, const uint32_t* p, int64_t ld_p, int rows, const uint32_t* v,
                                          int64_t ld_v, int64_t key_pairs, int64_t d0, int64_t dim, const float* inv,
                                          float* const* out) {
  if (nd == ND) return weighted_values_bf16<ND>(p, ld_p, rows, v, ld_v, key_pairs, d0, dim, inv, out);
  if constexpr (ND > 1) weighted_values_bf16_upto<ND - 1>(nd, p, ld_p, rows, v, ld_v, key_pairs, d0, dim, inv, out);
}

// A head's keys as [dim pair][key] words and its values as [key pair][dim] words (zero-padded), its queries as
// [query][dim pair] words.
QBERT_BF16 void head_to_pairs(const float* q, const float* k, const float* v, int64_t seq, int64_t dim,
                              int64_t token_stride, int64_t keys_padded, int64_t dim_padded, uint32_t* q2,
                              uint32_t* k_rows, uint32_t* kt2, uint32_t* v2) {
  const int64_t pairs = (dim + 1) / 2;
  for (int64_t j = 0; j < seq; ++j) {
    row_to_pairs(q + j * token_stride, dim, q2 + j * pairs);
    row_to_pairs(k + j * token_stride, dim, k_rows + j * pairs);
  }
  for (int64_t j = 0; j < keys_padded; j += 16)
    for (int64_t d = 0; d < pairs; d += 16)
      transpose_block(reinterpret_cast<const float*>(k_rows + j * pairs + d), pairs, seq - j, pairs - d,
                      reinterpret_cast<float*>(kt2 + d * keys_padded + j), keys_padded);
  for (int64_t j = 0; j < seq; j += 2) {
    const float* even = v + j * token_stride;
    const float* odd = j + 1 < seq ? even + token_stride : nullptr;
    uint32_t* dst = v2 + (j / 2) * dim_padded;
    for (int64_t d = 0; d < dim_padded; d += 16) {
      const __mmask16 lanes = qbert::first_lanes(dim - d);
      const __m512i lo = _mm512_cvtepu16_epi32(to_bf16(_mm512_maskz_loadu_ps(lanes, even + d)));
      const __m512i hi = odd ? _mm512_cvtepu16_epi32(to_bf16(_mm512_maskz_loadu_ps(lanes, odd + d))) : _mm512_setzero_si512();
      _mm512_storeu_si512(dst + d, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
    }
  }
}

// The int16 forms of the two products. Operands are int16 pairs held as 32-bit words, laid out as the bf16 forms'
// (`head_to_int16_pairs`), each with a scale: q and k per token (a row of dim values), v per dimension (a column of
// the head's values), the probabilities per query row. Sums are exact in int32, so each operand's range is bounded
// by what a sum can hold: q·kᵀ sums dim products of two codes of at most `score_codes(dim)`, p·v at most 2^31 - 1
// over a row (`probability_codes`). AVX-512 VNNI is among the flags the kernels are compiled with.

// acc + a·b over int16 pairs (vpdpwssd), accumulated in place: GCC 12's intrinsic copies each accumulator to a
// scratch register and back around the instruction, three instructions for one (measured: slower than float32).
inline __m512i dot_int16_pairs(__m512i acc, __m512i a, __m512i b) {
  __asm__("vpdpwssd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
  return acc;
}

// The largest q and k code: dim products of two of them fit an int32 sum.
int32_t score_codes(int64_t dim) {
  const double fit = std::floor(std::sqrt(2147483647.0 / static_cast<double>(std::max<int64_t>(dim, 1))));
  return static_cast<int32_t>(std::min(fit, 32767.0));
}

// The largest v code: 13 bits kept per dimension; the probabilities' codes are then sized per row to fit the sum.
constexpr int32_t kValueCodes = 8191;

// The largest probability code of a row whose (unrounded) probabilities, at most 1 each, sum to `total` over `keys`
// keys: rounding adds at most half a code per key, and each code multiplies a value code of at most kValueCodes.
float probability_codes(float total, int64_t keys) {
  const double room = 2147483647.0 / kValueCodes - 0.5 * static_cast<double>(keys) - 1.0;
  return total > 0.0f ? static_cast<float>(std::min(32767.0, std::floor(room / total))) : 0.0f;
}

// n values at src rounded to codes of `inverse` (codes = round(x · inverse), to nearest even), as int16 pair words
// (n padded with a zero to even)
inline void row_to_int16_pairs(const float* src, int64_t n, float inverse, uint32_t* dst) {
  const __m512 vinv = _mm512_set1_ps(inverse);
  for (int64_t d = 0; d < n; d += 16) {
    const __m512 x = _mm512_maskz_loadu_ps(qbert::first_lanes(n - d), src + d);
    const __m256i codes = _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(x, vinv)));
    if (n - d >= 16) _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + d / 2), codes);
    else _mm256_mask_storeu_epi32(dst + d / 2, static_cast<__mmask8>((1u << ((n - d + 1) / 2)) - 1), codes);
  }
}

// A row's largest absolute value
inline float row_amax(const float* src, int64_t n) {
  __m512 vmax = _mm512_setzero_ps();
  for (int64_t d = 0; d < n; d += 16)
    vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_maskz_loadu_ps(qbert::first_lanes(n - d), src + d)));
  return _mm512_reduce_max_ps(vmax);
}

// A head's queries and keys as int16 pairs per token with their scales (`q_scale`, `k_scale`: a code's value), its
// keys transposed to [dim pair][key], and its values as [key pair][dim] words with one scale per dimension
// (`v_scale`). Keys past `seq` (padding) have zero codes.
void head_to_int16_pairs(const float* q, const float* k, const float* v, int64_t seq, int64_t dim,
                                    int64_t token_stride, int64_t keys_padded, int64_t dim_padded, uint32_t* q2,
                                    uint32_t* k_rows, uint32_t* kt2, uint32_t* v2, float* q_scale, float* k_scale,
                                    float* v_scale) {
  const int64_t pairs = (dim + 1) / 2;
  const float codes = static_cast<float>(score_codes(2 * pairs));
  for (int64_t j = 0; j < seq; ++j) {
    const float* rows[2] = {q + j * token_stride, k + j * token_stride};
    uint32_t* out[2] = {q2 + j * pairs, k_rows + j * pairs};
    float* scales[2] = {q_scale + j, k_scale + j};
    for (int part = 0; part < 2; ++part) {
      const float amax = row_amax(rows[part], dim);
      *scales[part] = amax / codes;
      row_to_int16_pairs(rows[part], dim, amax > 0.0f ? codes / amax : 0.0f, out[part]);
    }
  }
  for (int64_t j = 0; j < keys_padded; j += 16)
    for (int64_t d = 0; d < pairs; d += 16)
      transpose_block(reinterpret_cast<const float*>(k_rows + j * pairs + d), pairs, seq - j, pairs - d,
                      reinterpret_cast<float*>(kt2 + d * keys_padded + j), keys_padded);
  for (int64_t d = 0; d < dim_padded; d += 16) {
    const __mmask16 lanes = qbert::first_lanes(dim - d);
    __m512 vmax = _mm512_setzero_ps();
    for (int64_t j = 0; j < seq; ++j)
      vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_maskz_loadu_ps(lanes, v + j * token_stride + d)));
    const __mmask16 live = _mm512_cmp_ps_mask(vmax, _mm512_setzero_ps(), _CMP_GT_OQ);
    const __m512 inverse = _mm512_maskz_div_ps(live, _mm512_set1_ps(static_cast<float>(kValueCodes)), vmax);
    _mm512_storeu_ps(v_scale + d, _mm512_div_ps(vmax, _mm512_set1_ps(static_cast<float>(kValueCodes))));
    for (int64_t j = 0; j < seq; j += 2) {
      const __m512i even = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(lanes, v + j * token_stride + d), inverse));
      const __m512i odd = j + 1 < seq ? _mm512_cvtps_epi32(_mm512_mul_ps(
                                            _mm512_maskz_loadu_ps(lanes, v + (j + 1) * token_stride + d), inverse))
                                      : _mm512_setzero_si512();
      _mm512_storeu_si512(v2 + (j / 2) * dim_padded + d,
                          _mm512_or_si512(_mm512_and_si512(even, _mm512_set1_epi32(0xFFFF)), _mm512_slli_epi32(odd, 16)));
    }
  }
}

template <int NC>
inline void score_chunks_int16(const uint32_t* const* q, const float* q_scale, int64_t pairs,
                                          const uint32_t* kt, const float* k_scale, int64_t ld, int64_t c0,
                                          float* scores, int64_t ld_scores) {
  __m512i acc[kQueryRows][NC];
#pragma GCC unroll 6
  for (int r = 0; r < kQueryRows; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < NC; ++c) acc[r][c] = _mm512_setzero_si512();
  for (int64_t p = 0; p < pairs; ++p) {
    __m512i qp[kQueryRows];
#pragma GCC unroll 6
    for (int r = 0; r < kQueryRows; ++r) qp[r] = _mm512_set1_epi32(static_cast<int>(q[r][p]));
#pragma GCC unroll 4
    for (int c = 0; c < NC; ++c) {
      __m512i k = _mm512_loadu_si512(kt + p * ld + c0 + 16 * c);
      __asm__("" : "+v"(k));  // one load per chunk, as in score_chunks
#pragma GCC unroll 6
      for (int r = 0; r < kQueryRows; ++r) acc[r][c] = dot_int16_pairs(acc[r][c], k, qp[r]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < kQueryRows; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < NC; ++c)
      _mm512_storeu_ps(scores + r * ld_scores + c0 + 16 * c,
                       _mm512_mul_ps(_mm512_cvtepi32_ps(acc[r][c]),
                                     _mm512_mul_ps(_mm512_set1_ps(q_scale[r]), _mm512_loadu_ps(k_scale + c0 + 16 * c))));
}

template <int NC>
void score_chunks_int16_upto(int nc, const uint32_t* const* q, const float* q_scale, int64_t pairs,
                                        const uint32_t* kt, const float* k_scale, int64_t ld, int64_t c0, float* scores,
                                        int64_t ld_scores) {
  if (nc == NC) return score_chunks_int16<NC>(q, q_scale, pairs, kt, k_scale, ld, c0, scores, ld_scores);
  if constexpr (NC > 1) score_chunks_int16_upto<NC - 1>(nc, q, q_scale, pairs, kt, k_scale, ld, c0, scores, ld_scores);
}

// out[r][d] = sum_j p[r][j] · v[j][d] · inv[r] · v_scale[d] over int16 pair words (p: a row's codes, inv[r] its
// code's value over the row's sum)
template <int ND>
inline void weighted_values_int16(const uint32_t* p, int64_t ld_p, int rows, const uint32_t* v,
                                             int64_t ld_v, int64_t key_pairs, int64_t d0, int64_t dim,
                                             const float* inv, const float* v_scale, float* const* out) {
  __m512i acc[kQueryRows][ND];
#pragma GCC unroll 6
  for (int r = 0; r < kQueryRows; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < ND; ++c) acc[r][c] = _mm512_setzero_si512();
  for (int64_t j = 0; j < key_pairs; ++j) {
    __m512i vj[ND];
#pragma GCC unroll 4
    for (int c = 0; c < ND; ++c) vj[c] = _mm512_loadu_si512(v + j * ld_v + d0 + 16 * c);
#pragma GCC unroll 6
    for (int r = 0; r < kQueryRows; ++r) {
      const __m512i pj = _mm512_set1_epi32(static_cast<int>(p[r * ld_p + j]));
#pragma GCC unroll 4
      for (int c = 0; c < ND; ++c) acc[r][c] = dot_int16_pairs(acc[r][c], vj[c], pj);
    }
  }
  __m512 as_float[kQueryRows][ND];
#pragma GCC unroll 6
  for (int r = 0; r < kQueryRows; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < ND; ++c)
      as_float[r][c] = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[r][c]), _mm512_loadu_ps(v_scale + d0 + 16 * c));
  store_normalized<ND>(as_float, rows, inv, d0, dim, out);
}

template <int ND>
void weighted_values_int16_upto(int nd, const uint32_t* p, int64_t ld_p, int rows, const uint32_t* v,
                                           int64_t ld_v, int64_t key_pairs, int64_t d0, int64_t dim, const float* inv,
                                           const float* v_scale, float* const* out) {
  if (nd == ND) return weighted_values_int16<ND>(p, ld_p, rows, v, ld_v, key_pairs, d0, dim, inv, v_scale, out);
  if constexpr (ND > 1)
    weighted_values_int16_upto<ND - 1>(nd, p, ld_p, rows, v, ld_v, key_pairs, d0, dim, inv, v_scale, out);
}

// The number of keys a mask row allows where it allows exactly a prefix of them (a key padding mask), else -1
int64_t allowed_prefix(const bool* allowed, int64_t seq, int64_t stride) {
  int64_t n = 0;
  while (n < seq && allowed[n * stride]) ++n;
  for (int64_t j = n; j < seq; ++j)
    if (allowed[j * stride]) return -1;
  return n;
}

// The number of keys that every query row of a sequence's mask allows where it is the same prefix for each (a key
// padding mask, as BERT builds it: [1, seq, seq] of one row repeated, or that row broadcast), else -1
int64_t shared_allowed_prefix(const bool* mask, int64_t seq, int64_t query_stride, int64_t key_stride) {
  const int64_t n = allowed_prefix(mask, seq, key_stride);
  for (int64_t t = 1; n >= 0 && query_stride != 0 && t < seq; ++t) {
    const bool* row = mask + t * query_stride;
    const bool same = key_stride == 1 ? std::memcmp(row, mask, seq) == 0 : allowed_prefix(row, seq, key_stride) == n;
    if (!same) return -1;
  }
  return n;
}

bool bf16_supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512bf16");
}

// What the two products take as operands (the op's `products` argument)
enum Products : int64_t { kFloat32 = 0, kBf16 = 1, kInt16 = 2 };

}  // namespace

bool qbert::products_supported(int64_t products) {
  return products == kFloat32 || products == kInt16 || (products == kBf16 && bf16_supported());
}

void qbert::attention_heads(const float* qkv, int64_t batch, int64_t seq, int64_t heads, int64_t dim,
                            const KeyMask& mask, double scale, int64_t products, float* out) {
  if (batch == 0 || seq == 0) return;
  const bool bf16 = products == kBf16, int16 = products == kInt16, pairs_form = bf16 || int16;
  const bool masked = mask.allowed != nullptr;
  // the float32 form's scores are scaled, and an unmasked row's maximum known, as its tile stored them
  const bool scaled = !pairs_form;
  const bool* mp = mask.allowed;
  const int64_t mb = mask.batch_stride, mq = mask.query_stride, mk = mask.key_stride;
  const float* base = qkv;
  float* op = out;
  const int64_t token_stride = 3 * heads * dim, keys_padded = padded(seq, 16), dim_padded = padded(dim, 16);
  const __m512 vscale = _mm512_set1_ps(static_cast<float>(scale));
  // the float32 form's prefix per sequence (`shared_allowed_prefix`); the pairs forms take every mask as it is
  std::vector<int64_t> prefixes(masked && !pairs_form ? batch : 0);
  for (int64_t b = 0; b < static_cast<int64_t>(prefixes.size()); ++b)
    prefixes[b] = shared_allowed_prefix(mp + b * mb, seq, mq, mk);
  at::parallel_for(0, batch * heads, 1, [&](int64_t i0, int64_t i1) {
    const int64_t pairs = (dim + 1) / 2, key_pairs = keys_padded / 2;
    std::vector<float> kt(pairs_form ? 0 : dim * keys_padded), vs(pairs_form ? 0 : seq * dim_padded),
        scores(kQueryRows * keys_padded);
    std::vector<uint32_t> q2(pairs_form ? seq * pairs : 0), k_rows(pairs_form ? seq * pairs : 0),
        kt2(pairs_form ? pairs * keys_padded : 0), v2(pairs_form ? key_pairs * dim_padded : 0),
        p2(pairs_form ? kQueryRows * key_pairs : 0);  // zeros: a short tile's spare rows of probabilities are read
    // (finite, from zeros or an earlier tile), never stored
    // int16 scales: q and k per token (padded keys: 0), v per dimension
    std::vector<float> q_scale(int16 ? seq : 0), k_scale(int16 ? keys_padded : 0), v_scale(int16 ? dim_padded : 0);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / heads, h = i % heads;
      const float* q = base + b * seq * token_stride + h * dim;
      const float* k = q + heads * dim;
      const float* v = k + heads * dim;
      // Where a sequence's mask allows the same prefix of the keys to every query row (a key padding mask), the
      // float32 form attends each row as an unmasked one over that prefix: the padded keys' scores are not computed,
      // nor their -inf stored and tested.
      const int64_t prefix = prefixes.empty() ? -1 : prefixes[b];
      const bool rows_masked = masked && prefix <= 0;
      const int64_t keys = prefix > 0 ? prefix : seq, keys_scored = padded(keys, 16);
      if (bf16) {
        head_to_pairs(q, k, v, seq, dim, token_stride, keys_padded, dim_padded, q2.data(), k_rows.data(), kt2.data(),
                      v2.data());
      } else if (int16) {
        head_to_int16_pairs(q, k, v, seq, dim, token_stride, keys_padded, dim_padded, q2.data(), k_rows.data(),
                            kt2.data(), v2.data(), q_scale.data(), k_scale.data(), v_scale.data());
      }
      for (int64_t j = 0; !pairs_form && j < keys_padded; j += 16)
        for (int64_t d = 0; d < dim; d += 16)
          transpose_block(k + j * token_stride + d, token_stride, seq - j, dim - d, kt.data() + d * keys_padded + j,
                          keys_padded);
      for (int64_t j = 0; !pairs_form && j < seq; ++j) {
        const float* src = v + j * token_stride;
        float* dst = vs.data() + j * dim_padded;
        int64_t d = 0;
        for (; d + 16 <= dim; d += 16) _mm512_storeu_ps(dst + d, _mm512_loadu_ps(src + d));
        if (d < dim) _mm512_storeu_ps(dst + d, _mm512_maskz_loadu_ps(qbert::first_lanes(dim - d), src + d));
      }
      // the next head's rows lie 3·heads·dim floats apart (a page or more): fetched ahead, a few tokens per query
      // tile, they are in cache when its keys are transposed and its values copied
      const float* next_q = i + 1 < i1 ? base + ((i + 1) / heads) * seq * token_stride + ((i + 1) % heads) * dim : nullptr;
      for (int64_t t0 = 0; t0 < seq; t0 += kQueryRows) {
        const int rows = static_cast<int>(std::min<int64_t>(kQueryRows, seq - t0));
        if (next_q != nullptr)
          for (int64_t t = t0; t < t0 + rows; ++t)
            for (int part = 0; part < 3; ++part)
              for (int64_t d = 0; d < dim; d += 16)
                _mm_prefetch(reinterpret_cast<const char*>(next_q + t * token_stride + part * heads * dim + d), _MM_HINT_T0);
        if (t0 + kQueryRows < seq)  // this head's next query rows
          for (int64_t t = t0 + kQueryRows; t < std::min(seq, t0 + 2 * kQueryRows); ++t)
            for (int64_t d = 0; d < dim; d += 16)
              _mm_prefetch(reinterpret_cast<const char*>(q + t * token_stride + d), _MM_HINT_T0);
        const float* qrows[kQueryRows];
        float* orows[kQueryRows];
        const uint32_t* q2rows[kQueryRows];
        float q2scales[kQueryRows];
        for (int r = 0; r < kQueryRows; ++r) {
          const int64_t t = t0 + std::min(r, rows - 1);
          qrows[r] = q + t * token_stride;  // read in place: the scale applies to the scores
          orows[r] = op + (b * seq + t) * heads * dim + h * dim;
          if (pairs_form) q2rows[r] = q2.data() + t * pairs;
          if (int16) q2scales[r] = q_scale[t];
        }
        float row_max[kQueryRows * 16];  // the float32 form's running row maxima (`store_scaled_scores`)
        std::fill(row_max, row_max + kQueryRows * 16, -INFINITY);
        for (int64_t c0 = 0; c0 < keys_scored; c0 += 64) {
          const int nc = static_cast<int>(std::min<int64_t>(4, (keys_scored - c0) / 16));
          if (bf16) score_chunks_bf16_upto<4>(nc, q2rows, pairs, kt2.data(), keys_padded, c0, scores.data(), keys_padded);
          else if (int16)
            score_chunks_int16_upto<4>(nc, q2rows, q2scales, pairs, kt2.data(), k_scale.data(), keys_padded, c0,
                                       scores.data(), keys_padded);
          else
            score_chunks_upto<4>(nc, qrows, dim, kt.data(), keys_padded, c0, vscale, keys, scores.data(), keys_padded,
                                 row_max);
        }
        float inv[kQueryRows];
        for (int r = 0; r < rows; ++r) {
          float* row = scores.data() + r * keys_padded;
          const bool* allowed = rows_masked ? mp + b * mb + (t0 + r) * mq : nullptr;
          const __m512 minus_inf = _mm512_set1_ps(-INFINITY);
          __m512 vmax = scaled && !rows_masked ? _mm512_loadu_ps(row_max + 16 * r) : minus_inf;
          for (int64_t j = 0; rows_masked && j < seq; j += 16) {
            const __mmask16 tail = qbert::first_lanes(seq - j);
            __mmask16 keep = tail;
            if (allowed && mk == 1) {
              keep &= _mm_mask_cmpneq_epi8_mask(tail, _mm_maskz_loadu_epi8(tail, allowed + j), _mm_setzero_si128());
            } else if (allowed) {
              for (int64_t l = 0; l < 16 && j + l < seq; ++l)
                if (!allowed[(j + l) * mk]) keep &= static_cast<__mmask16>(~(1u << l));
            }
            const __m512 loaded = _mm512_maskz_loadu_ps(tail, row + j);
            const __m512 sj = _mm512_mask_mov_ps(minus_inf, keep, scaled ? loaded : _mm512_mul_ps(loaded, vscale));
            if (tail == 0xFFFF) _mm512_storeu_ps(row + j, sj);
            else _mm512_mask_storeu_ps(row + j, tail, sj);
            vmax = _mm512_max_ps(vmax, sj);  // a masked row's maximum: over its allowed keys only
          }
          for (int64_t j = 0; !rows_masked && !scaled && j < seq; j += 16) {
            const __mmask16 tail = qbert::first_lanes(seq - j);
            const __m512 sj = _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, row + j), vscale);
            if (tail == 0xFFFF) _mm512_storeu_ps(row + j, sj);
            else _mm512_mask_storeu_ps(row + j, tail, sj);
            vmax = _mm512_mask_max_ps(vmax, tail, vmax, sj);
          }
          float top = _mm512_reduce_max_ps(vmax);
          const __m512 vtop = _mm512_set1_ps(top);
          __m512 vsum = _mm512_setzero_ps();
          int64_t j = 0;
          for (; rows_masked && j + 16 <= seq; j += 16) {
            const __m512 sj = _mm512_loadu_ps(row + j);
            const __m512 e = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(sj, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ),
                                                 qbert::exp_ps(_mm512_sub_ps(sj, vtop)));
            _mm512_storeu_ps(row + j, e);
            vsum = _mm512_add_ps(vsum, e);
          }
          for (; !rows_masked && j + 16 <= keys; j += 16) {  // every score finite: no -inf to keep at zero
            const __m512 e = qbert::exp_ps(_mm512_sub_ps(_mm512_loadu_ps(row + j), vtop));
            _mm512_storeu_ps(row + j, e);
            vsum = _mm512_add_ps(vsum, e);
          }
          if (j < keys) {
            const __mmask16 tail = qbert::first_lanes(keys - j);
            const __m512 sj = _mm512_maskz_loadu_ps(tail, row + j);
            const __mmask16 live = tail & _mm512_cmp_ps_mask(sj, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ);
            const __m512 e = _mm512_maskz_mov_ps(live, qbert::exp_ps(_mm512_sub_ps(sj, vtop)));
            _mm512_mask_storeu_ps(row + j, tail, e);
            vsum = _mm512_add_ps(vsum, e);
          }
          const float total = _mm512_reduce_add_ps(vsum);
          inv[r] = total > 0.0f ? 1.0f / total : 0.0f;
          if (bf16) row_to_pairs(row, seq, p2.data() + r * key_pairs);
          if (int16) {
            const float codes = probability_codes(total, seq);
            row_to_int16_pairs(row, seq, codes, p2.data() + r * key_pairs);
            inv[r] = codes > 0.0f ? 1.0f / (codes * total) : 0.0f;
          }
        }
        for (int64_t d0 = 0; d0 < dim; d0 += 64) {
          const int nd = static_cast<int>((std::min<int64_t>(64, dim - d0) + 15) / 16);
          if (bf16)
            weighted_values_bf16_upto<4>(nd, p2.data(), key_pairs, rows, v2.data(), dim_padded, (seq + 1) / 2, d0, dim,
                                         inv, orows);
          else if (int16)
            weighted_values_int16_upto<4>(nd, p2.data(), key_pairs, rows, v2.data(), dim_padded, (seq + 1) / 2, d0,
                                          dim, inv, v_scale.data(), orows);
          else
            weighted_values_upto<4>(nd, scores.data(), keys_padded, rows, vs.data(), dim_padded, keys, d0, dim, inv,
                                    orows);
        }
      }
    }
  });
}

namespace {

// qkv: float32 [batch, seq, 3, heads, dim]; mask: bool, broadcastable to [batch, 1, seq, seq] (true: attend), or
// absent. Returns float32 [batch, seq, heads * dim]. `products` (`Products`): the two products' operands; sums,
// softmax and output stay float32. bf16 needs a CPU with AVX-512 BF16 (`bf16_supported`).
at::Tensor attention(const at::Tensor& qkv, const std::optional<at::Tensor>& mask, double scale, int64_t products) {
  TORCH_CHECK(qkv.dim() == 5 && qkv.size(2) == 3 && qkv.scalar_type() == at::kFloat, "qkv must be float32 "
              "[batch, seq, 3, heads, dim]");
  TORCH_CHECK(products == kFloat32 || products == kBf16 || products == kInt16,
              "products must be 0 (float32), 1 (bf16) or 2 (int16), got ", products);
  const auto x = qkv.contiguous();
  const int64_t batch = x.size(0), seq = x.size(1), heads = x.size(3), dim = x.size(4);
  at::Tensor m;
  if (mask.has_value() && mask->defined()) {
    TORCH_CHECK(mask->scalar_type() == at::kBool && mask->dim() == 4 && mask->size(1) == 1, "mask must be bool "
                "[batch, 1, seq or 1, seq]");
    m = mask->expand({batch, 1, seq, seq});
  }
  TORCH_CHECK(products != kBf16 || bf16_supported(), "bf16 attention needs a CPU with AVX-512 BF16");
  auto out = at::empty({batch, seq, heads * dim}, x.options());
  const qbert::KeyMask key_mask{m.defined() ? m.data_ptr<bool>() : nullptr, m.defined() ? m.stride(0) : 0,
                                m.defined() ? m.stride(2) : 0, m.defined() ? m.stride(3) : 0};
  qbert::attention_heads(x.data_ptr<float>(), batch, seq, heads, dim, key_mask, scale, products, out.data_ptr<float>());
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(qbert_kernels, m) {
  m.def("bf16_supported() -> bool", &bf16_supported);
  m.def("attention(Tensor qkv, Tensor? mask, float scale, int products) -> Tensor");
}

TORCH_LIBRARY_IMPL(qbert_kernels, CompositeExplicitAutograd, m) { m.impl("attention", &attention); }
