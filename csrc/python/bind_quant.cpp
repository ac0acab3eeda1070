// Python bindings of the weight formats: type_info, dequantize, quantize.
// Arguments are validated here with ValueErrors that name the parameter; the
// kernels run with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cctype>
#include <cmath>
#include <string>

#include "common/cpu_features.h"
#include "common/error.h"
#include "python/bindings.h"
#include "quant/dequantize.h"
#include "quant/dot.h"
#include "quant/formats.h"

namespace py = pybind11;

namespace mn::python {
namespace {

// `type` may be a ggml type id (int, including gguf.GGMLQuantizationType) or a name ("q4_k", "Q4_K").
TensorType resolve_type(const py::handle& type, const char* param) {
    if (py::isinstance<py::bool_>(type))
        throw InvalidArgument(std::string(param) + ": expected a type name or id, got a bool");
    if (py::isinstance<py::int_>(type)) {
        long long id = -1;
        try {
            id = type.cast<long long>();
        } catch (const py::cast_error&) {  // beyond 64 bits
            throw InvalidArgument(std::string(param) + ": unknown tensor type id " + std::string(py::str(type)));
        }
        if (id < 0 || id > 0xffff || !type_traits(uint32_t(id)))
            throw InvalidArgument(std::string(param) + ": unknown tensor type id " + std::to_string(id));
        return TensorType(uint32_t(id));
    }
    if (py::isinstance<py::str>(type)) {
        std::string name = type.cast<std::string>();
        for (char& c : name) c = char(std::toupper(static_cast<unsigned char>(c)));
        const TypeTraits* tt = type_traits_by_name(name);
        if (!tt) throw InvalidArgument(std::string(param) + ": unknown tensor type '" + type.cast<std::string>() + "'");
        return TensorType(type_id(tt));
    }
    throw InvalidArgument(std::string(param) + ": expected a type name (str) or id (int), got " +
                          std::string(py::str(py::type::handle_of(type).attr("__name__"))));
}

const char* isa_name_of(Isa isa) { return isa_name(isa); }

Isa resolve_isa(const std::string& isa) {
    try {
        return parse_isa(isa);
    } catch (const InvalidArgument& e) {
        throw InvalidArgument(std::string("isa: ") + e.what());
    }
}

py::dict type_info(const py::object& type) {
    const TensorType t = resolve_type(type, "type");
    const TypeTraits* tt = type_traits(t);
    py::dict d;
    d["name"] = tt->name;
    d["id"] = uint32_t(t);
    d["block_size"] = tt->block_size;
    d["type_size"] = tt->type_size;
    d["can_dequantize"] = tt->can_dequantize;
    d["can_quantize"] = can_quantize(t);
    return d;
}

py::array_t<float> dequantize(const py::buffer& raw, const py::object& type, int64_t n, const std::string& isa_name,
                              const py::object& out_obj) {
    const TensorType t = resolve_type(type, "type");
    const TypeTraits* tt = type_traits(t);
    const Isa isa = resolve_isa(isa_name);
    if (!tt->can_dequantize)
        throw InvalidArgument(std::string("type: no dequantization kernel for ") + tt->name);
    if (n < 0) throw InvalidArgument("n: must be >= 0, got " + std::to_string(n));
    if (n % tt->block_size != 0)
        throw InvalidArgument("n: " + std::to_string(n) + " is not a multiple of the " + tt->name + " block size " +
                              std::to_string(tt->block_size));
    const py::buffer_info info = raw.request();
    if (info.itemsize != 1)
        throw InvalidArgument("raw: expected a byte buffer (uint8/int8), got items of " + std::to_string(info.itemsize) +
                              " bytes (format '" + info.format + "')");
    // C-contiguous check: each stride equals the product of the later extents.
    py::ssize_t expect_stride = 1;
    for (py::ssize_t k = info.ndim - 1; k >= 0; --k) {
        if (info.shape[size_t(k)] > 1 && info.strides[size_t(k)] != expect_stride)
            throw InvalidArgument("raw: the buffer must be C-contiguous");
        expect_stride *= info.shape[size_t(k)];
    }
    const uint64_t need = uint64_t(n / tt->block_size) * tt->type_size;
    if (uint64_t(info.size) != need)
        throw InvalidArgument("raw: has " + std::to_string(info.size) + " bytes but " + std::to_string(n) + " " +
                              tt->name + " elements take " + std::to_string(need) + " bytes");
    py::array_t<float> out;
    if (out_obj.is_none()) {
        out = py::array_t<float>(static_cast<py::ssize_t>(n));
    } else {
        // A caller-owned buffer lets hot loops (and the benchmark) avoid a fresh
        // allocation and its page faults on every call.
        if (!py::isinstance<py::array_t<float>>(out_obj))  // checks the dtype too
            throw InvalidArgument("out: expected a float32 numpy array");
        out = py::reinterpret_borrow<py::array_t<float>>(out_obj);
        if (!(out.flags() & py::array::c_style) || !out.writeable())
            throw InvalidArgument("out: must be a writeable C-contiguous float32 array");
        if (out.size() != n)
            throw InvalidArgument("out: has " + std::to_string(out.size()) + " elements, expected n=" + std::to_string(n));
    }
    float* dst = out.mutable_data();
    const void* src = info.ptr;
    {
        py::gil_scoped_release release;
        dequantize_row(t, src, dst, n, isa);
    }
    return out;
}

py::array_t<uint8_t> quantize(const py::array_t<float, py::array::c_style | py::array::forcecast>& x,
                              const py::object& type, const std::string& isa_name) {
    const TensorType t = resolve_type(type, "type");
    const TypeTraits* tt = type_traits(t);
    const Isa isa = resolve_isa(isa_name);
    if (!can_quantize(t))
        throw InvalidArgument(std::string("type: cannot quantize to ") + tt->name + " (supported: Q8_0, Q8_1, Q8_K)");
    const int64_t n = int64_t(x.size());
    if (n % tt->block_size != 0)
        throw InvalidArgument("x: has " + std::to_string(n) + " elements, not a multiple of the " + tt->name +
                              " block size " + std::to_string(tt->block_size));
    const float* src = x.data();
    py::array_t<uint8_t> out(static_cast<py::ssize_t>(n / tt->block_size * tt->type_size));
    uint8_t* dst = out.mutable_data();
    int64_t bad = -1;
    {
        py::gil_scoped_release release;
        // A block's scale comes from its largest magnitude, so one inf/nan would
        // silently zero or poison the block: reject it instead.
        for (int64_t i = 0; i < n; ++i)
            if (!std::isfinite(src[i])) { bad = i; break; }
        if (bad < 0) quantize_row(t, src, dst, n, isa);
    }
    if (bad >= 0) throw InvalidArgument("x: element " + std::to_string(bad) + " is not finite");
    return out;
}

// Validates a C-contiguous byte-addressable buffer of exactly `need` bytes.
py::buffer_info contiguous_bytes(const py::buffer& buf, const char* param, uint64_t need, const std::string& what) {
    py::buffer_info info = buf.request();
    py::ssize_t expect_stride = info.itemsize;
    for (py::ssize_t k = info.ndim - 1; k >= 0; --k) {
        if (info.shape[size_t(k)] > 1 && info.strides[size_t(k)] != expect_stride)
            throw InvalidArgument(std::string(param) + ": the buffer must be C-contiguous");
        expect_stride *= info.shape[size_t(k)];
    }
    const uint64_t have = uint64_t(info.size) * uint64_t(info.itemsize);
    if (have != need)
        throw InvalidArgument(std::string(param) + ": has " + std::to_string(have) + " bytes but " + what + " take " +
                              std::to_string(need) + " bytes");
    return info;
}

py::dict dot_info(const py::object& type, const std::string& isa_name) {
    const TensorType t = resolve_type(type, "weight_type");
    const DotKernel k = get_dot_kernel(t, resolve_isa(isa_name));
    if (!k.fn) throw InvalidArgument(std::string("weight_type: no dot kernel for ") + type_traits(t)->name);
    py::dict d;
    d["act_type"] = type_traits(k.act_type)->name;
    d["isa"] = isa_name_of(k.isa);
    return d;
}

// out[r, c] = dot(weight row r, activation row c): the engine's kernel on
// caller-provided rows (activations already in the kernel's format).
py::array_t<float> dot(const py::buffer& w, const py::object& type, const py::buffer& a, int64_t n, int64_t nr,
                       int64_t nc, const std::string& isa_name) {
    const TensorType t = resolve_type(type, "weight_type");
    const TypeTraits& wt = *type_traits(t);
    const DotKernel k = get_dot_kernel(t, resolve_isa(isa_name));
    if (!k.fn) throw InvalidArgument(std::string("weight_type: no dot kernel for ") + wt.name);
    const TypeTraits& at = *type_traits(k.act_type);
    if (n < 0 || n > (int64_t(1) << 40) || n % wt.block_size != 0 || n % at.block_size != 0)
        throw InvalidArgument("n: " + std::to_string(n) + " must be a non-negative multiple of the " + wt.name +
                              " and " + at.name + " block sizes (and below 2^40)");
    if (nr < 0 || nr > (1 << 30)) throw InvalidArgument("nr: out of range: " + std::to_string(nr));
    if (nc < 0 || nc > (1 << 30)) throw InvalidArgument("nc: out of range: " + std::to_string(nc));
    const uint64_t wrb = row_bytes(wt, n), arb = row_bytes(at, n);
    const py::buffer_info wi = contiguous_bytes(w, "w", wrb * uint64_t(nr), std::to_string(nr) + " rows of " +
                                                std::to_string(n) + " " + wt.name + " elements");
    const py::buffer_info ai = contiguous_bytes(a, "a", arb * uint64_t(nc), std::to_string(nc) + " rows of " +
                                                std::to_string(n) + " " + at.name + " elements");
    // The SIMD kernels rely on |q| <= 127 in the activations (quantize() output).
    if (k.act_type != TensorType::F32) {
        const size_t qoff = k.act_type == TensorType::Q8_0 ? 2 : 4, nq = at.block_size;
        const uint8_t* p = static_cast<const uint8_t*>(ai.ptr);
        for (uint64_t blk = 0; blk < uint64_t(nc) * (n / at.block_size); ++blk)
            for (size_t j = 0; j < nq; ++j)
                if (p[blk * at.type_size + qoff + j] == 0x80)
                    throw InvalidArgument("a: block " + std::to_string(blk) + " holds the quant -128; activations "
                                          "must come from quantize() (|q| <= 127)");
    }
    py::array_t<float> out({static_cast<py::ssize_t>(nr), static_cast<py::ssize_t>(nc)});
    float* o = out.mutable_data();
    const void* wp = wi.ptr;
    const void* ap = ai.ptr;
    {
        py::gil_scoped_release release;
        if (nr && nc) k.fn(n, wp, size_t(wrb), int(nr), ap, size_t(arb), int(nc), o, size_t(nc));
    }
    return out;
}

}  // namespace

void bind_quant(py::module_& m) {
    m.def("type_info", &type_info, py::arg("type"),
          "Block geometry of a tensor type (name or ggml id): dict(name, id, block_size, type_size, "
          "can_dequantize, can_quantize).");
    m.def("dequantize", &dequantize, py::arg("raw"), py::arg("type"), py::arg("n"), py::arg("isa") = "auto",
          py::arg("out") = py::none(),
          "Decode n elements of `type` from the C-contiguous byte buffer `raw` (exactly n / block_size * "
          "type_size bytes) into a new float32 array, or into `out` (a writeable C-contiguous float32 array "
          "of n elements) and return it. isa: 'auto', 'scalar', 'avx2' or 'neon'.");
    m.def("quantize", &quantize, py::arg("x"), py::arg("type"), py::arg("isa") = "auto",
          "Encode the finite floats of x (any shape, read in C order; size a multiple of the block size) as "
          "Q8_0, Q8_1 or Q8_K; returns the raw blocks as a uint8 array.");
    m.def("dot_info", &dot_info, py::arg("weight_type"), py::arg("isa") = "auto",
          "The dot kernel for a weight type: dict(act_type=activation format, isa=kernel family that runs).");
    m.def("dot", &dot, py::arg("w"), py::arg("weight_type"), py::arg("a"), py::arg("n"), py::arg("nr"),
          py::arg("nc"), py::arg("isa") = "auto",
          "out[r, c] = dot(weight row r, activation row c) as a (nr, nc) float32 array. w: nr rows of n "
          "elements of weight_type; a: nc rows of n elements in dot_info(weight_type)['act_type'] (from "
          "quantize(), or float32 for F32/F16/BF16 weights).");
}

}  // namespace mn::python
