// GroupNorm, optionally followed by SiLU, for BF16 activations in channels-last memory:
// one pass over x for the statistics and one for the output, both split over blocks of
// pixel rows, so every core works whatever the number of groups (a split over batch x
// groups leaves cores idle where there are fewer of those than cores). SiLU is applied
// on the way out, saving the pass over memory a separate SiLU would take.
//
// x is [N, C, H, W] with channels-last strides ([N, H, W, C] contiguous); weight and bias
// [C] or absent. Statistics are FP32 sums of x less the image's first pixel, per channel
// (so a large mean does not cancel); the blocks' sums are added up per channel, and the
// channels' moments merged per group in double precision. Other
// layouts or dtypes, or a CPU without AVX-512 BF16, compute ATen's group_norm (and silu).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "vec.h"

namespace mixdiff {
namespace {

constexpr int64_t BLOCK_ROWS = 64;  // pixel rows per task

struct Shape {
  int64_t n, c, rows, blocks;  // rows = H * W, blocks of BLOCK_ROWS per image
  int64_t cpad;                // c rounded up to 16
};

// Per channel, over the block's rows: the sums of x - shift and of its square.
AVX512_BF16 void block_sums(const uint16_t* x, const Shape& s, int64_t row0, int64_t rows, const float* shift,
                            float* s1, float* s2) {
  for (int64_t c = 0; c < s.c; c += 16) {
    const __mmask16 m = first(s.c - c);
    const __m512 base = _mm512_loadu_ps(shift + c);
    __m512 a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps();
    for (int64_t r = row0; r < row0 + rows; ++r) {
      const __m512 d = _mm512_maskz_sub_ps(m, bf16_to_ps(m, x + r * s.c + c), base);
      a1 = _mm512_add_ps(a1, d);
      a2 = _mm512_fmadd_ps(d, d, a2);
    }
    _mm512_storeu_ps(s1 + c, a1);
    _mm512_storeu_ps(s2 + c, a2);
  }
}

// x[i], a BF16, as FP32.
float x_at(const uint16_t* x, int64_t i) {
  const uint32_t bits = static_cast<uint32_t>(x[i]) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// y = x * a + b per channel, then SiLU (y / (1 + e^-y)) if asked, as BF16.
template <bool SILU>
AVX512_BF16 void block_apply(const uint16_t* x, const Shape& s, int64_t row0, int64_t rows, const float* a,
                             const float* b, uint16_t* y) {
  const __m512 minus_log2e = _mm512_set1_ps(-1.44269504088896341f), one = _mm512_set1_ps(1.0f);
  for (int64_t r = row0; r < row0 + rows; ++r) {
    for (int64_t c = 0; c < s.c; c += 16) {
      const __mmask16 m = first(s.c - c);
      __m512 v = _mm512_fmadd_ps(bf16_to_ps(m, x + r * s.c + c), _mm512_loadu_ps(a + c), _mm512_loadu_ps(b + c));
      if (SILU) v = _mm512_div_ps(v, _mm512_add_ps(one, exp2_ps(_mm512_mul_ps(v, minus_log2e))));
      _mm256_mask_storeu_epi16(y + r * s.c + c, m, (__m256i)_mm512_cvtneps_pbh(v));
    }
  }
}

void fused(const at::Tensor& x, const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
           int64_t groups, double eps, bool silu, at::Tensor& y) {
  const int64_t rows = x.size(2) * x.size(3);
  const Shape s{x.size(0), x.size(1), rows, (rows + BLOCK_ROWS - 1) / BLOCK_ROWS, round_up(x.size(1), 16)};
  const auto* xp = reinterpret_cast<const uint16_t*>(x.const_data_ptr<at::BFloat16>());
  auto* yp = reinterpret_cast<uint16_t*>(y.mutable_data_ptr<at::BFloat16>());
  const int64_t tasks = s.n * s.blocks;
  std::vector<float> shift(s.n * s.cpad, 0.0f), s1(tasks * s.cpad), s2(tasks * s.cpad);
  for (int64_t n = 0; n < s.n; ++n)  // each image's first pixel
    for (int64_t c = 0; c < s.c; ++c) shift[n * s.cpad + c] = x_at(xp, n * rows * s.c + c);
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / s.blocks, row0 = (t % s.blocks) * BLOCK_ROWS;
      block_sums(xp + n * rows * s.c, s, row0, std::min(BLOCK_ROWS, rows - row0), &shift[n * s.cpad],
                 &s1[t * s.cpad], &s2[t * s.cpad]);
    }
  });

