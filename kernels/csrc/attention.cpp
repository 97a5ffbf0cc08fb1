// Fused attention for CPUs with AVX-512 BF16: softmax(q k^T * scale) v in one pass per
// block of query rows, its scores kept in the cache, never in memory.
//
// q, k, v are [batch, heads, tokens, head_dim] BF16 with head_dim contiguous (views of
// [batch, tokens, heads, head_dim], as diffusers' attention makes them). The output is
// [batch, heads, tokens, head_dim] as a view of a [batch, tokens, heads, head_dim] tensor,
// which is what the attention's out-projection reads next.
//
// Per (batch, head), key and value are packed once into the layouts that vdpbf16ps
// (two BF16 along the reduction, 16 FP32 lanes) and vpdpbusd (four u8 times four s8)
// multiply. Then each task takes ROWS query rows: their scores against every key (FP32,
// ROWS x keys, in L2), an exact softmax (max, exponentials, sum) and the product with
// v, all in registers and L2.
//
// Two ops: `attention` computes both products in BF16; `int8_attention` both in INT8
// (for 512 keys or more). q k^T as SageAttention does: keys centred on their mean over
// tokens (which shifts every score of a query row alike, so the softmax is unchanged)
// and both sides quantized per token, symmetric. P v: the exponentials (FP32) rounded to
// u8 with one scale per block of PV_BLOCK keys, so that small probabilities far from the
// row's largest keep their precision; values centred on their mean over tokens and
// quantized per channel, symmetric; each block's int32 sums added in FP32 at its scale,
// and the row divided by the sum of its rounded probabilities. Without AVX-512 BF16 and
// VNNI at run time, or for other dtypes, both compute ATen's scaled_dot_product_attention.
//
// On a CPU with AMX, ATen's flash attention multiplies in AMX tiles (oneDNN's brgemm) and
// is faster than both AVX-512 kernels (bench/attention.py, docs/KERNELS.md). There both ops
// run a third kernel: the BF16 one with its two products in AMX tiles, 16 query rows a task,
// where it beats ATen's (amx_wins), and ATen's SDPA elsewhere. set_attention_backend("auto" |
// "fused" | "amx" | "aten") overrides that choice for the process (the benches and tests
// measure every kernel on such CPUs so); attention_backend() tells it.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <sys/syscall.h>
#include <torch/library.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <string>
#include <type_traits>
#include <vector>

#include "vec.h"

namespace mixdiff {
namespace {

constexpr int64_t ROWS = 8;       // query rows per task and per micro-kernel
constexpr int64_t KEY_TILE = 32;  // keys per score micro-kernel: two 16-lane vectors
constexpr int64_t PV_BLOCK = 64;  // keys per scale of the u8 probabilities (INT8 P.V)
constexpr int64_t AMX_ROWS = 16;  // query rows per task in AMX tiles: a whole tile's rows

AVX512_BF16 inline __m512bh as_bh(__m512i x) { return (__m512bh)x; }

// acc + u8 x s8, four products per int32 lane (vpdpbusd). As inline assembly: with GCC
// 12's intrinsic the compiler copies accumulators around every product and spills some
// to the stack, which cost the INT8 products much of their rate (bench/attention.py).
AVX512_BF16 inline __m512i dpbusd(__m512i acc, __m512i u8, __m512i s8) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u8), "vm"(s8));
  return acc;
}
AVX512_BF16 inline __m256i dpbusd(__m256i acc, __m256i u8, __m256i s8) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u8), "vm"(s8));
  return acc;
}

// Packed layouts, zeros where padded: the packers write into zeroed buffers (PackedKV's)
// and leave the padding as they find it. BF16 key: [dim2 / 2][keys][2]; INT8 key:
// [dim4 / 4][keys][4] with a scale and -128 * (sum of its int8 values) per key; BF16
// value: [keys / 2][cols][2]; INT8 value: [keys / 4][cols][4] with a scale and a mean
// per column. INT8 pads the keys to whole blocks of PV_BLOCK.
struct Packed {
  int64_t dim2;   // head_dim rounded up to 2
  int64_t dim4;   // head_dim rounded up to 4
  int64_t keys;   // key count rounded up to KEY_TILE
  int64_t cols;   // head_dim rounded up to 8
  int64_t key_size() const { return dim2 * keys; }
  int64_t key8_size() const { return dim4 * keys; }
  int64_t value_size() const { return keys * cols; }
  int64_t blocks() const { return keys / PV_BLOCK; }
};

void pack_key(const at::BFloat16* k, int64_t stride, int64_t n, int64_t d, const Packed& p, uint16_t* out) {
  for (int64_t j = 0; j < n; ++j) {
    const uint16_t* row = reinterpret_cast<const uint16_t*>(k + j * stride);
    for (int64_t c = 0; c < d; ++c) out[((c / 2) * p.keys + j) * 2 + (c & 1)] = row[c];
  }
}

// Keys centred on their mean over the n tokens, then int8 per key, symmetric (absmax).
AVX512_BF16 void pack_key_int8(const at::BFloat16* k, int64_t stride, int64_t n, int64_t d, const Packed& p,
                               int8_t* out, float* scales, int32_t* sums) {
  const uint16_t* keys = reinterpret_cast<const uint16_t*>(k);
  std::vector<float> mean(round_up(d, 16), 0.0f);
  std::vector<int8_t> row(round_up(d, 16));
  for (int64_t j = 0; j < n; ++j)
    for (int64_t c = 0; c < d; c += 16)
      _mm512_storeu_ps(&mean[c],
                       _mm512_add_ps(_mm512_loadu_ps(&mean[c]), bf16_to_ps(first(d - c), keys + j * stride + c)));
  for (float& m : mean) m /= static_cast<float>(n);
  for (int64_t j = 0; j < n; ++j) {
    const uint16_t* x = keys + j * stride;
    __m512 amax = _mm512_setzero_ps();
    for (int64_t c = 0; c < d; c += 16)
      amax = _mm512_max_ps(amax,
                           _mm512_abs_ps(_mm512_sub_ps(bf16_to_ps(first(d - c), x + c), _mm512_loadu_ps(&mean[c]))));
    const float top = _mm512_reduce_max_ps(amax);
    const __m512 inv = _mm512_set1_ps(top > 0.0f ? 127.0f / top : 0.0f);
    __m512i sum = _mm512_setzero_si512();
    for (int64_t c = 0; c < d; c += 16) {
      const __mmask16 m = first(d - c);
      const __m512 centred = _mm512_maskz_sub_ps(m, bf16_to_ps(m, x + c), _mm512_loadu_ps(&mean[c]));
      const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(centred, inv));
      sum = _mm512_add_epi32(sum, q);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(&row[c]), _mm512_cvtsepi32_epi8(q));
    }
    for (int64_t c = 0; c < d; c += 4)
      std::memcpy(out + ((c / 4) * p.keys + j) * 4, &row[c], std::min<int64_t>(4, d - c));
    scales[j] = top / 127.0f;
    sums[j] = -128 * _mm512_reduce_add_epi32(sum);  // minus the query's u8 offset times the key: where scores start
  }
}

