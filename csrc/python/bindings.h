// Each layer of the core binds itself in its own file; module.cpp calls them.
#pragma once

#include <pybind11/pybind11.h>

namespace mn::python {

void bind_gguf(pybind11::module_& m);    // bind_gguf.cpp: GGUFFile
void bind_quant(pybind11::module_& m);   // bind_quant.cpp: dequantize / quantize kernels
void bind_model(pybind11::module_& m);   // bind_model.cpp: the inference engine (Model)

}  // namespace mn::python
