#include "python/bindings.h"
namespace mn::python {
void bind_quant(pybind11::module_& m) {}
}