void pack_value(const at::BFloat16* v, int64_t stride, int64_t n, int64_t d, const Packed& p, uint16_t* out) {
  for (int64_t j = 0; j < n; ++j) {
    const uint16_t* row = reinterpret_cast<const uint16_t*>(v + j * stride);
    uint16_t* dst = out + (j / 2) * p.cols * 2 + (j & 1);
    for (int64_t c = 0; c < d; ++c) dst[c * 2] = row[c];
  }
}

// Values centred on their mean over the n tokens per column, then int8 per column,
// symmetric, in the layout vpdpbusd multiplies: [keys / 4][cols][4].
AVX512_BF16 void pack_value_int8(const at::BFloat16* v, int64_t stride, int64_t n, int64_t d, const Packed& p,
                                 int8_t* out, float* scales, float* means) {
  const uint16_t* values = reinterpret_cast<const uint16_t*>(v);
  for (int64_t c = 0; c < d; c += 16) {
    const __mmask16 m = first(d - c);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; ++j) sum = _mm512_add_ps(sum, bf16_to_ps(m, values + j * stride + c));
    const __m512 mean = _mm512_div_ps(sum, _mm512_set1_ps(static_cast<float>(n)));
    __m512 amax = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; ++j)
      amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_maskz_sub_ps(m, bf16_to_ps(m, values + j * stride + c), mean)));
    const __m512 inv = _mm512_maskz_div_ps(_mm512_cmp_ps_mask(amax, _mm512_setzero_ps(), _CMP_GT_OQ),
                                           _mm512_set1_ps(127.0f), amax);
    _mm512_mask_storeu_ps(scales + c, m, _mm512_div_ps(amax, _mm512_set1_ps(127.0f)));
    _mm512_mask_storeu_ps(means + c, m, mean);
    for (int64_t j = 0; j < n; j += 4) {  // four tokens' 16 columns, interleaved into [column][4]
      __m128i rows[4];
      for (int t = 0; t < 4; ++t) {
        if (j + t >= n) {
          rows[t] = _mm_setzero_si128();
          continue;
        }
        const __m512 x = _mm512_maskz_sub_ps(m, bf16_to_ps(m, values + (j + t) * stride + c), mean);
        rows[t] = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(x, inv)));
      }
      const __m128i ab0 = _mm_unpacklo_epi8(rows[0], rows[1]), ab1 = _mm_unpackhi_epi8(rows[0], rows[1]);
      const __m128i cd0 = _mm_unpacklo_epi8(rows[2], rows[3]), cd1 = _mm_unpackhi_epi8(rows[2], rows[3]);
      const __m128i quads[4] = {_mm_unpacklo_epi16(ab0, cd0), _mm_unpackhi_epi16(ab0, cd0),
                                _mm_unpacklo_epi16(ab1, cd1), _mm_unpackhi_epi16(ab1, cd1)};
      int8_t* dst = out + ((j / 4) * p.cols + c) * 4;
      for (int64_t g = 0; g < 4 && c + g * 4 < p.cols; ++g)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + g * 16), quads[g]);
    }
  }
}

// scores[ROWS][p.keys] = q_block[ROWS][dim2] . key^T, FP32; row_max: each row's largest over the n real keys.
AVX512_BF16 void scores_kernel(const uint16_t* q, const uint16_t* key, const Packed& p, int64_t n, float* scores,
                               float* row_max) {
  const int64_t pairs = p.dim2 / 2;
  __m512 vmax[ROWS];
  for (int r = 0; r < ROWS; ++r) vmax[r] = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < p.keys; j += KEY_TILE) {
    __m512 acc[ROWS][2];
    for (int r = 0; r < ROWS; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int64_t c = 0; c < pairs; ++c) {
      const uint16_t* k = key + (c * p.keys + j) * 2;
      __m512bh k0 = as_bh(_mm512_loadu_si512(k));
      __m512bh k1 = as_bh(_mm512_loadu_si512(k + 32));
      for (int r = 0; r < ROWS; ++r) {
        int32_t pair;
        std::memcpy(&pair, q + r * p.dim2 + c * 2, sizeof(pair));
        __m512bh qb = as_bh(_mm512_set1_epi32(pair));
        acc[r][0] = _mm512_dpbf16_ps(acc[r][0], qb, k0);
        acc[r][1] = _mm512_dpbf16_ps(acc[r][1], qb, k1);
      }
    }
    const __mmask16 m0 = first(n - j), m1 = first(n - j - 16);
    for (int r = 0; r < ROWS; ++r) {
      _mm512_storeu_ps(scores + r * p.keys + j, acc[r][0]);
      _mm512_storeu_ps(scores + r * p.keys + j + 16, acc[r][1]);
      vmax[r] = _mm512_mask_max_ps(_mm512_mask_max_ps(vmax[r], m0, vmax[r], acc[r][0]), m1, vmax[r], acc[r][1]);
    }
  }
  for (int r = 0; r < ROWS; ++r) row_max[r] = _mm512_reduce_max_ps(vmax[r]);
}

// scores[ROWS][p.keys] = q_block . key^T from u8 queries (int8 + 128) and int8 keys,
// scaled back to FP32 by each key's scale; each query row's scale is left to the softmax.
AVX512_BF16 void scores_kernel_int8(const uint8_t* q, const int8_t* key, const float* k_scales, const int32_t* k_sums,
                                    const Packed& p, int64_t n, float* scores, float* row_max) {
  const int64_t quads = p.dim4 / 4;
  __m512 vmax[ROWS];
  for (int r = 0; r < ROWS; ++r) vmax[r] = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < p.keys; j += KEY_TILE) {
    // Each sum starts from minus the query offset's share (128 times the key's sum).
    const __m512i s0 = _mm512_loadu_si512(k_sums + j), s1 = _mm512_loadu_si512(k_sums + j + 16);
    __m512i acc[ROWS][2];
    for (int r = 0; r < ROWS; ++r) acc[r][0] = s0, acc[r][1] = s1;
    for (int64_t c = 0; c < quads; ++c) {
      const int8_t* k = key + (c * p.keys + j) * 4;
      __m512i k0 = _mm512_loadu_si512(k);
      __m512i k1 = _mm512_loadu_si512(k + 64);
      for (int r = 0; r < ROWS; ++r) {
        int32_t quad;
        std::memcpy(&quad, q + r * p.dim4 + c * 4, sizeof(quad));
        __m512i qb = _mm512_set1_epi32(quad);
        acc[r][0] = dpbusd(acc[r][0], qb, k0);
        acc[r][1] = dpbusd(acc[r][1], qb, k1);
      }
    }
    const __m512 ks0 = _mm512_loadu_ps(k_scales + j), ks1 = _mm512_loadu_ps(k_scales + j + 16);
    const __mmask16 m0 = first(n - j), m1 = first(n - j - 16);
    for (int r = 0; r < ROWS; ++r) {
      const __m512 x0 = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[r][0]), ks0);
      const __m512 x1 = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[r][1]), ks1);
      _mm512_storeu_ps(scores + r * p.keys + j, x0);
      _mm512_storeu_ps(scores + r * p.keys + j + 16, x1);
      vmax[r] = _mm512_mask_max_ps(_mm512_mask_max_ps(vmax[r], m0, vmax[r], x0), m1, vmax[r], x1);
    }
  }
  for (int r = 0; r < ROWS; ++r) row_max[r] = _mm512_reduce_max_ps(vmax[r]);
}

