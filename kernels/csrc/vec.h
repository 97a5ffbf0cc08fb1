// Vector helpers shared by the kernels: AVX-512 (with BF16 and VNNI) code paths are
// compiled per function with a target attribute and chosen at run time by
// has_avx512_bf16(), so one library runs on any x86 CPU.

#pragma once

#include <immintrin.h>

#include <cstdint>

namespace mixdiff {

#define AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx512vnni,fma")))

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

inline bool has_avx512_bf16() {
  static const bool has = __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vnni") &&
                          __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512dq");
  return has;
}

AVX512_BF16 inline __m512 exp2_ps(__m512 x) {
  // 2^x = 2^n * 2^f, n = round(x), |f| <= 1/2, 2^f by a cubic fitted for relative error
  // (under 8e-5: far below the BF16 or u8 rounding of what the kernels write).
  // Far below -126 scalef flushes to zero, as it should; far above it gives infinity.
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, n);
  __m512 y = _mm512_set1_ps(5.5088770e-2f);
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(2.4260466e-1f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(6.9327628e-1f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(9.9992890e-1f));
  return _mm512_scalef_ps(y, n);
}

// The first n of 16 lanes.
AVX512_BF16 inline __mmask16 first(int64_t n) {
  return n >= 16 ? (__mmask16)0xFFFF : n > 0 ? (__mmask16)((1u << n) - 1) : (__mmask16)0;
}

// The first bits of m of 16 BF16 at x, as FP32; zeros elsewhere.
AVX512_BF16 inline __m512 bf16_to_ps(__mmask16 m, const uint16_t* x) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, x)), 16));
}

}  // namespace mixdiff
