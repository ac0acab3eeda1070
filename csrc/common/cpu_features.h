// What the running CPU can do, detected once per call site (no global state),
// and which kernel family to run. A kernel family is only offered if it was
// compiled into this binary (METALLIC_HAVE_*) AND the CPU supports it.
#pragma once

#include <string>

namespace mn {

// Avx512 = the AVX2 kernels plus the AVX-512 VNNI prefill GEMM (quant/panel_gemm.h).
enum class Isa { Scalar, Avx2, Avx512, Neon };

struct CpuFeatures {
    bool avx2 = false, fma = false, f16c = false;
    bool avx512f = false, avx512bw = false, avx512vl = false, avx512vnni = false, avx_vnni = false;
    bool neon = false, dotprod = false;
    static CpuFeatures detect();
};

// The fastest kernel family this binary and this CPU can both run.
Isa best_isa();
// Parses "auto", "scalar", "avx2", "avx512", "neon"; throws InvalidArgument if unknown or unavailable.
Isa parse_isa(const std::string& name);
const char* isa_name(Isa isa);
bool isa_available(Isa isa);

}  // namespace mn