// Row by row: probs = exp((scores - max) * scale[r]) in BF16, zero past n; their sums in sums.
AVX512_BF16 void softmax_rows(const float* scores, const float* row_max, int64_t n, const Packed& p,
                              const float* scale, uint16_t* probs, float* sums) {
  const int64_t full = n / 16 * 16;
  for (int r = 0; r < ROWS; ++r) {
    const float* s = scores + r * p.keys;
    uint16_t* out = probs + r * p.keys;
    const __m512 vscale = _mm512_set1_ps(scale[r] * 1.44269504088896341f);  // exp(x) = 2^(x log2(e))
    const __m512 shift = _mm512_mul_ps(_mm512_set1_ps(row_max[r]), vscale);
    __m512 vsum = _mm512_setzero_ps();
    for (int64_t j = 0; j < full; j += 16) {
      const __m512 e = exp2_ps(_mm512_fmsub_ps(_mm512_loadu_ps(s + j), vscale, shift));
      vsum = _mm512_add_ps(vsum, e);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + j), (__m256i)_mm512_cvtneps_pbh(e));
    }
    for (int64_t j = full; j < p.keys; j += 16) {  // the last real keys, then zeros to the padded end
      const __m512 e =
          _mm512_maskz_mov_ps(first(n - j), exp2_ps(_mm512_fmsub_ps(_mm512_loadu_ps(s + j), vscale, shift)));
      vsum = _mm512_add_ps(vsum, e);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + j), (__m256i)_mm512_cvtneps_pbh(e));
    }
    sums[r] = _mm512_reduce_add_ps(vsum);
  }
}

// One block of PV_BLOCK keys of one row for softmax_rows_u8: exp((score - max) * scale)
// as u8 at the block's scale (its largest is 255), which goes to *block_scale; the
// rounded probabilities, at that scale, are added to sum.
AVX512_BF16 inline void softmax_block_u8(const float* s, __m512 vscale, __m512 shift, int64_t valid, uint8_t* out,
                                         float* block_scale, __m512& sum) {
  constexpr int V = PV_BLOCK / 16;
  __m512 e[V];
  __m512 top = _mm512_setzero_ps();
  for (int i = 0; i < V; ++i) {
    e[i] = exp2_ps(_mm512_fmsub_ps(_mm512_loadu_ps(s + i * 16), vscale, shift));
    if (valid < PV_BLOCK) e[i] = _mm512_maskz_mov_ps(first(valid - i * 16), e[i]);  // zeros past the last key
    top = _mm512_max_ps(top, e[i]);
  }
  // The block's largest in every lane, kept in registers: no scalar reduction or division.
  top = _mm512_max_ps(top, _mm512_shuffle_f32x4(top, top, 0x4e));
  top = _mm512_max_ps(top, _mm512_shuffle_f32x4(top, top, 0xb1));
  top = _mm512_max_ps(top, _mm512_permute_ps(top, 0x4e));
  top = _mm512_max_ps(top, _mm512_permute_ps(top, 0xb1));
  const __m512 inv = _mm512_maskz_mul_ps(_mm512_cmp_ps_mask(top, _mm512_setzero_ps(), _CMP_GT_OQ),
                                         _mm512_set1_ps(255.0f), _mm512_rcp14_ps(top));
  __m512i count = _mm512_setzero_si512();
  for (int i = 0; i < V; ++i) {
    const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(e[i], inv));
    count = _mm512_add_epi32(count, q);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i * 16), _mm512_cvtusepi32_epi8(q));
  }
  const __m512 bs = _mm512_mul_ps(top, _mm512_set1_ps(1.0f / 255.0f));
  *block_scale = _mm512_cvtss_f32(bs);
  sum = _mm512_fmadd_ps(_mm512_cvtepi32_ps(count), bs, sum);
}

// As softmax_rows, but the probabilities as u8 with one scale per block of PV_BLOCK keys:
// block_scales[block][ROWS]. The sums are those of the rounded probabilities, so the
// weights that reach the values add up to one. Two rows at a time, whose blocks'
// dependency chains (largest, its reciprocal, the rounding) then overlap.
AVX512_BF16 void softmax_rows_u8(const float* scores, const float* row_max, int64_t n, const Packed& p,
                                 const float* scale, uint8_t* probs, float* block_scales, float* sums) {
  static_assert(ROWS % 2 == 0, "rows go in pairs");
  const int64_t blocks = p.blocks();
  for (int r = 0; r < ROWS; r += 2) {
    __m512 vscale[2], shift[2], vsum[2];
    for (int i = 0; i < 2; ++i) {
      vscale[i] = _mm512_set1_ps(scale[r + i] * 1.44269504088896341f);  // exp(x) = 2^(x log2(e))
      shift[i] = _mm512_mul_ps(_mm512_set1_ps(row_max[r + i]), vscale[i]);
      vsum[i] = _mm512_setzero_ps();
    }
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t j0 = b * PV_BLOCK;
      for (int i = 0; i < 2; ++i)
        softmax_block_u8(scores + (r + i) * p.keys + j0, vscale[i], shift[i], n - j0, probs + (r + i) * p.keys + j0,
                         block_scales + b * ROWS + r + i, vsum[i]);
    }
    for (int i = 0; i < 2; ++i) sums[r + i] = _mm512_reduce_add_ps(vsum[i]);
  }
}

