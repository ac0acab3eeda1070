// The extension module metallic_native._core.
#include <pybind11/pybind11.h>

#include "common/cpu_features.h"
#include "common/error.h"
#include "python/bindings.h"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
    m.doc() = "metallic_native native core";

    // Exception classes. GGUFError derives from ValueError so callers that
    // catch ValueError for bad input also catch bad files.
    static py::exception<mn::GGUFError> gguf_error(m, "GGUFError", PyExc_ValueError);
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const mn::GGUFError& e) {
            py::set_error(gguf_error, e.what());
        } catch (const mn::InvalidArgument& e) {
            py::set_error(PyExc_ValueError, e.what());
        } catch (const mn::Error& e) {
            py::set_error(PyExc_RuntimeError, e.what());
        }
    });

    m.def("best_isa", [] { return std::string(mn::isa_name(mn::best_isa())); },
          "The fastest CPU kernel family this build can run on this CPU.");
    m.def("isa_available", [](const std::string& name) {
        try { mn::parse_isa(name); return true; } catch (const mn::InvalidArgument&) { return false; }
    });

    mn::python::bind_gguf(m);
    mn::python::bind_quant(m);
    mn::python::bind_model(m);
}
