// Small vector helpers for the CPU backend's attention and elementwise ops.
// They compile to AVX2/F16C or NEON when the translation unit targets them
// (the default native build) and to portable scalar code otherwise; the
// weight-matrix kernels, which dominate run time, are dispatched at run time
// instead (quant/dot.h).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "common/fp16.h"

#if defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
#include <immintrin.h>
#define MN_VEC_AVX2 1
#endif

namespace mn::vec {

#if MN_VEC_AVX2
inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline void store8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
inline void store8(uint16_t* p, __m256 v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}
#endif

inline float to_float(float x) { return x; }
inline float to_float(uint16_t x) { return fp16_to_float(x); }
inline void from_float(float* p, float x) { *p = x; }
inline void from_float(uint16_t* p, float x) { *p = float_to_fp16(x); }

// sum_i a[i] * b[i], accumulated in fp32.
template <typename T>
inline float dot(const float* a, const T* b, int n) {
    int i = 0;
    float sum = 0.0f;
#if MN_VEC_AVX2
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(load8(a + i), load8(b + i), acc0);
        acc1 = _mm256_fmadd_ps(load8(a + i + 8), load8(b + i + 8), acc1);
    }
    for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(load8(a + i), load8(b + i), acc0);
    sum = hsum(_mm256_add_ps(acc0, acc1));
#endif
    for (; i < n; ++i) sum += a[i] * to_float(b[i]);
    return sum;
}

// y[i] += a * x[i]
template <typename T>
inline void axpy(float* y, float a, const T* x, int n) {
    int i = 0;
#if MN_VEC_AVX2
    const __m256 va = _mm256_set1_ps(a);
    for (; i + 8 <= n; i += 8) store8(y + i, _mm256_fmadd_ps(va, load8(x + i), load8(y + i)));
#endif
    for (; i < n; ++i) y[i] += a * to_float(x[i]);
}

// y[i] *= a
inline void scale(float* y, float a, int n) {
    for (int i = 0; i < n; ++i) y[i] *= a;
}

// The row as floats: itself if it is float, else converted into buf.
inline const float* as_float(const float* x, float*, int) { return x; }
inline const float* as_float(const uint16_t* x, float* buf, int n) {
    int i = 0;
#if MN_VEC_AVX2
    for (; i + 8 <= n; i += 8) store8(buf + i, load8(x + i));
#endif
    for (; i < n; ++i) buf[i] = fp16_to_float(x[i]);
    return buf;
}

#if MN_VEC_AVX2
// e^x for 8 floats, within ~2 ulp for x in [-87, 88] (clamped outside): x = n ln2 + f,
// |f| <= ln2 / 2, e^f by a degree-6 polynomial (Taylor), 2^n through the exponent bits.
inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    // ln2 split in two so n * ln2_hi is exact (Cody-Waite).
    __m256 f = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    f = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), f);
    __m256 p = _mm256_set1_ps(1.0f / 720);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}
#endif

// x[i] = e^(x[i] - shift); returns the sum of the new values (softmax).
inline float exp_sum(float* x, float shift, int n) {
    int i = 0;
    float sum = 0.0f;
#if MN_VEC_AVX2
    __m256 acc = _mm256_setzero_ps();
    const __m256 s = _mm256_set1_ps(shift);
    for (; i + 8 <= n; i += 8) {
        const __m256 e = exp8(_mm256_sub_ps(load8(x + i), s));
        store8(x + i, e);
        acc = _mm256_add_ps(acc, e);
    }
    sum = hsum(acc);
#endif
    for (; i < n; ++i) {
        x[i] = std::exp(x[i] - shift);
        sum += x[i];
    }
    return sum;
}

// sum of e^(x[i] - shift), x left as it is; accumulated in float per lane, then in double.
inline double exp_sum_of(const float* x, float shift, int64_t n) {
    int64_t i = 0;
    double sum = 0.0;
#if MN_VEC_AVX2
    const __m256 s = _mm256_set1_ps(shift);
    while (i + 8 <= n) {
        __m256 acc = _mm256_setzero_ps();
        const int64_t end = std::min<int64_t>(n, i + 4096) / 8 * 8;  // bounded float partial sums
        for (; i < end; i += 8) acc = _mm256_add_ps(acc, exp8(_mm256_sub_ps(load8(x + i), s)));
        sum += hsum(acc);
    }
#endif
    for (; i < n; ++i) sum += std::exp(double(x[i]) - shift);
    return sum;
}

// out[i] = silu(g[i]) * u[i] = g[i] / (1 + e^-g[i]) * u[i]   (SwiGLU)
inline void silu_mul(float* out, const float* g, const float* u, int64_t n) {
    int64_t i = 0;
#if MN_VEC_AVX2
    const __m256 one = _mm256_set1_ps(1.0f);
    for (; i + 8 <= n; i += 8) {
        const __m256 gv = load8(g + i);
        const __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv));
        store8(out + i, _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(one, e)), load8(u + i)));
    }
#endif
    for (; i < n; ++i) out[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

// dst[i] = src[i] converted to T
template <typename T>
inline void convert(T* dst, const float* src, int n) {
    int i = 0;
#if MN_VEC_AVX2
    for (; i + 8 <= n; i += 8) store8(dst + i, load8(src + i));
#endif
    for (; i < n; ++i) from_float(dst + i, src[i]);
}

}  // namespace mn::vec