// acc[ROWS][cols c0 .. c0 + 16 * TILES (+ 8 with HALF)) += (u8 probs . int8 value) * scale[r]
// over the keys of one block of PV_BLOCK, summed in int32. A function of its own (not
// inlined into the loop over blocks), so its accumulators live in it alone, as
// value_kernel's do.
template <int TILES, bool HALF>
AVX512_BF16 __attribute__((noinline)) void value_block_int8(const uint8_t* probs, const int8_t* value,
                                                            const float* scale, const Packed& p, int64_t c0,
                                                            float* acc_out) {
  constexpr int T = TILES > 0 ? TILES : 1;
  __m512i acc[ROWS][T];
  __m256i half[ROWS];
  for (int r = 0; r < ROWS; ++r) {
    for (int t = 0; t < TILES; ++t) acc[r][t] = _mm512_setzero_si512();
    half[r] = _mm256_setzero_si256();
  }
  for (int64_t j = 0; j < PV_BLOCK; j += 4) {
    const int8_t* v = value + ((j / 4) * p.cols + c0) * 4;
    __m512i vt[T];
    for (int t = 0; t < TILES; ++t) vt[t] = _mm512_loadu_si512(v + t * 64);
    __m256i vh;
    if (HALF) vh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + TILES * 64));
    for (int r = 0; r < ROWS; ++r) {
      int32_t quad;
      std::memcpy(&quad, probs + r * p.keys + j, sizeof(quad));
      const __m512i pq = _mm512_set1_epi32(quad);  // its low half serves the 256-bit product: one broadcast
      for (int t = 0; t < TILES; ++t) acc[r][t] = dpbusd(acc[r][t], pq, vt[t]);
      if (HALF) half[r] = dpbusd(half[r], _mm512_castsi512_si256(pq), vh);
    }
  }
  for (int r = 0; r < ROWS; ++r) {
    const __m512 s = _mm512_set1_ps(scale[r]);
    float* o = acc_out + r * p.cols + c0;
    for (int t = 0; t < TILES; ++t)
      _mm512_storeu_ps(o + t * 16, _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][t]), s, _mm512_loadu_ps(o + t * 16)));
    if (HALF)
      _mm256_storeu_ps(o + TILES * 16, _mm256_fmadd_ps(_mm256_cvtepi32_ps(half[r]), _mm512_castps512_ps256(s),
                                                       _mm256_loadu_ps(o + TILES * 16)));
  }
}

// acc[ROWS][cols c0 .. c0 + 16 * TILES (+ 8 with HALF)) = u8 probs . int8 value, block by
// block at each block's scale (block_scales[block][ROWS]).
template <int TILES, bool HALF>
AVX512_BF16 void value_kernel_int8(const uint8_t* probs, const int8_t* value, const float* block_scales,
                                   const Packed& p, int64_t c0, float* acc_out) {
  const int64_t width = TILES * 16 + (HALF ? 8 : 0);
  for (int r = 0; r < ROWS; ++r) std::fill(acc_out + r * p.cols + c0, acc_out + r * p.cols + c0 + width, 0.0f);
  for (int64_t b = 0; b < p.blocks(); ++b)
    value_block_int8<TILES, HALF>(probs + b * PV_BLOCK, value + b * PV_BLOCK * p.cols, block_scales + b * ROWS, p, c0,
                                  acc_out);
}

// out[ROWS][cols c0 .. c0 + 16 * TILES (+ 8 with HALF)) = probs[ROWS][keys] . value, divided
// by the row sums. HALF: eight more columns in a 256-bit register (head_dim 40 = 2.5 x 16).
template <int TILES, bool HALF>
AVX512_BF16 void value_kernel(const uint16_t* probs, const uint16_t* value, const Packed& p, int64_t c0,
                              const float* inv, float* out) {
  constexpr int T = TILES > 0 ? TILES : 1;
  __m512 acc[ROWS][T];
  __m256 half[ROWS];
  for (int r = 0; r < ROWS; ++r) {
    for (int t = 0; t < TILES; ++t) acc[r][t] = _mm512_setzero_ps();
    half[r] = _mm256_setzero_ps();
  }
  for (int64_t j = 0; j < p.keys; j += 2) {
    const uint16_t* v = value + (j / 2) * p.cols * 2 + c0 * 2;
    __m512bh vt[T];
    for (int t = 0; t < TILES; ++t) vt[t] = as_bh(_mm512_loadu_si512(v + t * 32));
    __m256bh vh;
    if (HALF) vh = (__m256bh)_mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + TILES * 32));
    for (int r = 0; r < ROWS; ++r) {
      int32_t pair;
      std::memcpy(&pair, probs + r * p.keys + j, sizeof(pair));
      const __m512i pp = _mm512_set1_epi32(pair);  // its low half serves the 256-bit product: one broadcast
      for (int t = 0; t < TILES; ++t) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], as_bh(pp), vt[t]);
      if (HALF) half[r] = _mm256_dpbf16_ps(half[r], (__m256bh)_mm512_castsi512_si256(pp), vh);
    }
  }
  for (int r = 0; r < ROWS; ++r) {
    for (int t = 0; t < TILES; ++t)
      _mm512_storeu_ps(out + r * p.cols + c0 + t * 16, _mm512_mul_ps(acc[r][t], _mm512_set1_ps(inv[r])));
    if (HALF) _mm256_storeu_ps(out + r * p.cols + c0 + TILES * 16, _mm256_mul_ps(half[r], _mm256_set1_ps(inv[r])));
  }
}

// AMX: the same two products in tiles (TDPBF16PS), on the same packed layouts, which are
// the tiles' own: keys [dim2 / 2][keys][2] and values [keys / 2][cols][2] are B tiles of
// 16 pairs deep and 16 columns (64 bytes) wide; the query block and the probabilities
// (AMX_ROWS rows) are A tiles; scores and results come out of C tiles as FP32 rows.
#define AMX_BF16 \
  __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx512vnni,fma")))

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
  void set(int tile, int rows_, int bytes) {
    rows[tile] = static_cast<uint8_t>(rows_);
    colsb[tile] = static_cast<uint16_t>(bytes);
  }
};

