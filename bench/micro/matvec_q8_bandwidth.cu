// Build and run on the GPU machine (from the repository root):
//   nvcc -arch=sm_90 -O3 -std=c++17 -I csrc -o /tmp/mvbw bench/micro/matvec_q8_bandwidth.cu csrc/quant/formats.cpp \
//     && /tmp/mvbw [NAME]
// (NAME: only the products whose name contains it.)
// Microbenchmark: the decode matvecs of a Qwen2.5-7B-geometry Q4_K_M model (and the 0.5B's
// output head), each alone, as the engine launches them (matvec_q8.cu, compiled into this file),
// in a CUDA graph of back-to-back programmatic dependent launches over enough copies of the
// weights that L2 (50 MB) never holds them. Prints microseconds per product, GB/s of weight bytes,
// and the fraction of a device-to-device copy's bandwidth (bytes read + written; a graph memcpy
// node, which reads lower than bench_cuda.py's PyTorch copy) and of a plain read of the same
// bytes (16-byte loads, 8 blocks of 256 threads per SM: the ceiling that matters here).
// Variants: the input quantized before (the row-pair kernel alone), a quantize launch before each
// product (as decode runs the products larger than 6.5 MiB), 1/2/4 warps per row pair (5/10 for long
// rows: a block of that many warps on one row pair), and the input rms-normalized and quantized in
// every block of the matvec, with the grid capped or not.
// Random weight bytes: the kernels' time does not depend on the values. The figures are for one
// product repeated; in a decode step a product follows other kernels, and a gain here need not
// survive there (bench/RESULTS.md, session 7).
#include "backend/cuda/matvec_q8.cu"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

using namespace mn;
using namespace mn::cuda;

namespace mvbw {  // named: nvcc clashes two anonymous namespaces of one unit

__global__ void fill_random(uint32_t* p, size_t n, uint32_t seed) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
        uint64_t z = (i + 1) * 0x9E3779B97F4A7C15ull + seed;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        // f16 fields stay finite: clear the top exponent bit of every half-word.
        p[i] = uint32_t(z ^ (z >> 31)) & 0xBFFFBFFFu;
    }
}

// The read ceiling: every byte once, 16 bytes per load, four loads in flight per thread.
__global__ void read_all(const uint4* p, size_t n16, unsigned* sink) {
    pdl_launch_dependents();
    pdl_wait();
    uint32_t acc = 0;
    const size_t stride = size_t(gridDim.x) * blockDim.x;
    size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
    for (; i + 3 * stride < n16; i += 4 * stride) {
        const uint4 a = __ldg(p + i), b = __ldg(p + i + stride), c = __ldg(p + i + 2 * stride),
                    d = __ldg(p + i + 3 * stride);
        acc ^= a.x ^ a.w ^ b.y ^ b.z ^ c.x ^ c.y ^ d.z ^ d.w;
    }
    for (; i < n16; i += stride) acc ^= __ldg(p + i).x;
    if (acc == 0x12345678u) sink[0] = acc;
}

size_t row_bytes_of(TensorType t, int K) { return size_t(row_bytes(*type_traits(t), K)); }

struct Product {
    const char* name;
    int K;
    std::vector<std::pair<TensorType, int>> mats;  // (type, N)
    bool swiglu;
};

float time_graph(cudaStream_t s, const std::function<void()>& body, int reps) {
    cudaGraph_t g;
    cudaGraphExec_t ge;
    MN_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    body();
    MN_CUDA_CHECK(cudaStreamEndCapture(s, &g));
    MN_CUDA_CHECK(cudaGraphInstantiate(&ge, g, 0));
    MN_CUDA_CHECK(cudaGraphLaunch(ge, s));
    MN_CUDA_CHECK(cudaStreamSynchronize(s));
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    float best = 1e30f;
    for (int r = 0; r < 5; ++r) {
        cudaEventRecord(a, s);
        MN_CUDA_CHECK(cudaGraphLaunch(ge, s));
        cudaEventRecord(b, s);
        MN_CUDA_CHECK(cudaEventSynchronize(b));
        float ms;
        cudaEventElapsedTime(&ms, a, b);
        best = std::min(best, ms * 1e3f / reps);
    }
    cudaGraphExecDestroy(ge);
    cudaGraphDestroy(g);
    return best;
}

}  // namespace mvbw
using namespace mvbw;

