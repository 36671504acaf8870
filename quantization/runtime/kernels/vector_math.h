// Vectorized float32 math for our kernels (AVX-512), accurate to a few ulp where BERT's values lie.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace qbert {

// The mask of the first n of 16 lanes (none for n <= 0, all for n >= 16): a partial tile's loads and stores.
inline __mmask16 first_lanes(int64_t n) {
  return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1);
}

// e^x: a degree-5 polynomial on r = x - n·ln2 (|r| <= ln2/2), scaled by 2^n (relative error below 2e-7; e^x for
// x < -87.3 is that of -87.3). The coefficients are a minimax fit of e^r's relative error on that range: as
// accurate as the degree-6 Taylor series, one multiply-add fewer (softmax and GELU spend most of their time here).
inline __m512 exp_ps(__m512 x) {
  const __m512 log2e = _mm512_set1_ps(1.44269504088896341f);
  const __m512 ln2_hi = _mm512_set1_ps(0.693359375f), ln2_lo = _mm512_set1_ps(-2.12194440e-4f);
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, ln2_hi, x);
  r = _mm512_fnmadd_ps(n, ln2_lo, r);
  __m512 p = _mm512_set1_ps(8.297654800e-3f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.191538319e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.666757464e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.999889433e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(9.999997020e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.000000119e+0f));
  return _mm512_scalef_ps(p, n);
}

// erf(x), Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7)
inline __m512 erf_ps(__m512 x) {
  const __m512 ax = _mm512_abs_ps(x);
  // t = 1 / (1 + 0.3275911·|x|): a 14-bit reciprocal and one Newton step (within an ulp or two), not a division,
  // which would cost several times as much in the FFN's GEMM epilogue
  const __m512 d = _mm512_fmadd_ps(_mm512_set1_ps(0.3275911f), ax, _mm512_set1_ps(1.0f));
  const __m512 r0 = _mm512_rcp14_ps(d);
  const __m512 t = _mm512_fmadd_ps(r0, _mm512_fnmadd_ps(d, r0, _mm512_set1_ps(1.0f)), r0);
  __m512 p = _mm512_set1_ps(1.061405429f);
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453152027f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592f));
  p = _mm512_mul_ps(p, t);
  const __m512 e = exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(ax, ax)));
  const __m512 y = _mm512_fnmadd_ps(p, e, _mm512_set1_ps(1.0f));  // erf(|x|)
  // the sign of x onto erf(|x|)
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(y),
                                             _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(INT32_MIN))));
}

// GELU(x) = x/2 · (1 + erf(x/√2)), the exact form BERT uses
inline __m512 gelu_ps(__m512 x) {
  const __m512 half = _mm512_set1_ps(0.5f);
  const __m512 inner = erf_ps(_mm512_mul_ps(x, _mm512_set1_ps(0.70710678118654752f)));
  return _mm512_mul_ps(_mm512_mul_ps(half, x), _mm512_add_ps(_mm512_set1_ps(1.0f), inner));
}

}  // namespace qbert