// scores[AMX_ROWS][p.keys] = q_block[AMX_ROWS][dim2] . key^T in tiles, for heads of up to 64:
// the query's one or two 32-column tiles (0, 1) held for all keys, their keys' B tiles (2, 3),
// four C tiles (4-7): 64 keys a step, four sums in flight. Each row's largest over the n real
// keys is taken as the step's scores come out, while they are in L1.
AMX_BF16 void scores_kernel_amx_held(const uint16_t* q, const uint16_t* key, const Packed& p, int64_t n,
                                     float* scores, float* row_max) {
  const int64_t key_bytes = p.keys * 4, first_cols = std::min<int64_t>(p.dim2, 32), second_cols = p.dim2 - first_cols;
  TileConfig config;
  config.set(0, AMX_ROWS, static_cast<int>(first_cols * 2));
  config.set(2, static_cast<int>(first_cols / 2), 64);
  if (second_cols) {
    config.set(1, AMX_ROWS, static_cast<int>(second_cols * 2));
    config.set(3, static_cast<int>(second_cols / 2), 64);
  }
  for (int t = 4; t < 8; ++t) config.set(t, AMX_ROWS, 64);
  _tile_loadconfig(&config);
  _tile_loadd(0, q, p.dim2 * 2);
  if (second_cols) _tile_loadd(1, q + 32, p.dim2 * 2);
  const uint16_t* second = second_cols ? key + 16 * p.keys * 2 : key;  // the pairs from column 32 on
  __m512 vmax[AMX_ROWS];
  for (auto& m : vmax) m = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < p.keys; j += 64) {
    const int tiles = j + 64 <= p.keys ? 4 : 2;  // the keys come in 32s
#define KEYS(c, t)                                            \
  _tile_zero(c);                                              \
  _tile_loadd(2, key + (j + (t) * 16) * 2, key_bytes);        \
  _tile_dpbf16ps(c, 0, 2);                                    \
  if (second_cols) {                                          \
    _tile_loadd(3, second + (j + (t) * 16) * 2, key_bytes);   \
    _tile_dpbf16ps(c, 1, 3);                                  \
  }                                                           \
  _tile_stored(c, scores + j + (t) * 16, key_bytes);
    KEYS(4, 0)
    KEYS(5, 1)
    if (tiles == 4) {
      KEYS(6, 2)
      KEYS(7, 3)
    }
#undef KEYS
    for (int r = 0; r < AMX_ROWS; ++r)
      for (int64_t t = 0; t < tiles && j + t * 16 < n; ++t)
        vmax[r] = _mm512_mask_max_ps(vmax[r], first(n - j - t * 16), vmax[r],
                                     _mm512_loadu_ps(scores + r * p.keys + j + t * 16));
  }
  for (int r = 0; r < AMX_ROWS; ++r) row_max[r] = _mm512_reduce_max_ps(vmax[r]);
}

// The same for wider heads: 32 columns of the query at a time (tile 0, the last dim2 % 32
// tile 3), their keys' B tiles (1 and 2; 4 and 5), two C tiles (6, 7): 32 keys a step; then
// each row's largest.
AMX_BF16 void scores_kernel_amx_wide(const uint16_t* q, const uint16_t* key, const Packed& p, int64_t n,
                                     float* scores, float* row_max) {
  const int64_t key_bytes = p.keys * 4, full = p.dim2 / 32, rest = p.dim2 % 32;
  TileConfig config;
  config.set(0, AMX_ROWS, 64);
  config.set(1, 16, 64);
  config.set(2, 16, 64);
  if (rest) {
    config.set(3, AMX_ROWS, static_cast<int>(rest * 2));
    config.set(4, static_cast<int>(rest / 2), 64);
    config.set(5, static_cast<int>(rest / 2), 64);
  }
  config.set(6, AMX_ROWS, 64);
  config.set(7, AMX_ROWS, 64);
  _tile_loadconfig(&config);
  for (int64_t j = 0; j < p.keys; j += KEY_TILE) {
    _tile_zero(6);
    _tile_zero(7);
// The query's columns from `column` on (A tile a) times their 32 keys' pairs (B tiles b0, b1).
#define COLUMNS(a, b0, b1, column)                                 \
  {                                                                \
    const uint16_t* k = key + ((column) / 2 * p.keys + j) * 2;     \
    _tile_loadd(a, q + (column), p.dim2 * 2);                      \
    _tile_loadd(b0, k, key_bytes);                                 \
    _tile_loadd(b1, k + 32, key_bytes);                            \
    _tile_dpbf16ps(6, a, b0);                                      \
    _tile_dpbf16ps(7, a, b1);                                      \
  }
    for (int64_t f = 0; f < full; ++f) COLUMNS(0, 1, 2, f * 32)
    if (rest) COLUMNS(3, 4, 5, full * 32)
#undef COLUMNS
    _tile_stored(6, scores + j, key_bytes);
    _tile_stored(7, scores + j + 16, key_bytes);
  }
  for (int r = 0; r < AMX_ROWS; ++r) {  // four maxima in flight, not one chain of them
    const float* row = scores + r * p.keys;
    __m512 vmax[4];
    for (auto& m : vmax) m = _mm512_set1_ps(-INFINITY);
    int64_t j = 0;
    for (; j + 64 <= n; j += 64)
      for (int i = 0; i < 4; ++i) vmax[i] = _mm512_max_ps(vmax[i], _mm512_loadu_ps(row + j + i * 16));
    for (; j < n; j += 16) vmax[0] = _mm512_mask_max_ps(vmax[0], first(n - j), vmax[0], _mm512_loadu_ps(row + j));
    row_max[r] = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(vmax[0], vmax[1]), _mm512_max_ps(vmax[2], vmax[3])));
  }
}

// C tile 3 + t (TDPBF16PS names its tiles by constants).
#define AMX_CASES(op) \
  switch (t) {        \
    case 0: op(3); break; \
    case 1: op(4); break; \
    case 2: op(5); break; \
    case 3: op(6); break; \
    default: op(7); break; \
  }

// out[AMX_ROWS][cols] = probs[AMX_ROWS][keys] . value, in tiles: five 16-column C tiles (3-7) at a
// time over all keys, 32 keys a step (A tile 0; B tile 1, or 2 for the last 8 columns).
AMX_BF16 void value_kernel_amx(const uint16_t* probs, const uint16_t* value, const Packed& p, float* out) {
  const int64_t tiles = (p.cols + 15) / 16, value_bytes = p.cols * 4, out_bytes = p.cols * 4;
  for (int64_t t0 = 0; t0 < tiles; t0 += 5) {
    const int64_t count = std::min<int64_t>(5, tiles - t0);
    const bool narrow_last = t0 + count == tiles && p.cols % 16 != 0;
    TileConfig config;
    config.set(0, AMX_ROWS, 64);
    config.set(1, 16, 64);
    config.set(2, 16, 32);
    for (int64_t t = 0; t < count; ++t) config.set(3 + t, AMX_ROWS, narrow_last && t == count - 1 ? 32 : 64);
    _tile_loadconfig(&config);
    for (int64_t t = 0; t < count; ++t) {
#define ZERO(c) _tile_zero(c)
      AMX_CASES(ZERO)
#undef ZERO
    }
    for (int64_t j = 0; j < p.keys; j += 32) {
      _tile_loadd(0, probs + j, p.keys * 2);
      const uint16_t* v = value + ((j / 2) * p.cols + t0 * 16) * 2;
      for (int64_t t = 0; t < count; ++t) {
        if (narrow_last && t == count - 1) {
          _tile_loadd(2, v + t * 32, value_bytes);
#define DP(c) _tile_dpbf16ps(c, 0, 2)
          AMX_CASES(DP)
#undef DP
        } else {
          _tile_loadd(1, v + t * 32, value_bytes);
#define DP(c) _tile_dpbf16ps(c, 0, 1)
          AMX_CASES(DP)
#undef DP
        }
      }
    }
    for (int64_t t = 0; t < count; ++t) {
#define STORE(c) _tile_stored(c, out + (t0 + t) * 16, out_bytes)
      AMX_CASES(STORE)
#undef STORE
    }
  }
}
#undef AMX_CASES