int main(int argc, char** argv) {
    int sms = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
    prepare_matvec_q8();
    cudaStream_t s;
    cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    const char* only = argc > 1 ? argv[1] : nullptr;

    // Copy bandwidth, bytes read + written (through a graph memcpy node: lower than bench_cuda.py's figure).
    const size_t copy_bytes = size_t(1) << 30;
    void *ca, *cb;
    MN_CUDA_CHECK(cudaMalloc(&ca, copy_bytes));
    MN_CUDA_CHECK(cudaMalloc(&cb, copy_bytes));
    const float copy_us = time_graph(s, [&] { cudaMemcpyAsync(cb, ca, copy_bytes, cudaMemcpyDeviceToDevice, s); }, 1);
    const double copy_gbs = 2.0 * copy_bytes / (copy_us * 1e3);
    cudaFree(ca);
    cudaFree(cb);
    printf("device-to-device copy: %.0f GB/s; %d SMs\n", copy_gbs, sms);

    const int D = 3584, F = 18944, KV = 512, V = 152064;
    const std::vector<Product> products = {
        {"q+k+v (Q4_K)", D, {{TensorType::Q4_K, D}, {TensorType::Q4_K, KV}, {TensorType::Q4_K, KV}}, false},
        {"o (Q4_K)", D, {{TensorType::Q4_K, D}}, false},
        {"gate+up+SwiGLU (Q4_K)", D, {{TensorType::Q4_K, F}, {TensorType::Q4_K, F}}, true},
        {"down (Q4_K)", F, {{TensorType::Q4_K, D}}, false},
        {"down (Q6_K)", F, {{TensorType::Q6_K, D}}, false},
        {"output (Q6_K)", D, {{TensorType::Q6_K, V}}, false},
        // The 0.5B's largest: its output (Q8_0; the rest of its products take the staged kernel).
        {"0.5B output (Q8_0)", 896, {{TensorType::Q8_0, 151936}}, false},
    };
    float* x;
    MN_CUDA_CHECK(cudaMalloc(&x, sizeof(float) * F));
    fill_random<<<64, 256>>>(reinterpret_cast<uint32_t*>(x), F, 7);
    float* nw;  // rms_norm weights
    MN_CUDA_CHECK(cudaMalloc(&nw, sizeof(float) * F));
    fill_random<<<64, 256>>>(reinterpret_cast<uint32_t*>(nw), F, 9);
    float* out;
    MN_CUDA_CHECK(cudaMalloc(&out, sizeof(float) * size_t(V) * 2));
    float* swo;
    MN_CUDA_CHECK(cudaMalloc(&swo, sizeof(float) * F));
    Q8Input q8;
    MN_CUDA_CHECK(cudaMalloc(&q8.qs, F));
    MN_CUDA_CHECK(cudaMalloc(&q8.ds, sizeof(float2) * (F / 32)));
    unsigned* sink;
    MN_CUDA_CHECK(cudaMalloc(&sink, 64));

    printf("\n%-24s %9s %9s %8s %8s %8s  %s\n", "product", "MB", "us", "GB/s", "of copy", "of read", "variant");
    for (const Product& pr : products) {
        if (only && !std::strstr(pr.name, only)) continue;
        size_t bytes = 0;
        for (auto& m : pr.mats) bytes += row_bytes_of(m.first, pr.K) * m.second;
        // Enough copies that the chain reads >= 400 MB before a copy comes round again.
        const int copies = int(std::max<size_t>(2, (size_t(400) << 20) / bytes + 1));
        const int reps = std::max(copies, 8);
        std::vector<uint8_t*> bufs(copies);
        for (auto& b : bufs) {
            MN_CUDA_CHECK(cudaMalloc(&b, bytes + 256));
            fill_random<<<1024, 256>>>(reinterpret_cast<uint32_t*>(b), (bytes + 256) / 4, uint32_t(size_t(b)));
        }
        MN_CUDA_CHECK(cudaDeviceSynchronize());
        auto jobs_for = [&](int c, MatvecJob* jobs) {
            size_t off = 0;
            int n = 0;
            for (auto& m : pr.mats) {
                MatvecJob& j = jobs[n];
                j = MatvecJob{};
                j.w.data = bufs[c] + off;
                j.w.type = m.first;
                j.w.K = pr.K;
                j.w.N = m.second;
                j.w.row_bytes = row_bytes_of(m.first, pr.K);
                j.out = out + (n ? V : 0);
                off += j.w.row_bytes * m.second;
                ++n;
            }
            return n;
        };
        const float read_us = time_graph(s, [&] {
            for (int r = 0; r < reps; ++r)
                launch_kernel(true, read_all, dim3(sms * 8), dim3(256), 0, s,
                              reinterpret_cast<const uint4*>(bufs[r % copies]), bytes / 16, sink);
        }, reps);
        const double read_gbs = bytes / (read_us * 1e3);
        printf("%-24s %9.1f %9.1f %8.0f %7.0f%% %7.0f%%  plain read\n", pr.name, bytes / 1e6, read_us, read_gbs,
               100 * read_gbs / copy_gbs, 100.0);
        auto report = [&](const char* variant, float us) {
            const double gbs = bytes / (us * 1e3);
            printf("%-24s %9.1f %9.1f %8.0f %7.0f%% %7.0f%%  %s\n", pr.name, bytes / 1e6, us, gbs,
                   100 * gbs / copy_gbs, 100 * gbs / read_gbs, variant);
        };
        launch_quantize_q8(x, pr.K, nw, 1e-6f, nullptr, q8, false, s);
        Q8Source pre;
        pre.pre = q8;
        // in_kernel: the input row quantized (with an rms_norm) by every block of the matvec.
        auto chain = [&](bool quantize_launch, bool in_kernel, int cap = 0, int wpg = 0) {
            return time_graph(s, [&] {
                for (int r = 0; r < reps; ++r) {
                    MatvecJob jobs[kMaxMatvecJobs];
                    const int n = jobs_for(r % copies, jobs);
                    if (quantize_launch) launch_quantize_q8(x, pr.K, nw, 1e-6f, nullptr, q8, true, s);
                    Q8Source src = pre;
                    if (in_kernel) {
                        src = Q8Source{};
                        src.x = x;
                        src.norm_weight = nw;
                        src.eps = 1e-6f;
                    }
                    launch_matvec_q8(jobs, n, pr.K, src, pr.swiglu ? swo : nullptr, wpg, cap * sms, 0, 0, true, s);
                }
            }, reps);
        };
        report("row pairs, input quantized before", chain(false, false));
        report("quantize launch + row pairs (as decode)", chain(true, false));
        for (int wpg : {1, 2, 4, 5, 10}) {
            if (wpg > 4 && (pr.swiglu || pr.K < 8192)) continue;  // wider blocks: long rows quantized apart
            char name[96];
            snprintf(name, sizeof name, "row pairs, input quantized before, %d warps per row pair", wpg);
            report(name, chain(false, false, 0, wpg));
        }
        if (pr.K <= kQ8FusedMaxK) {
            report("row pairs, rms_norm + quantize in every block", chain(false, true));
            for (int cap : {1, 2, 4, 8}) {
                char name[96];
                snprintf(name, sizeof name, "row pairs, rms_norm + quantize in every block, grid SMs x %d", cap);
                report(name, chain(false, true, cap));
            }
        }
        for (auto& b : bufs) cudaFree(b);
    }
    MN_CUDA_CHECK(cudaDeviceSynchronize());
    return 0;
}
