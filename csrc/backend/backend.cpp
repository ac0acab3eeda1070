#include "backend/backend.h"

#include "backend/cpu/cpu_backend.h"
#include "common/error.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace mn {

void Backend::top_k(const Buffer& src, int64_t offset, int64_t n, int k, int32_t* ids, float* vals,
                    float* log_sum_exp) {
    if (k < 1 || k > n) throw InvalidArgument("top_k must be in [1, " + std::to_string(n) + "], got " + std::to_string(k));
    std::vector<float> row(static_cast<size_t>(n));
    read(src, offset, n, row.data());
    std::vector<int32_t> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    // NaN sorts last so it is never selected ahead of a number.
    auto before = [&](int32_t a, int32_t b) {
        const float x = row[a], y = row[b];
        if (x != x) return false;
        if (y != y) return true;
        return x > y || (x == y && a < b);
    };
    std::partial_sort(order.begin(), order.begin() + k, order.end(), before);
    for (int i = 0; i < k; ++i) {
        ids[i] = order[i];
        vals[i] = row[order[i]];
    }
    if (log_sum_exp) {
        const float m = *std::max_element(row.begin(), row.end());
        double sum = 0.0;
        for (float x : row) sum += std::exp(double(x) - double(m));
        *log_sum_exp = float(double(m) + std::log(sum));
    }
}

#if defined(METALLIC_HAVE_CUDA)
// Defined in backend/cuda/cuda_backend.cu.
std::unique_ptr<Backend> make_cuda_backend(const BackendOptions& options);
bool cuda_device_available();
#endif

bool backend_available(const std::string& name) {
    if (name == "cpu" || name == "auto") return true;
#if defined(METALLIC_HAVE_CUDA)
    if (name == "cuda") return cuda_device_available();
#endif
    return false;
}

std::unique_ptr<Backend> make_backend(const std::string& name, const BackendOptions& options) {
    if (name == "cuda" || name == "auto") {
#if defined(METALLIC_HAVE_CUDA)
        if (cuda_device_available()) return make_cuda_backend(options);
        if (name == "cuda") throw Error("backend 'cuda' requested but no usable CUDA device is visible");
#else
        if (name == "cuda")
            throw InvalidArgument("backend 'cuda' requested but this build has no CUDA backend (nvcc was not found "
                                  "when the package was built)");
#endif
    }
    if (name == "metal")
        throw InvalidArgument("backend 'metal' requested but this build has no Metal backend (Apple Silicon only)");
    using Mode = CpuBackend::ActivationMode;
    Mode mode;
    if (options.activations == "q8") mode = Mode::OneLevel;
    else if (options.activations == "q8x2") mode = Mode::TwoLevel;
    else if (options.activations == "auto") mode = Mode::Auto;
    else throw InvalidArgument("activations must be 'auto', 'q8' or 'q8x2', got '" + options.activations + "'");
    if (name == "cpu" || name == "auto")
        return std::make_unique<CpuBackend>(options.n_threads, parse_isa(options.isa), mode);
    throw InvalidArgument("unknown backend '" + name + "' (expected auto, cpu, cuda or metal)");
}

}  // namespace mn