// The keys' count as packed. For AMX one key tile more where rows of that many keys would
// lie a multiple of 4 KB apart: the tiles' rows (a B tile's 16 key rows, 8 rows of scores)
// would all fall into one set of the L1 cache and evict each other.
int64_t padded_keys(int64_t n, bool int8, bool amx) {
  const int64_t keys = round_up(n, int8 ? PV_BLOCK : KEY_TILE);
  return amx && (keys * 4) % 4096 == 0 ? keys + KEY_TILE : keys;
}

// Keys and values of every (batch, head), packed.
struct PackedKV {
  Packed p;
  bool int8;
  std::vector<uint16_t> key, value;  // BF16 keys and values (int8 false)
  std::vector<int8_t> key8, value8;  // INT8 keys and values (int8 true), their scales, sums and means
  std::vector<float> key_scales, value_scales, value_means;
  std::vector<int32_t> key_sums;

  PackedKV(const at::Tensor& k, const at::Tensor& v, bool int8_, bool amx)
      : p{round_up(k.size(3), 2), round_up(k.size(3), 4), padded_keys(k.size(2), int8_, amx), round_up(k.size(3), 8)},
        int8(int8_) {
    const int64_t heads = k.size(1), pairs = k.size(0) * heads, n = k.size(2), d = k.size(3);
    if (int8) {
      key8.resize(pairs * p.key8_size());
      key_scales.resize(pairs * p.keys);
      key_sums.resize(pairs * p.keys);
      value8.resize(pairs * p.value_size());
      value_scales.resize(pairs * p.cols);
      value_means.resize(pairs * p.cols);
    } else {
      key.resize(pairs * p.key_size());
      value.resize(pairs * p.value_size());
    }
    const auto* kp = k.const_data_ptr<at::BFloat16>();
    const auto* vp = v.const_data_ptr<at::BFloat16>();
    at::parallel_for(0, pairs, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bh = begin; bh < end; ++bh) {
        const at::BFloat16* kr = kp + (bh / heads) * k.stride(0) + (bh % heads) * k.stride(1);
        const at::BFloat16* vr = vp + (bh / heads) * v.stride(0) + (bh % heads) * v.stride(1);
        if (int8) {
          pack_key_int8(kr, k.stride(2), n, d, p, key8.data() + bh * p.key8_size(), key_scales.data() + bh * p.keys,
                        key_sums.data() + bh * p.keys);
          pack_value_int8(vr, v.stride(2), n, d, p, value8.data() + bh * p.value_size(),
                          value_scales.data() + bh * p.cols, value_means.data() + bh * p.cols);
        } else {
          pack_key(kr, k.stride(2), n, d, p, key.data() + bh * p.key_size());
          pack_value(vr, v.stride(2), n, d, p, value.data() + bh * p.value_size());
        }
      }
    });
  }
};

// One task: ROWS query rows of one (batch, head) against all its keys, written to out.
struct Job {
  const at::BFloat16* q;
  at::BFloat16* out;
  const PackedKV& kv;
  int64_t q_stride[3], out_stride[3];
  int64_t heads, blocks, nq, nk, d;
  float scale;
};

struct Scratch {
  Scratch(const Packed& p, int64_t rows)
      : qblock(rows * p.dim2), qblock8(rows * p.dim4), probs(rows * p.keys), probs8(rows * p.keys),
        block_scales(rows * (p.keys / PV_BLOCK)), scores(rows * p.keys), result(rows * p.cols) {}
  std::vector<uint16_t> qblock;
  std::vector<uint8_t> qblock8;
  std::vector<uint16_t> probs;
  std::vector<uint8_t> probs8;
  std::vector<float> block_scales;
  std::vector<float> scores, result;
  // each row's scores are scores * row_scale, their largest row_max
  float row_scale[AMX_ROWS], row_max[AMX_ROWS];
};

// The task's query rows, BF16, into s.qblock ([rows][dim2], zeros past them and past head_dim).
void copy_query(const Job& job, const at::BFloat16* q, int64_t rows, Scratch& s) {
  std::fill(s.qblock.begin(), s.qblock.end(), 0);
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(s.qblock.data() + r * job.kv.p.dim2, q + r * job.q_stride[2], job.d * 2);
}

// s.result's first rows, each times factor[r] where factor is given, into out as BF16.
AVX512_BF16 void store_rows(const Job& job, at::BFloat16* out, int64_t rows, const Scratch& s, const float* factor) {
  for (int64_t r = 0; r < rows; ++r) {
    uint16_t* dst = reinterpret_cast<uint16_t*>(out + r * job.out_stride[2]);
    const float* src = s.result.data() + r * job.kv.p.cols;
    const __m512 f = _mm512_set1_ps(factor ? factor[r] : 1.0f);
    for (int64_t c = 0; c < job.d; c += 16) {
      const __mmask16 m = first(job.d - c);
      __m512 x = _mm512_maskz_loadu_ps(m, src + c);
      if (factor) x = _mm512_mul_ps(x, f);
      _mm256_mask_storeu_epi16(dst + c, m, (__m256i)_mm512_cvtneps_pbh(x));
    }
  }
}

