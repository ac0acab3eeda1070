#include "backend/backend.h"

#include "backend/cpu/cpu_backend.h"
#include "common/error.h"

namespace mn {

#if defined(METALLIC_HAVE_CUDA)
// Defined in backend/cuda/cuda_backend.cu.
std::unique_ptr<Backend> make_cuda_backend(const BackendOptions& options);
bool cuda_device_available();
#endif

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
    if (name == "cpu" || name == "auto") return std::make_unique<CpuBackend>(options.n_threads, parse_isa(options.isa));
    throw InvalidArgument("unknown backend '" + name + "' (expected auto, cpu, cuda or metal)");
}

}  // namespace mn
