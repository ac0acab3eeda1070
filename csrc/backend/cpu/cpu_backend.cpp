#include "backend/cpu/cpu_backend.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <new>

#include "backend/cpu/vec.h"
#include "common/error.h"
#include "common/fp16.h"
#include "quant/dequantize.h"

namespace mn {

CpuBackend::CpuBackend(int n_threads, Isa isa, ActivationMode activations)
    : pool_(n_threads > 0 ? n_threads : physical_core_count()),
      isa_(isa),
      activations_(activations),
      scratch_(pool_.size()) {}

CpuBackend::~CpuBackend() = default;

Buffer CpuBackend::alloc(int64_t n, DType dtype) {
    Buffer b;
    b.n = n;
    b.dtype = dtype;
    const size_t bytes = size_t(n) * dtype_size(dtype);
    // 64-byte alignment keeps SIMD loads within cache lines.
    b.data = ::operator new(std::max<size_t>(bytes, 64), std::align_val_t(64), std::nothrow);
    if (!b.data) throw Error("cpu backend: out of memory allocating " + std::to_string(bytes) + " bytes");
    std::memset(b.data, 0, bytes);
    return b;
}

void CpuBackend::release(Buffer& b) {
    if (b.data) ::operator delete(b.data, std::align_val_t(64));
    b = Buffer{};
}

void CpuBackend::read(const Buffer& src, int64_t offset, int64_t n, float* dst) {
    std::memcpy(dst, src.f32() + offset, size_t(n) * sizeof(float));
}

float* CpuBackend::thread_scratch(int thread, size_t n) {
    auto& s = scratch_[thread];
    if (s.size() < n) s.resize(n);
    return s.data();
}

uint8_t* CpuBackend::activation_scratch(size_t bytes) {
    if (quantized_activations_.size() < bytes) quantized_activations_.resize(bytes);
    return quantized_activations_.data();
}

void CpuBackend::embed(const WeightTensor& table, const int32_t* ids, int rows, Buffer& out) {
    const int64_t width = table.ne0;
    const auto* base = static_cast<const uint8_t*>(table.device);
    pool_.parallel_for(rows, 1, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r)
            dequantize_row(table.type, base + size_t(ids[r]) * table.row_bytes, out.f32() + r * width, width, isa_);
    });
}

void CpuBackend::rms_norm(const Buffer& x, const WeightTensor& weight, float eps, int rows, int width, Buffer& out) {
    const float* w = static_cast<const float*>(weight.device);
    pool_.parallel_for(rows, 8, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
            const float* xr = x.f32() + r * width;
            float* o = out.f32() + r * width;
            // Sum of squares in double: one row is at most a few thousand values,
            // and this keeps extreme activations from losing precision.
            double ss = 0.0;
            for (int i = 0; i < width; ++i) ss += double(xr[i]) * xr[i];
            const float inv = float(1.0 / std::sqrt(ss / width + eps));
            for (int i = 0; i < width; ++i) o[i] = xr[i] * inv * w[i];
        }
    });
}

void CpuBackend::rope(Buffer& q, Buffer& k, int rows, int pos0, const AttentionShape& s, float base, RopeStyle style) {
    const int hd = s.head_dim, half = hd / 2;
    const int q_width = s.n_heads * hd, k_width = s.n_kv_heads * hd;
    // Frequencies once per call, rounded to fp32 as the reference implementations
    // hold them; head_dim <= 1024 is checked when the model loads.
    float inv_freq[512];
    for (int i = 0; i < half; ++i) inv_freq[i] = float(1.0 / std::pow(double(base), double(2 * i) / hd));
    pool_.parallel_for(rows, 1, [&](int64_t b, int64_t e) {
        float cos_t[512], sin_t[512];
        for (int64_t r = b; r < e; ++r) {
            const float pos = float(pos0 + r);
            for (int i = 0; i < half; ++i) {
                const float angle = pos * inv_freq[i];
                cos_t[i] = std::cos(angle);
                sin_t[i] = std::sin(angle);
            }
            auto rotate = [&](float* head) {
                for (int i = 0; i < half; ++i) {
                    const int a = style == RopeStyle::NeoX ? i : 2 * i;
                    const int c = style == RopeStyle::NeoX ? i + half : 2 * i + 1;
                    const float x0 = head[a], x1 = head[c];
                    head[a] = x0 * cos_t[i] - x1 * sin_t[i];
                    head[c] = x0 * sin_t[i] + x1 * cos_t[i];
                }
            };
            for (int h = 0; h < s.n_heads; ++h) rotate(q.f32() + r * q_width + h * hd);
            for (int h = 0; h < s.n_kv_heads; ++h) rotate(k.f32() + r * k_width + h * hd);
        }
    });
}