// The block's scores, from BF16 or (kv.int8) from u8 queries quantized here per row, and
// the scale that the softmax takes them at.
AVX512_BF16 void block_scores(const Job& job, int64_t bh, const at::BFloat16* q, int64_t rows, Scratch& s) {
  const PackedKV& kv = job.kv;
  const Packed& p = kv.p;
  const int64_t d = job.d;
  if (!kv.int8) {
    copy_query(job, q, rows, s);
    scores_kernel(s.qblock.data(), kv.key.data() + bh * p.key_size(), p, job.nk, s.scores.data(), s.row_max);
    std::fill(s.row_scale, s.row_scale + ROWS, job.scale);
    return;
  }
  std::fill(s.qblock8.begin(), s.qblock8.end(), 128);  // int8 zero; the key's padding is zero anyway
  std::fill(s.row_scale, s.row_scale + ROWS, 0.0f);
  for (int64_t r = 0; r < rows; ++r) {  // u8 = round(q / scale) + 128, scale = absmax / 127
    const uint16_t* qr = reinterpret_cast<const uint16_t*>(q + r * job.q_stride[2]);
    __m512 amax = _mm512_setzero_ps();
    for (int64_t c = 0; c < d; c += 16)
      amax = _mm512_max_ps(amax, _mm512_abs_ps(bf16_to_ps(first(d - c), qr + c)));
    const float top = _mm512_reduce_max_ps(amax);
    s.row_scale[r] = job.scale * top / 127.0f;  // the softmax scale times the query row's
    const __m512 inv = _mm512_set1_ps(top > 0.0f ? 127.0f / top : 0.0f);
    for (int64_t c = 0; c < d; c += 16) {
      const __mmask16 m = first(d - c);
      const __m512i x = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(bf16_to_ps(m, qr + c), inv)),
                                         _mm512_set1_epi32(128));
      _mm_mask_storeu_epi8(s.qblock8.data() + r * p.dim4 + c, m, _mm512_cvtusepi32_epi8(x));
    }
  }
  scores_kernel_int8(s.qblock8.data(), kv.key8.data() + bh * p.key8_size(),
                     kv.key_scales.data() + bh * p.keys, kv.key_sums.data() + bh * p.keys, p, job.nk, s.scores.data(),
                     s.row_max);
}

// kernel(tiles, half, c0) over cols columns (a multiple of 8): 48 at a time (three 512-bit
// registers), then the rest as 16-column registers and, where 8 are left, one 256-bit one.
// tiles and half are std::integral_constant, for the kernels' template arguments.
template <typename Kernel>
void by_column_tiles(int64_t cols, Kernel&& kernel) {
  using std::integral_constant;
  int64_t c0 = 0;
  for (; cols - c0 >= 48; c0 += 48) kernel(integral_constant<int, 3>{}, std::false_type{}, c0);
  switch (cols - c0) {
    case 8: kernel(integral_constant<int, 0>{}, std::true_type{}, c0); break;
    case 16: kernel(integral_constant<int, 1>{}, std::false_type{}, c0); break;
    case 24: kernel(integral_constant<int, 1>{}, std::true_type{}, c0); break;
    case 32: kernel(integral_constant<int, 2>{}, std::false_type{}, c0); break;
    case 40: kernel(integral_constant<int, 2>{}, std::true_type{}, c0); break;
  }
}

// The block's probabilities times the values into s.result: BF16, divided by the row sums.
AVX512_BF16 void values_bf16(const Job& job, int64_t bh, Scratch& s) {
  const Packed& p = job.kv.p;
  const uint16_t* value = job.kv.value.data() + bh * p.value_size();
  float sums[ROWS], inv[ROWS];
  softmax_rows(s.scores.data(), s.row_max, job.nk, p, s.row_scale, s.probs.data(), sums);
  for (int r = 0; r < ROWS; ++r) inv[r] = 1.0f / sums[r];
  const uint16_t* probs = s.probs.data();
  float* result = s.result.data();
  by_column_tiles(p.cols, [&](auto tiles, auto half, int64_t c0) {
    value_kernel<decltype(tiles)::value, decltype(half)::value>(probs, value, p, c0, inv, result);
  });
}

// The same with u8 probabilities and int8 values: s.result = (probs . value8) * value scale / row sum + value mean.
AVX512_BF16 void values_int8(const Job& job, int64_t bh, Scratch& s) {
  const PackedKV& kv = job.kv;
  const Packed& p = kv.p;
  const int8_t* value = kv.value8.data() + bh * p.value_size();
  float sums[ROWS];
  softmax_rows_u8(s.scores.data(), s.row_max, job.nk, p, s.row_scale, s.probs8.data(), s.block_scales.data(), sums);
  const uint8_t* probs = s.probs8.data();
  const float* bs = s.block_scales.data();
  float* result = s.result.data();
  by_column_tiles(p.cols, [&](auto tiles, auto half, int64_t c0) {
    value_kernel_int8<decltype(tiles)::value, decltype(half)::value>(probs, value, bs, p, c0, result);
  });
  const float* scales = kv.value_scales.data() + bh * p.cols;
  const float* means = kv.value_means.data() + bh * p.cols;
  for (int r = 0; r < ROWS; ++r) {
    const __m512 inv = _mm512_set1_ps(sums[r] > 0.0f ? 1.0f / sums[r] : 0.0f);
    for (int64_t c = 0; c < p.cols; c += 16) {
      const __mmask16 m = first(p.cols - c);
      float* x = result + r * p.cols + c;
      _mm512_mask_storeu_ps(x, m, _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x),
                                                  _mm512_mul_ps(_mm512_maskz_loadu_ps(m, scales + c), inv),
                                                  _mm512_maskz_loadu_ps(m, means + c)));
    }
  }
}

// attend in AMX tiles: AMX_ROWS query rows, both products in BF16 tiles, the softmax as
// the AVX-512 kernel computes it, ROWS rows at a time.
AMX_BF16 void attend_amx(const Job& job, int64_t task, Scratch& s) {
  const Packed& p = job.kv.p;
  const int64_t bh = task / job.blocks, row0 = (task % job.blocks) * AMX_ROWS;
  const int64_t b = bh / job.heads, h = bh % job.heads, rows = std::min(AMX_ROWS, job.nq - row0);
  copy_query(job, job.q + b * job.q_stride[0] + h * job.q_stride[1] + row0 * job.q_stride[2], rows, s);
  (p.dim2 <= 64 ? scores_kernel_amx_held : scores_kernel_amx_wide)(
      s.qblock.data(), job.kv.key.data() + bh * p.key_size(), p, job.nk, s.scores.data(), s.row_max);
  std::fill(s.row_scale, s.row_scale + AMX_ROWS, job.scale);
  float sums[AMX_ROWS];
  for (int64_t r = 0; r < AMX_ROWS; r += ROWS)
    softmax_rows(s.scores.data() + r * p.keys, s.row_max + r, job.nk, p, s.row_scale + r, s.probs.data() + r * p.keys,
                 sums + r);
  value_kernel_amx(s.probs.data(), job.kv.value.data() + bh * p.value_size(), p, s.result.data());
  float inv[AMX_ROWS];
  for (int r = 0; r < AMX_ROWS; ++r) inv[r] = 1.0f / sums[r];
  store_rows(job, job.out + b * job.out_stride[0] + h * job.out_stride[1] + row0 * job.out_stride[2], rows, s, inv);
}

