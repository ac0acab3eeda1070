// Build and run on the GPU machine: nvcc -arch=sm_90 -O2 -o /tmp/lb bench/micro/launch_and_grid_barrier.cu && /tmp/lb
// Microbenchmark: grid barrier cost (132 blocks, one per SM) and the per-kernel floor of a
// chain of empty kernels in a CUDA graph, with and without programmatic dependent launch.
#include <cstdio>
#include <cuda_runtime.h>
__device__ unsigned int g_count;
__global__ void barriers(int n, int blocks) {
    for (int i = 0; i < n; ++i) {
        __syncthreads();
        if (threadIdx.x == 0) {
            __threadfence();
            atomicAdd(&g_count, 1u);
            const unsigned target = unsigned(i + 1) * blocks;
            unsigned v;
            do { asm volatile("ld.acquire.gpu.u32 %0, [%1];" : "=r"(v) : "l"(&g_count)); } while (v < target);
        }
        __syncthreads();
    }
}
__global__ void empty_k(int* p) {
    asm volatile("griddepcontrol.launch_dependents;");
    asm volatile("griddepcontrol.wait;" ::: "memory");
    if (p && threadIdx.x == 0 && blockIdx.x == 0) p[0] += 1;
}
int main() {
    int sms; cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
    cudaEvent_t a, b; cudaEventCreate(&a); cudaEventCreate(&b);
    for (int n : {10, 1000}) {
        unsigned z = 0; cudaMemcpyToSymbol(g_count, &z, 4);
        cudaEventRecord(a); barriers<<<sms, 256>>>(n, sms); cudaEventRecord(b); cudaEventSynchronize(b);
        float ms; cudaEventElapsedTime(&ms, a, b);
        printf("grid barrier, %d blocks: %d barriers %.1f us, %.3f us each\n", sms, n, ms * 1e3, ms * 1e3 / n);
    }
    int* d; cudaMalloc(&d, 4); cudaMemset(d, 0, 4);
    cudaStream_t s; cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    for (int grid : {1, 132, 1056}) for (int pdl = 0; pdl < 2; ++pdl) {
        const int N = 256;
        cudaGraph_t g; cudaGraphExec_t ge;
        cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal);
        for (int i = 0; i < N; ++i) {
            cudaLaunchConfig_t cfg = {}; cfg.gridDim = grid; cfg.blockDim = 128; cfg.stream = s;
            cudaLaunchAttribute at[1]; at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
            at[0].val.programmaticStreamSerializationAllowed = 1; cfg.attrs = at; cfg.numAttrs = pdl;
            cudaLaunchKernelEx(&cfg, empty_k, d);
        }
        cudaStreamEndCapture(s, &g); cudaGraphInstantiate(&ge, g, 0);
        cudaGraphLaunch(ge, s); cudaStreamSynchronize(s);
        cudaEventRecord(a, s); for (int r = 0; r < 10; ++r) cudaGraphLaunch(ge, s); cudaEventRecord(b, s); cudaEventSynchronize(b);
        float ms; cudaEventElapsedTime(&ms, a, b);
        printf("graph of %d empty kernels, grid %d, pdl %d: %.2f us per kernel (%s)\n", N, grid, pdl, ms * 1e3 / (10 * N), cudaGetErrorString(cudaGetLastError()));
    }
    return 0;
}
