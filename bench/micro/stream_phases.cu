// Can a decode step's weights stream at DRAM speed through its phase boundaries? A feasibility
// measurement for a persistent, warp-specialized decode kernel (not engine code).
//
// A 7B Q4_K_M decode step reads ~4.4 GB of weights in ~140 dependent phases (per layer q/k/v,
// attention, o, gate/up, down; then the output head). The engine launches a kernel per phase, and
// DRAM idles at every boundary (bench/RESULTS.md, sessions 14-16: 63% of the copy bandwidth). Here
// one block per SM runs the whole step: a producer warp copies the block's share of every phase's
// bytes into a ring of shared-memory slots with TMA bulk copies, never waiting on the phases'
// dependencies (weights are constant), while consumer warps reduce each slot with dp4a (about a
// Q4_K dot product's arithmetic per byte) and, at each phase's end, meet every other block at a
// grid barrier (the activations' dependency). Printed: the step's time and bandwidth against a
// plain read of the same bytes, with the barriers (after every phase, or only after those with
// weights) and the arithmetic switched off and on.
//
//   nvcc -arch=sm_90 -O3 -std=c++17 -I csrc -o stream_phases bench/micro/stream_phases.cu && ./stream_phases
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <utility>
#include <vector>

#include "backend/cuda/common.cuh"  // the engine's mbarrier and bulk-copy helpers