AVX512_BF16 void attend(const Job& job, int64_t task, Scratch& s) {
  const int64_t bh = task / job.blocks, row0 = (task % job.blocks) * ROWS;
  const int64_t b = bh / job.heads, h = bh % job.heads, rows = std::min(ROWS, job.nq - row0);
  block_scores(job, bh, job.q + b * job.q_stride[0] + h * job.q_stride[1] + row0 * job.q_stride[2], rows, s);
  if (job.kv.int8)
    values_int8(job, bh, s);
  else
    values_bf16(job, bh, s);
  store_rows(job, job.out + b * job.out_stride[0] + h * job.out_stride[1] + row0 * job.out_stride[2], rows, s,
             nullptr);
}

AMX_BF16 void release_tiles() { _tile_release(); }

// int8: both products in INT8 (AVX-512 VNNI); amx (never with int8): both in BF16 in AMX
// tiles, AMX_ROWS query rows a task; else AVX-512 BF16, ROWS a task.
void fused_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale, bool int8, bool amx,
                     at::Tensor& out) {
  const PackedKV kv(k, v, int8, amx);
  const int64_t rows = amx ? AMX_ROWS : ROWS, blocks = (q.size(2) + rows - 1) / rows;
  const Job job{q.const_data_ptr<at::BFloat16>(), out.mutable_data_ptr<at::BFloat16>(), kv,
                {q.stride(0), q.stride(1), q.stride(2)}, {out.stride(0), out.stride(1), out.stride(2)},
                q.size(1), blocks, q.size(2), k.size(2), q.size(3), static_cast<float>(scale)};
  at::parallel_for(0, q.size(0) * q.size(1) * blocks, 1, [&](int64_t begin, int64_t end) {
    Scratch scratch(kv.p, rows);
    for (int64_t task = begin; task < end; ++task) (amx ? attend_amx : attend)(job, task, scratch);
    if (amx) release_tiles();  // this thread's tile state, back to the OS
  });
}

// AMX, and this process's permission to use its tile registers, which Linux grants once asked
// (arch_prctl ARCH_REQ_XCOMP_PERM for the tile data state, feature 18).
bool has_amx() {
  constexpr int REQUEST_PERMISSION = 0x1023, TILE_DATA = 18;
  static const bool has = __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16") &&
                          syscall(SYS_arch_prctl, REQUEST_PERMISSION, TILE_DATA) == 0;
  return has;
}

// What the ops run for BF16 inputs: the AVX-512 kernels (fused), the same with both products
// in AMX tiles (amx), or ATen's SDPA (aten); auto picks amx with AMX, fused with AVX-512 BF16,
// else aten, and amx or fused stand for the fastest kernel the CPU can run. One choice per process.
enum Backend : int { AUTO, FUSED, AMX, ATEN };
constexpr const char* BACKENDS[] = {"auto", "fused", "amx", "aten"};
std::atomic<int> chosen{AUTO};

Backend effective() {
  const int choice = chosen.load();
  if (choice == ATEN || !has_avx512_bf16()) return ATEN;
  if (choice != FUSED && has_amx()) return AMX;
  return FUSED;
}

std::string attention_backend() { return BACKENDS[effective()]; }

// Sets the choice and returns the one it replaces.
std::string set_attention_backend(std::string backend) {
  const auto found = std::find(std::begin(BACKENDS), std::end(BACKENDS), backend);
  TORCH_CHECK(found != std::end(BACKENDS), "attention backend must be auto, fused, amx or aten, not ", backend);
  return BACKENDS[chosen.exchange(static_cast<int>(found - std::begin(BACKENDS)))];
}

bool kernel_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  return q.device().is_cpu() && q.scalar_type() == at::kBFloat16 && k.scalar_type() == at::kBFloat16 &&
         v.scalar_type() == at::kBFloat16 && q.dim() == 4 && k.dim() == 4 && v.dim() == 4 &&
         q.size(0) == k.size(0) && q.size(1) == k.size(1) && q.size(3) == k.size(3) && k.sizes() == v.sizes() &&
         k.size(2) > 0;
}

// [batch, heads, tokens, head_dim] viewing [batch, tokens, heads, head_dim]: what the ops return.
at::Tensor output_for(const at::Tensor& q, const at::Tensor& v) {
  return at::empty({q.size(0), q.size(2), q.size(1), v.size(3)}, q.options()).transpose(1, 2);
}

// Where the AMX kernel beats ATen's flash attention, which multiplies in AMX tiles too
// (bench/attention.py on a Xeon with AMX): few keys (cross-attention's 77) at any head size,
// and up to 4096 keys with heads of up to 64 (scores_kernel_amx_held). With
// more keys its rows of scores outgrow the L2 cache, where flash attention's blocks do not.
bool amx_wins(int64_t keys, int64_t head_dim) { return keys <= 128 || (keys <= 4096 && head_dim <= 64); }

at::Tensor run(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale, bool int8) {
  const Backend backend = effective();
  if (backend == ATEN || !kernel_inputs(q, k, v) || (backend == AMX && !amx_wins(k.size(2), k.size(3)))) {
    at::Tensor sdpa = at::scaled_dot_product_attention(q, k, v, {}, 0.0, false, scale);
    // ATen's CPU flash attention writes that layout itself; other paths are copied into it.
    return sdpa.transpose(1, 2).is_contiguous() ? sdpa : output_for(q, v).copy_(sdpa);
  }
  at::Tensor out = output_for(q, v);
  // The kernels read rows with a unit stride along head_dim; other layouts are copied.
  auto rows = [](const at::Tensor& t) { return t.stride(3) == 1 ? t : t.contiguous(); };
  fused_attention(rows(q), rows(k), rows(v), scale, int8 && backend == FUSED, backend == AMX, out);
  return out;
}

at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
  return run(q, k, v, scale, false);
}

// Fewer keys than this, and quantizing costs more than the INT8 products save
// (bench/attention.py): both are computed in BF16.
constexpr int64_t INT8_MIN_KEYS = 512;

at::Tensor int8_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
  return run(q, k, v, scale, k.size(2) >= INT8_MIN_KEYS);
}

bool accelerated() { return has_avx512_bf16(); }

}  // namespace

TORCH_LIBRARY(mixdiff, m) {
  m.def("attention(Tensor q, Tensor k, Tensor v, float scale) -> Tensor");
  m.def("int8_attention(Tensor q, Tensor k, Tensor v, float scale) -> Tensor");
  m.def("accelerated() -> bool", &accelerated);
  m.def("attention_backend() -> str", &attention_backend);
  m.def("set_attention_backend(str backend) -> str", &set_attention_backend);
}

TORCH_LIBRARY_IMPL(mixdiff, CPU, m) {
  m.impl("attention", &attention);
  m.impl("int8_attention", &int8_attention);
}

}  // namespace mixdiff