namespace {

template <typename T>
void store_kv_rows(const Buffer& src, Buffer& cache, int n_ctx, int rows, int pos0, const AttentionShape& s) {
    const int hd = s.head_dim, width = s.n_kv_heads * hd;
    T* dst = static_cast<T*>(cache.data);
    for (int r = 0; r < rows; ++r)
        for (int h = 0; h < s.n_kv_heads; ++h)
            vec::convert(dst + (int64_t(h) * n_ctx + pos0 + r) * hd, src.f32() + int64_t(r) * width + h * hd, hd);
}

// The query heads of one KV head (grouped-query attention) for one query row,
// against keys/values [0, n_keys): scores and softmax in fp32. Each key and
// value row is read (and converted from f16) once for the whole group.
// q and out hold the group's heads one after another (hd floats each);
// scores has room for group * n_keys floats, row hd floats.
template <typename T>
void attend_group(const float* q, int group, const T* keys, const T* values, int n_keys, int hd, float scale,
                  float* scores, float* row, float* out) {
    for (int j = 0; j < n_keys; ++j) {
        const float* k = vec::as_float(keys + int64_t(j) * hd, row, hd);
        for (int h = 0; h < group; ++h) scores[h * n_keys + j] = vec::dot(q + h * hd, k, hd) * scale;
    }
    float inv_sum[64];  // group <= 64 is checked when the model loads (n_heads <= 64 * n_kv_heads)
    for (int h = 0; h < group; ++h) {
        float* sc = scores + h * n_keys;
        float max_score = -INFINITY;
        for (int j = 0; j < n_keys; ++j) max_score = std::max(max_score, sc[j]);
        inv_sum[h] = 1.0f / vec::exp_sum(sc, max_score, n_keys);
    }
    std::fill(out, out + int64_t(group) * hd, 0.0f);
    for (int j = 0; j < n_keys; ++j) {
        const float* v = vec::as_float(values + int64_t(j) * hd, row, hd);
        for (int h = 0; h < group; ++h) vec::axpy(out + h * hd, scores[h * n_keys + j], v, hd);
    }
    for (int h = 0; h < group; ++h) vec::scale(out + h * hd, inv_sum[h], hd);
}

#if MN_VEC_AVX2
// A block of query rows against one KV head, for head_dim a multiple of 64.
// The block's keys are converted once into a transposed float copy kt[d][j],
// so a query's scores for 64 keys are 8 vector accumulators fed by one FMA per
// (8 keys, dimension) with no horizontal sums; values are converted once into
// vf[j][d] and summed into 8 vector accumulators per 64 output dimensions.
// Rows i < count of the block sit at positions first + i and see keys
// [0, first + i]. kt needs hd * round_up(first + count, 64) floats, vf
// (first + count) * hd, scores round_up(first + count, 64).
template <typename T>
void attend_rows(const float* q, size_t q_stride, int count, int first, int group, const T* keys, const T* values,
                 int hd, float scale, float* kt, float* vf, float* scores, float* out, size_t out_stride) {
    const int n = first + count, n64 = (n + 63) / 64 * 64;
    for (int j = 0; j < n; ++j) {
        const float* kj = vec::as_float(keys + int64_t(j) * hd, vf + int64_t(j) * hd, hd);  // vf as scratch
        for (int d = 0; d < hd; ++d) kt[int64_t(d) * n64 + j] = kj[d];
    }
    for (int d = 0; d < hd; ++d) std::fill(kt + int64_t(d) * n64 + n, kt + int64_t(d) * n64 + n64, 0.0f);
    for (int j = 0; j < n; ++j) {
        const float* vj = vec::as_float(values + int64_t(j) * hd, vf + int64_t(j) * hd, hd);
        if (vj != vf + int64_t(j) * hd) std::copy(vj, vj + hd, vf + int64_t(j) * hd);
    }
    for (int i = 0; i < count; ++i) {
        const int n_keys = first + i + 1;
        for (int h = 0; h < group; ++h) {
            const float* qh = q + size_t(i) * q_stride + int64_t(h) * hd;
            for (int j0 = 0; j0 < n_keys; j0 += 64) {
                __m256 acc[8];
                for (int b = 0; b < 8; ++b) acc[b] = _mm256_setzero_ps();
                const float* kb = kt + j0;
                for (int d = 0; d < hd; ++d, kb += n64) {
                    const __m256 qd = _mm256_set1_ps(qh[d]);
                    for (int b = 0; b < 8; ++b) acc[b] = _mm256_fmadd_ps(qd, vec::load8(kb + 8 * b), acc[b]);
                }
                for (int b = 0; b < 8; ++b) vec::store8(scores + j0 + 8 * b, acc[b]);
            }
            float max_score = -INFINITY;
            for (int j = 0; j < n_keys; ++j) max_score = std::max(max_score, scores[j] *= scale);
            const float inv_sum = 1.0f / vec::exp_sum(scores, max_score, n_keys);
            float* oh = out + size_t(i) * out_stride + int64_t(h) * hd;
            for (int d0 = 0; d0 < hd; d0 += 64) {
                __m256 acc[8];
                for (int b = 0; b < 8; ++b) acc[b] = _mm256_setzero_ps();
                const float* vb = vf + d0;
                for (int j = 0; j < n_keys; ++j, vb += hd) {
                    const __m256 p = _mm256_set1_ps(scores[j]);
                    for (int b = 0; b < 8; ++b) acc[b] = _mm256_fmadd_ps(p, vec::load8(vb + 8 * b), acc[b]);
                }
                const __m256 inv = _mm256_set1_ps(inv_sum);
                for (int b = 0; b < 8; ++b) vec::store8(oh + d0 + 8 * b, _mm256_mul_ps(acc[b], inv));
            }
        }
    }
}
#endif

}  // namespace

