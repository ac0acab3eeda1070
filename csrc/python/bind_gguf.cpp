#include "python/bindings.h"
namespace mn::python {
void bind_gguf(pybind11::module_& m) {}
}