  // Per image: each channel's sums over its blocks, its moments, merged per group; then
  // each channel's a and b.
  const at::Tensor w = weight.has_value() && weight->defined() ? weight->to(at::kFloat).contiguous() : at::Tensor();
  const at::Tensor bb = bias.has_value() && bias->defined() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  std::vector<float> a(s.n * s.cpad), b(s.n * s.cpad);
  std::vector<double> sum1(s.c), sum2(s.c);
  const int64_t per_group = s.c / groups;
  const double k = static_cast<double>(rows);
  for (int64_t n = 0; n < s.n; ++n) {
    std::fill(sum1.begin(), sum1.end(), 0.0);
    std::fill(sum2.begin(), sum2.end(), 0.0);
    for (int64_t blk = 0; blk < s.blocks; ++blk) {
      const float* b1 = &s1[(n * s.blocks + blk) * s.cpad];
      const float* b2 = &s2[(n * s.blocks + blk) * s.cpad];
      for (int64_t c = 0; c < s.c; ++c) sum1[c] += b1[c], sum2[c] += b2[c];
    }
    for (int64_t g = 0; g < groups; ++g) {
      // Every channel has k values: the group's mean is their means' mean, and its sum of
      // squared deviations theirs plus k times each mean's squared distance from it.
      const int64_t c0 = g * per_group, c1 = c0 + per_group;
      double mean = 0.0, m2 = 0.0;
      for (int64_t c = c0; c < c1; ++c) mean += shift[n * s.cpad + c] + sum1[c] / k;
      mean /= static_cast<double>(per_group);
      for (int64_t c = c0; c < c1; ++c) {
        const double delta = shift[n * s.cpad + c] + sum1[c] / k - mean;
        m2 += std::max(0.0, sum2[c] - sum1[c] * sum1[c] / k) + k * delta * delta;
      }
      const double rstd = 1.0 / std::sqrt(m2 / (k * static_cast<double>(per_group)) + eps);
      for (int64_t c = c0; c < c1; ++c) {
        const float scale = static_cast<float>(rstd) * (w.defined() ? w.const_data_ptr<float>()[c] : 1.0f);
        a[n * s.cpad + c] = scale;
        b[n * s.cpad + c] = (bb.defined() ? bb.const_data_ptr<float>()[c] : 0.0f) - static_cast<float>(mean) * scale;
      }
    }
  }

  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / s.blocks, row0 = (t % s.blocks) * BLOCK_ROWS, r = std::min(BLOCK_ROWS, rows - row0);
      const uint16_t* xi = xp + n * rows * s.c;
      uint16_t* yi = yp + n * rows * s.c;
      if (silu)
        block_apply<true>(xi, s, row0, r, &a[n * s.cpad], &b[n * s.cpad], yi);
      else
        block_apply<false>(xi, s, row0, r, &a[n * s.cpad], &b[n * s.cpad], yi);
    }
  });
}

at::Tensor group_norm(const at::Tensor& x, int64_t groups, const c10::optional<at::Tensor>& weight,
                      const c10::optional<at::Tensor>& bias, double eps, bool silu) {
  const bool fast = has_avx512_bf16() && x.device().is_cpu() && x.scalar_type() == at::kBFloat16 && x.dim() == 4 &&
                    x.numel() > 0 && x.is_contiguous(at::MemoryFormat::ChannelsLast) && x.size(1) % groups == 0;
  if (!fast) {
    at::Tensor y = at::group_norm(x, groups, weight, bias, eps);
    return silu ? at::silu(y) : y;
  }
  at::Tensor y = at::empty_like(x);  // channels-last (or, where that is the same memory, contiguous)
  fused(x, weight, bias, groups, eps, silu, y);
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mixdiff, m) {
  m.def("group_norm(Tensor x, int groups, Tensor? weight, Tensor? bias, float eps, bool silu) -> Tensor");
}

TORCH_LIBRARY_IMPL(mixdiff, CPU, m) { m.impl("group_norm", &group_norm); }

}  // namespace mixdiff