void CpuBackend::attention(const Buffer& q, const Buffer& k, const Buffer& v, KVLayer& cache, int n_ctx, int rows,
                           int pos0, const AttentionShape& s, Buffer& out) {
    const bool f16 = cache.k.dtype == DType::F16;
    if (f16) {
        store_kv_rows<uint16_t>(k, cache.k, n_ctx, rows, pos0, s);
        store_kv_rows<uint16_t>(v, cache.v, n_ctx, rows, pos0, s);
    } else {
        store_kv_rows<float>(k, cache.k, n_ctx, rows, pos0, s);
        store_kv_rows<float>(v, cache.v, n_ctx, rows, pos0, s);
    }
    const int hd = s.head_dim, group = s.n_heads / s.n_kv_heads, width = s.n_heads * hd;
    const float scale = 1.0f / std::sqrt(float(hd));
#if MN_VEC_AVX2
    if (hd % 64 == 0) {
        // Tasks of (block of query rows, KV head); blocks are handed out from
        // the last (longest) rows first so the threads finish together.
        constexpr int kRowBlock = 8;
        const int n_blocks = (rows + kRowBlock - 1) / kRowBlock;
        const int64_t n_tasks = int64_t(n_blocks) * s.n_kv_heads;
        const int n_max = pos0 + rows, n64 = (n_max + 63) / 64 * 64;
        std::atomic<int64_t> next{0};
        pool_.run([&](int thread, int) {
            float* kt = thread_scratch(thread, size_t(hd) * n64 * 2 + n64);
            float* vf = kt + size_t(hd) * n64;
            float* scores = vf + size_t(hd) * n64;
            for (int64_t t; (t = next.fetch_add(1, std::memory_order_relaxed)) < n_tasks;) {
                const int blk = n_blocks - 1 - int(t / s.n_kv_heads), kvh = int(t % s.n_kv_heads);
                const int r0 = blk * kRowBlock, count = std::min(kRowBlock, rows - r0);
                const float* qb = q.f32() + int64_t(r0) * width + int64_t(kvh) * group * hd;
                float* ob = out.f32() + int64_t(r0) * width + int64_t(kvh) * group * hd;
                const int64_t head_off = int64_t(kvh) * n_ctx * hd;
                if (f16)
                    attend_rows(qb, size_t(width), count, pos0 + r0, group,
                                static_cast<const uint16_t*>(cache.k.data) + head_off,
                                static_cast<const uint16_t*>(cache.v.data) + head_off, hd, scale, kt, vf, scores, ob,
                                size_t(width));
                else
                    attend_rows(qb, size_t(width), count, pos0 + r0, group, cache.k.f32() + head_off,
                                cache.v.f32() + head_off, hd, scale, kt, vf, scores, ob, size_t(width));
            }
        });
        return;
    }
#endif
    const int64_t n_tasks = int64_t(rows) * s.n_kv_heads;
    pool_.run([&](int thread, int n_threads) {
        float* scores = thread_scratch(thread, size_t(group) * n_ctx + hd);
        float* row = scores + size_t(group) * n_ctx;
        // Static interleaved split: later rows attend over more keys, so
        // interleaving balances the work without an atomic per task.
        for (int64_t t = thread; t < n_tasks; t += n_threads) {
            const int r = int(t / s.n_kv_heads), kvh = int(t % s.n_kv_heads);
            const int n_keys = pos0 + r + 1;
            const float* qh = q.f32() + int64_t(r) * width + int64_t(kvh) * group * hd;
            float* oh = out.f32() + int64_t(r) * width + int64_t(kvh) * group * hd;
            const int64_t head_off = int64_t(kvh) * n_ctx * hd;
            if (f16)
                attend_group(qh, group, static_cast<const uint16_t*>(cache.k.data) + head_off,
                             static_cast<const uint16_t*>(cache.v.data) + head_off, n_keys, hd, scale, scores, row, oh);
            else
                attend_group(qh, group, cache.k.f32() + head_off, cache.v.f32() + head_off, n_keys, hd, scale, scores,
                             row, oh);
        }
    });
}

