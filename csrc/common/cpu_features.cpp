#include "common/cpu_features.h"

#include "common/error.h"

namespace mn {

CpuFeatures CpuFeatures::detect() {
    CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    f.avx2 = __builtin_cpu_supports("avx2");
    f.fma = __builtin_cpu_supports("fma");
    f.avx512f = __builtin_cpu_supports("avx512f");
    f.avx512bw = __builtin_cpu_supports("avx512bw");
    f.avx512vl = __builtin_cpu_supports("avx512vl");
    f.avx512vnni = __builtin_cpu_supports("avx512vnni");
    // F16C has no __builtin_cpu_supports name on older compilers; every AVX2 CPU has it.
    f.f16c = f.avx2;
#elif defined(__aarch64__)
    f.neon = true;
#if defined(__ARM_FEATURE_DOTPROD) || defined(__APPLE__)
    f.dotprod = true;
#endif
#endif
    return f;
}

bool isa_available(Isa isa) {
    const CpuFeatures f = CpuFeatures::detect();
    switch (isa) {
        case Isa::Scalar: return true;
        case Isa::Avx2:
#if defined(METALLIC_HAVE_AVX2)
            return f.avx2 && f.fma && f.f16c;
#else
            return false;
#endif
        case Isa::Avx512:
#if defined(METALLIC_HAVE_AVX2) && defined(METALLIC_HAVE_AVX512)
            return f.avx2 && f.fma && f.f16c && f.avx512f && f.avx512bw && f.avx512vl && f.avx512vnni;
#else
            return false;
#endif
        case Isa::Neon:
#if defined(METALLIC_HAVE_NEON)
            return f.neon;
#else
            return false;
#endif
    }
    return false;
}

Isa best_isa() {
    if (isa_available(Isa::Avx512)) return Isa::Avx512;
    if (isa_available(Isa::Avx2)) return Isa::Avx2;
    if (isa_available(Isa::Neon)) return Isa::Neon;
    return Isa::Scalar;
}

const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::Scalar: return "scalar";
        case Isa::Avx2: return "avx2";
        case Isa::Avx512: return "avx512";
        case Isa::Neon: return "neon";
    }
    return "?";
}

Isa parse_isa(const std::string& name) {
    Isa isa;
    if (name == "auto") return best_isa();
    if (name == "scalar") isa = Isa::Scalar;
    else if (name == "avx2") isa = Isa::Avx2;
    else if (name == "avx512") isa = Isa::Avx512;
    else if (name == "neon") isa = Isa::Neon;
    else throw InvalidArgument("unknown isa '" + name + "' (expected auto, scalar, avx2, avx512 or neon)");
    if (!isa_available(isa))
        throw InvalidArgument(std::string("isa '") + name + "' is not available in this build on this CPU");
    return isa;
}

}  // namespace mn