#define CK(x)                                                                                  \
    do {                                                                                       \
        cudaError_t e_ = (x);                                                                  \
        if (e_ != cudaSuccess) {                                                               \
            std::printf("%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));     \
            std::exit(1);                                                                      \
        }                                                                                      \
    } while (0)

namespace {

using namespace mn::cuda;

constexpr int kMaxPhases = 160;
// The widest input row quantized (18,944 codes and 592 float2 scales), in shared memory after the ring.
constexpr size_t kQinBytes = 18944 + 18944 / 32 * 8;
struct Phases {
    uint64_t off[kMaxPhases];  // byte offset of each phase in the weight buffer
    uint64_t bytes[kMaxPhases];
    int in_k[kMaxPhases];  // floats in the phase's input row (the `input` option reads them)
    int n;
};

// This block's share of a phase: 16-byte aligned pieces, the last block takes what is left.
__device__ __forceinline__ void share(const Phases& ph, int p, uint64_t& lo, uint64_t& hi) {
    const uint64_t per = ((ph.bytes[p] / gridDim.x) + 15) & ~uint64_t(15);
    lo = min(ph.bytes[p], per * blockIdx.x);
    hi = blockIdx.x + 1 == gridDim.x ? ph.bytes[p] : min(ph.bytes[p], per * (blockIdx.x + 1));
}

// Block: warp 0 the producer, warps 1..C the consumers. Ring of `slots` slots of `slot_bytes`.
// One block per SM (its ~200 KB of shared memory leaves room for no second), so every block is
// resident, which the grid barrier needs. compute: passes of the arithmetic per 16 bytes (0: none).
// input 1: at each phase's start the consumers also read that phase's input row (3584 floats, 18944
// for a down projection) from global memory and sum its squares across the block, as the real
// kernel's rms_norm and quantization would, before any slot. input 2: they copy the row already
// quantized into shared memory instead (a quarter of the bytes, one block barrier).
// act: the input row (zeros; at least kQinBytes and 18944 floats).
__global__ void stream_kernel(const uint8_t* __restrict__ w, const Phases ph, int slots, int slot_bytes, int barrier,
                              int compute, int input, const float* act, unsigned int* grid_ctr, unsigned int* sink) {
    __shared__ float red[32];
    extern __shared__ __align__(128) uint8_t smem[];
    uint64_t* full = reinterpret_cast<uint64_t*>(smem);
    uint64_t* empty = full + slots;
    uint8_t* ring = smem + 1024;
    uint8_t* qin = ring + size_t(slots) * slot_bytes;  // input 2: the quantized row (kQinBytes)
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int consumers = blockDim.x / 32 - 1;
    if (threadIdx.x == 0) {
        for (int s = 0; s < slots; ++s) mbar_init(full + s, 1), mbar_init(empty + s, consumers);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    if (warp == 0) {
        if (lane != 0) return;
        uint32_t k = 0;
        for (int p = 0; p < ph.n; ++p) {
            uint64_t lo, hi;
            share(ph, p, lo, hi);
            for (uint64_t a = lo; a < hi; a += slot_bytes, ++k) {
                const int s = k % slots;
                if (k >= uint32_t(slots)) mbar_wait(empty + s, ((k / slots) - 1) & 1);
                const uint32_t n = uint32_t(min(uint64_t(slot_bytes), hi - a));
                mbar_arrive_expect_tx(full + s, n);
                bulk_copy(ring + size_t(s) * slot_bytes, w + ph.off[p] + a, n, full + s);
            }
        }
        return;
    }
    // Consumers.
    const int ct = threadIdx.x - 32, cthreads = consumers * 32;
    uint32_t k = 0, acc = 0;
    unsigned int passed = 0;  // grid barriers passed
    for (int p = 0; p < ph.n; ++p) {
        uint64_t lo, hi;
        share(ph, p, lo, hi);
        if (input == 2 && hi > lo) {
            // The row as the producing phase could publish it: already quantized (K int8 codes, K / 32
            // float2 scales; its sum of squares would come with the grid barrier), copied into shared
            // memory with up to 8 loads a thread in flight, then one barrier of the consumers.
            const int n16 = (ph.in_k[p] + ph.in_k[p] / 32 * 8) / 16;
            const uint4* src = reinterpret_cast<const uint4*>(act);
            uint4* dst = reinterpret_cast<uint4*>(qin);
            for (int base = 0; base < n16; base += 8 * cthreads) {
                uint4 v[8];
#pragma unroll
                for (int u = 0; u < 8; ++u)
                    if (base + ct + u * cthreads < n16) v[u] = src[base + ct + u * cthreads];
#pragma unroll
                for (int u = 0; u < 8; ++u)
                    if (base + ct + u * cthreads < n16) dst[base + ct + u * cthreads] = v[u];
            }
            asm volatile("bar.sync 1, %0;" ::"r"(cthreads) : "memory");
        } else if (input && hi > lo) {
            float ss = 0.0f;
            for (int i = 4 * ct; i < ph.in_k[p]; i += 4 * cthreads) {
                const float4 v = *reinterpret_cast<const float4*>(act + i);
                ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
            }
            for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
            if (lane == 0) red[warp] = ss;
            asm volatile("bar.sync 1, %0;" ::"r"(cthreads) : "memory");
            float tot = 0.0f;
            for (int i = 1; i <= consumers; ++i) tot += red[i];
            acc += __float_as_uint(tot) & 1u;
            asm volatile("bar.sync 1, %0;" ::"r"(cthreads) : "memory");
        }
        for (uint64_t a = lo; a < hi; a += slot_bytes, ++k) {
            const int s = k % slots;
            mbar_wait(full + s, (k / slots) & 1);
            const uint32_t n = uint32_t(min(uint64_t(slot_bytes), hi - a));
            if (compute) {
                const uint4* v = reinterpret_cast<const uint4*>(ring + size_t(s) * slot_bytes);
                for (uint32_t i = ct; i < n / 16; i += cthreads) {
                    const uint4 x = v[i];
                    // About a Q4_K unit's arithmetic on 16 bytes (both nibbles, eight dp4a) per pass;
                    // passes beyond the first stand for the rest (scales, the input's bytes).
                    // (The first pass is written out: as one loop with the others, the 8-warp runs
                    // measured up to 10% slower, the loop's own instructions on the consumers' path.)
                    for (int r = 1; r < compute; ++r) {
                        const int m = 0x01010101 + r;
                        acc = __dp4a(int(x.x & 0x0F0F0F0Fu), m, int(acc));
                        acc = __dp4a(int((x.x >> 4) & 0x0F0F0F0Fu), m, int(acc));
                        acc = __dp4a(int(x.y & 0x0F0F0F0Fu), m, int(acc));
                        acc = __dp4a(int((x.y >> 4) & 0x0F0F0F0Fu), m, int(acc));
                        acc = __dp4a(int(x.z & 0x0F0F0F0Fu), m, int(acc));
                        acc = __dp4a(int((x.z >> 4) & 0x0F0F0F0Fu), m, int(acc));
                        acc = __dp4a(int(x.w & 0x0F0F0F0Fu), m, int(acc));
                        acc = __dp4a(int((x.w >> 4) & 0x0F0F0F0Fu), m, int(acc));
                    }
                    acc = __dp4a(int(x.x & 0x0F0F0F0Fu), 0x01010101, int(acc));
                    acc = __dp4a(int((x.x >> 4) & 0x0F0F0F0Fu), 0x01010101, int(acc));
                    acc = __dp4a(int(x.y & 0x0F0F0F0Fu), 0x01010101, int(acc));
                    acc = __dp4a(int((x.y >> 4) & 0x0F0F0F0Fu), 0x01010101, int(acc));
                    acc = __dp4a(int(x.z & 0x0F0F0F0Fu), 0x01010101, int(acc));
                    acc = __dp4a(int((x.z >> 4) & 0x0F0F0F0Fu), 0x01010101, int(acc));
                    acc = __dp4a(int(x.w & 0x0F0F0F0Fu), 0x01010101, int(acc));
                    acc = __dp4a(int((x.w >> 4) & 0x0F0F0F0Fu), 0x01010101, int(acc));
                }
            }
            __syncwarp();
            if (lane == 0) mbar_arrive(empty + s);
        }
        // barrier 2: none after a phase without weights (attention here), whose dependency the next
        // phase's barrier covers: 4 a layer, the fewest all-to-all syncs a step's data needs
        // (o, gate/up, down and the next q/k/v each read every output of the phase before).
        if (barrier == 1 || (barrier == 2 && ph.bytes[p] > 0)) {
            ++passed;
            // The phase's dependency: every block's consumers done before any starts the next.
            asm volatile("bar.sync 1, %0;" ::"r"(cthreads) : "memory");
            if (ct == 0) {
                __threadfence();
                atomicAdd(grid_ctr, 1u);
                const unsigned int target = passed * gridDim.x;
                unsigned int seen = 0;
                do {
                    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(grid_ctr) : "memory");
                } while (seen < target);
            }
            asm volatile("bar.sync 1, %0;" ::"r"(cthreads) : "memory");
        }
    }
    if (acc == 0x12345678u) atomicAdd(sink, acc);  // keeps the arithmetic
}

__global__ void plain_read(const uint4* __restrict__ w, size_t n16, unsigned int* sink) {
    uint32_t acc = 0;
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n16; i += size_t(gridDim.x) * blockDim.x) {
        const uint4 x = __ldg(w + i);
        acc ^= x.x ^ x.y ^ x.z ^ x.w;
    }
    if (acc == 0x12345678u) atomicAdd(sink, acc);
}

}  // namespace

int main() {
    // Qwen2.5-7B Q4_K_M geometry: per layer q/k/v, attention (no weights), o, gate/up, down (Q4_K;
    // v and down in Q6_K in 14 of 28 layers, as bench/make_synthetic_model.py's uses_more_bits);
    // then the output head (Q6_K). Each phase: its weight bytes and its input row's width.
    const int d = 3584, ff = 18944, kv = 512, vocab = 152064, layers = 28;
    auto q4k = [](uint64_t rows, uint64_t cols) { return rows * cols / 256 * 144; };
    auto q6k = [](uint64_t rows, uint64_t cols) { return rows * cols / 256 * 210; };
    std::vector<std::pair<uint64_t, int>> phases;
    for (int l = 0; l < layers; ++l) {
        const bool more = l < layers / 8 || l >= 7 * layers / 8 || (l - layers / 8) % 3 == 2;
        phases.push_back({q4k(d + kv, d) + (more ? q6k(kv, d) : q4k(kv, d)), d});
        phases.push_back({0, d});  // attention
        phases.push_back({q4k(d, d), d});
        phases.push_back({2 * q4k(ff, d), d});
        phases.push_back({more ? q6k(d, ff) : q4k(d, ff), ff});
    }
    phases.push_back({q6k(vocab, d), d});
    Phases ph{};
    ph.n = int(phases.size());
    uint64_t total = 0;
    for (int i = 0; i < ph.n; ++i) {
        ph.off[i] = total;
        ph.bytes[i] = phases[i].first;
        ph.in_k[i] = phases[i].second;
        total += (phases[i].first + 255) & ~uint64_t(255);
    }
    int sms = 0;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    uint8_t* w = nullptr;
    CK(cudaMalloc(&w, total));
    CK(cudaMemset(w, 0x5a, total));
    unsigned int *ctr = nullptr, *sink = nullptr;
    CK(cudaMalloc(&ctr, 4));
    CK(cudaMalloc(&sink, 4));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    std::printf("step: %d phases, %.1f MB of weights, %d SMs\n", ph.n, total / 1e6, sms);

    auto time_it = [&](auto&& launch) {
        launch();
        CK(cudaDeviceSynchronize());
        std::vector<float> ms;
        for (int r = 0; r < 7; ++r) {
            CK(cudaEventRecord(e0));
            launch();
            CK(cudaEventRecord(e1));
            CK(cudaEventSynchronize(e1));
            float t = 0;
            CK(cudaEventElapsedTime(&t, e0, e1));
            ms.push_back(t);
        }
        std::sort(ms.begin(), ms.end());
        return ms[ms.size() / 2];
    };
    const float plain = time_it([&] { plain_read<<<sms * 8, 512>>>(reinterpret_cast<uint4*>(w), total / 16, sink); });
    std::printf("plain read: %.3f ms, %.0f GB/s\n", plain, total / plain / 1e6);
    {
        // As bench_cuda.py reports the copy bandwidth: a 2 GiB device-to-device copy, bytes read + written.
        const size_t n = size_t(1) << 31;
        void *a = nullptr, *b = nullptr;
        CK(cudaMalloc(&a, n));
        CK(cudaMalloc(&b, n));
        const float copy = time_it([&] { CK(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice)); });
        std::printf("device-to-device copy: %.0f GB/s (read + written)\n", 2.0 * n / copy / 1e6);
        CK(cudaFree(a));
        CK(cudaFree(b));
    }
    std::printf("%-10s %-6s %-8s %-7s %-9s %-6s %9s %9s %8s %s\n", "slot KB", "slots", "warps", "barrier", "compute",
                "input", "ms", "GB/s", "of read", "tok/s");
    float* act = nullptr;
    CK(cudaMalloc(&act, 18944 * sizeof(float)));
    CK(cudaMemset(act, 0, 18944 * sizeof(float)));
    for (int slot_kb : {16, 32})
        for (int warps : {8, 16, 24})
            for (int barrier : {0, 1, 2})
                for (int compute : {0, 1, 2, 3})
                    for (int input : {0, 1, 2}) {
                        if (!barrier && (compute > 1 || input)) continue;
                        const int slots = (200 << 10) / (slot_kb << 10);
                        const size_t smem = 1024 + size_t(slots) * (slot_kb << 10) + kQinBytes;
                        CK(cudaFuncSetAttribute(stream_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
                        const float t = time_it([&] {
                            cudaMemsetAsync(ctr, 0, 4);
                            stream_kernel<<<sms, 32 * (warps + 1), smem>>>(w, ph, slots, slot_kb << 10, barrier, compute,
                                                                             input, act, ctr, sink);
                        });
                        CK(cudaGetLastError());
                        std::printf("%-10d %-6d %-8d %-7d %-9d %-6d %9.3f %9.0f %7.1f%% %6.0f\n", slot_kb, slots, warps,
                                    barrier, compute, input, t, total / t / 1e6, 100.0 * plain / t, 1e3 / t);
                    }
    return 0;
}