void CpuBackend::swiglu(const Buffer& gate, const Buffer& up, int64_t n, Buffer& out) {
    pool_.parallel_for(n, 4096, [&](int64_t b, int64_t e) {
        const float* g = gate.f32();
        const float* u = up.f32();
        float* o = out.f32();
        vec::silu_mul(o + b, g + b, u + b, e - b);
    });
}

void CpuBackend::add(Buffer& x, const Buffer& y, int64_t n) {
    float* a = x.f32();
    const float* b = y.f32();
    for (int64_t i = 0; i < n; ++i) a[i] += b[i];
}

void CpuBackend::copy_rows(const Buffer& src, int src_row, int rows, int width, Buffer& dst) {
    std::memcpy(dst.f32(), src.f32() + int64_t(src_row) * width, size_t(rows) * width * sizeof(float));
}

void CpuBackend::top_k(const Buffer& src, int64_t offset, int64_t n, int k, int32_t* ids, float* vals,
                       float* log_sum_exp) {
    if (k < 1 || k > n) throw InvalidArgument("top_k must be in [1, " + std::to_string(n) + "], got " + std::to_string(k));
    if (k > 64) {  // large k: the generic sort
        Backend::top_k(src, offset, n, k, ids, vals, log_sum_exp);
        return;
    }
    // One pass keeping the k best in a small sorted list: a later index only
    // enters past equal values, so ties keep the lower index first; NaN never enters.
    const float* x = src.f32() + offset;
    int count = 0;
    for (int64_t i = 0; i < n; ++i) {
        const float v = x[i];
        if (!(v == v) || (count == k && !(v > vals[k - 1]))) continue;
        int pos = count < k ? count++ : k - 1;
        while (pos > 0 && vals[pos - 1] < v) {
            vals[pos] = vals[pos - 1];
            ids[pos] = ids[pos - 1];
            --pos;
        }
        vals[pos] = v;
        ids[pos] = int32_t(i);
    }
    if (count < k) {  // fewer than k numbers (NaNs in the row): the generic path orders those too
        Backend::top_k(src, offset, n, k, ids, vals, log_sum_exp);
        return;
    }
    // vals[0] is the row's maximum (NaNs never entered the list).
    if (log_sum_exp) *log_sum_exp = vals[0] + float(std::log(vec::exp_sum_of(x, vals[0], n)));
}

}  // namespace mn
