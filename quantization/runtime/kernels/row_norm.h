// LayerNorm of one row's sum with its residual, shared by the LayerNorm kernel (layer_norm.cpp) and the GEMM whose
// epilogue it can be (lowbit_linear.cpp): one function, so that both give the same bits.
#pragma once

#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "vector_math.h"

namespace qbert {

// out = LayerNorm(x + residual) over `width` values (out may be x: each value is read before it is written).
// Mean and variance in two passes over the row, as ATen's CPU LayerNorm computes them.
inline void add_row_norm(const float* x, const float* residual, const float* weight, const float* bias,
                         int64_t width, float eps, float* out) {
  __m512 vsum = _mm512_setzero_ps();
  for (int64_t d = 0; d < width; d += 16) {
    const __mmask16 lanes = qbert::first_lanes(width - d);
    const __m512 v = _mm512_add_ps(_mm512_maskz_loadu_ps(lanes, x + d), _mm512_maskz_loadu_ps(lanes, residual + d));
    _mm512_mask_storeu_ps(out + d, lanes, v);
    vsum = _mm512_add_ps(vsum, v);
  }
  const float mean = _mm512_reduce_add_ps(vsum) / static_cast<float>(width);
  const __m512 vmean = _mm512_set1_ps(mean);
  __m512 vsquares = _mm512_setzero_ps();
  for (int64_t d = 0; d < width; d += 16) {
    const __mmask16 lanes = qbert::first_lanes(width - d);
    const __m512 centered = _mm512_maskz_sub_ps(lanes, _mm512_maskz_loadu_ps(lanes, out + d), vmean);
    vsquares = _mm512_fmadd_ps(centered, centered, vsquares);
  }
  const float variance = _mm512_reduce_add_ps(vsquares) / static_cast<float>(width);
  const __m512 rstd = _mm512_set1_ps(1.0f / std::sqrt(variance + eps));
  for (int64_t d = 0; d < width; d += 16) {
    const __mmask16 lanes = qbert::first_lanes(width - d);
    const __m512 normalized = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, out + d), vmean), rstd);
    const __m512 y = _mm512_fmadd_ps(normalized, _mm512_maskz_loadu_ps(lanes, weight + d),
                                     _mm512_maskz_loadu_ps(lanes, bias + d));
    _mm512_mask_storeu_ps(out + d, lanes, y);
  }
}

}  // namespace qbert
