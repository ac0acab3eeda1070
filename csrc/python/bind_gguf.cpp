// Python binding of the GGUF reader: metallic_native._core._GGUFFile, wrapped
// by metallic_native.gguf.GGUFFile.
//
// Lifetime: the binding object holds a shared_ptr<GGUFFile>; close() drops it.
// Every numpy view from raw() holds its own shared_ptr to the part's mapping
// (in a capsule set as the array's base), so a view never points into
// unmapped memory: the mapping goes away when the file is closed AND the last
// view is gone. Methods copy the shared_ptr before releasing the GIL, so a
// close() from another thread cannot pull the file out from under them.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <memory>
#include <string>

#include "common/cpu_features.h"
#include "common/error.h"
#include "gguf/gguf_file.h"
#include "python/bindings.h"
#include "quant/dequantize.h"

namespace py = pybind11;

namespace mn::python {

namespace {

PyObject* decode_utf8(const char* p, size_t n);

// str from UTF-8 bytes of the file; invalid UTF-8 is a GGUFError naming where.
py::object to_str(const GGUFFile& f, const StringRef& s, const std::string& field) {
    std::string_view v = f.str(s);
    PyObject* o = decode_utf8(v.data(), v.size());
    if (o == nullptr) {
        PyErr_Clear();
        throw GGUFError(f.path(), s.offset, field, "string is not valid UTF-8");
    }
    return py::reinterpret_steal<py::object>(o);
}

// New str from UTF-8 bytes, or nullptr with a Python error set. Vocabulary
// strings are mostly short and ASCII: for those, a compact ASCII object is
// allocated and filled directly, skipping the general decoder.
PyObject* decode_utf8(const char* p, size_t n) {
    bool ascii = true;
    for (size_t i = 0; i < n; ++i) {
        if (static_cast<unsigned char>(p[i]) >= 0x80) { ascii = false; break; }
    }
    if (!ascii) return PyUnicode_DecodeUTF8(p, static_cast<Py_ssize_t>(n), "strict");
    PyObject* o = PyUnicode_New(static_cast<Py_ssize_t>(n), 127);
    if (o != nullptr) std::memcpy(PyUnicode_DATA(o), p, n);
    return o;
}

template <class T>
py::object numeric_array(const uint8_t* src, uint64_t count) {
    // Copied (not viewed): metadata values are plain objects that outlive the
    // file, and the source is unaligned. The file is little-endian like the host.
    py::array_t<T> a(static_cast<py::ssize_t>(count));
    if (count) std::memcpy(a.mutable_data(), src, static_cast<size_t>(count) * sizeof(T));
    return std::move(a);
}

py::object convert(const GGUFFile& f, const MetaValue& v, const std::string& key);

py::object convert_array(const GGUFFile& f, const MetaValue& v, const std::string& key) {
    const uint8_t* p = f.parts()[0].map->data() + v.data_offset;
    switch (v.elem_type) {
        case GGUFType::U8: return numeric_array<uint8_t>(p, v.count);
        case GGUFType::I8: return numeric_array<int8_t>(p, v.count);
        case GGUFType::U16: return numeric_array<uint16_t>(p, v.count);
        case GGUFType::I16: return numeric_array<int16_t>(p, v.count);
        case GGUFType::U32: return numeric_array<uint32_t>(p, v.count);
        case GGUFType::I32: return numeric_array<int32_t>(p, v.count);
        case GGUFType::U64: return numeric_array<uint64_t>(p, v.count);
        case GGUFType::I64: return numeric_array<int64_t>(p, v.count);
        case GGUFType::F32: return numeric_array<float>(p, v.count);
        case GGUFType::F64: return numeric_array<double>(p, v.count);
        case GGUFType::BOOL: return numeric_array<bool>(p, v.count);  // bytes validated as 0/1 by the parser
        case GGUFType::STRING: {
            PyObject* list = PyList_New(static_cast<Py_ssize_t>(v.strings.size()));
            if (list == nullptr) throw py::error_already_set();
            py::object holder = py::reinterpret_steal<py::object>(list);
            std::string_view base = f.str(StringRef{0, 0});
            for (size_t i = 0; i < v.strings.size(); ++i) {
                const StringRef& s = v.strings[i];
                PyObject* o = decode_utf8(base.data() + s.offset, static_cast<size_t>(s.size));
                if (o == nullptr) {
                    PyErr_Clear();
                    throw GGUFError(f.path(), s.offset, "metadata '" + key + "' element " + std::to_string(i),
                                    "string is not valid UTF-8");
                }
                PyList_SET_ITEM(list, static_cast<Py_ssize_t>(i), o);  // steals o
            }
            return holder;
        }
        case GGUFType::ARRAY: {
            py::list out(v.items.size());
            for (size_t i = 0; i < v.items.size(); ++i)
                out[i] = convert(f, v.items[i], key);
            return std::move(out);
        }
    }
    throw GGUFError(f.path(), v.file_offset, "metadata '" + key + "'", "unknown array element type");
}

py::object convert(const GGUFFile& f, const MetaValue& v, const std::string& key) {
    switch (v.type) {
        case GGUFType::U8: case GGUFType::U16: case GGUFType::U32: case GGUFType::U64:
            return py::int_(v.scalar.u);
        case GGUFType::I8: case GGUFType::I16: case GGUFType::I32: case GGUFType::I64:
            return py::int_(v.scalar.i);
        case GGUFType::F32: case GGUFType::F64:
            return py::float_(v.scalar.f);
        case GGUFType::BOOL:
            return py::bool_(v.scalar.b);
        case GGUFType::STRING:
            return to_str(f, v.str, "metadata '" + key + "'");
        case GGUFType::ARRAY:
            return convert_array(f, v, key);
    }
    throw GGUFError(f.path(), v.file_offset, "metadata '" + key + "'", "unknown value type");
}

std::string type_description(const MetaValue& v) {
    if (v.type != GGUFType::ARRAY) return gguf_type_name(v.type);
    if (v.elem_type == GGUFType::ARRAY && !v.items.empty()) return "array[" + type_description(v.items[0]) + "]";
    return std::string("array[") + gguf_type_name(v.elem_type) + "]";
}

class PyGGUFFile {
public:
    explicit PyGGUFFile(const std::string& path) {
        try {
            py::gil_scoped_release nogil;
            file_ = std::make_shared<GGUFFile>(path);
        } catch (const FileOpenError& e) {
            // An OSError subclass chosen by errno (FileNotFoundError, PermissionError, ...),
            // like open() raises. A missing *part* of a split model is a GGUFError instead.
            PyObject* args = Py_BuildValue("(iss)", e.err, e.what(), e.path.c_str());
            if (args == nullptr) throw py::error_already_set();
            PyErr_SetObject(PyExc_OSError, args);
            Py_DECREF(args);
            throw py::error_already_set();
        }
    }

    std::shared_ptr<GGUFFile> get() const {
        std::shared_ptr<GGUFFile> f = file_;
        if (!f) throw InvalidArgument("I/O operation on a closed GGUFFile");
        return f;
    }

    void close() { file_.reset(); }
    bool closed() const { return !file_; }

    py::dict metadata() const {
        auto f = get();
        py::dict d;
        for (const MetaEntry& e : f->metadata()) d[py::str(e.key)] = convert(*f, e.value, e.key);
        return d;
    }

    py::dict metadata_types() const {
        auto f = get();
        py::dict d;
        for (const MetaEntry& e : f->metadata()) d[py::str(e.key)] = type_description(e.value);
        return d;
    }

    // (name, ne, type name, type id, absolute offset, nbytes, n_elements, part) per tensor, in file order.
    py::list tensor_infos() const {
        auto f = get();
        py::list out;
        for (const GGUFTensor& t : f->tensors()) {
            const TensorInfo& i = *t.info;
            py::tuple ne(i.n_dims);
            for (uint32_t d = 0; d < i.n_dims; ++d) ne[d] = py::int_(i.ne[d]);
            out.append(py::make_tuple(i.name, ne, i.traits->name, i.type_id, i.abs_offset, i.nbytes, i.n_elements,
                                      t.part));
        }
        return out;
    }

    const GGUFTensor& tensor(const GGUFFile& f, const std::string& name) const {
        const GGUFTensor* t = f.find_tensor(name);
        if (!t) throw py::key_error("no tensor named '" + name + "' in " + f.path());
        return *t;
    }

    py::array raw(const std::string& name) const {
        auto f = get();
        const GGUFTensor& t = tensor(*f, name);
        // The capsule owns a reference to the mapping; numpy keeps the capsule as the base.
        auto* keep = new std::shared_ptr<const MappedFile>(f->mapping(t.part));
        py::capsule base(keep, [](void* p) { delete static_cast<std::shared_ptr<const MappedFile>*>(p); });
        py::array a(py::dtype::of<uint8_t>(), {static_cast<py::ssize_t>(t.info->nbytes)}, {py::ssize_t{1}},
                    t.data, base);
        // The mapping is PROT_READ: a write would fault, so the view is read-only
        // (and numpy refuses to make it writeable, since the capsule is no buffer).
        a.attr("setflags")(py::arg("write") = false);
        return a;
    }

    py::array dequantize(const std::string& name, const std::string& isa_name) const {
        auto f = get();
        const GGUFTensor& t = tensor(*f, name);
        const TensorInfo& i = *t.info;
        if (!i.traits->can_dequantize)
            throw InvalidArgument("tensor '" + name + "' has type " + i.traits->name +
                                  ", which this engine cannot dequantize");
        Isa isa = parse_isa(isa_name);
        std::vector<py::ssize_t> shape;
        for (uint32_t d = i.n_dims; d-- > 0;) shape.push_back(static_cast<py::ssize_t>(i.ne[d]));
        py::array_t<float> out(shape);
        float* dst = out.mutable_data();
        {
            py::gil_scoped_release nogil;
            const int64_t row = i.ne[0];
            const int64_t rows = i.n_elements / row;
            const uint64_t row_bytes = static_cast<uint64_t>(row / i.traits->block_size) * i.traits->type_size;
            const TensorType type = static_cast<TensorType>(i.type_id);
            for (int64_t r = 0; r < rows; ++r)
                dequantize_row(type, t.data + static_cast<uint64_t>(r) * row_bytes, dst + r * row, row, isa);
        }
        return std::move(out);
    }

    std::shared_ptr<GGUFFile> file_;
};

}  // namespace

void bind_gguf(py::module_& m) {
    py::class_<PyGGUFFile>(m, "_GGUFFile", "Native GGUF reader; use metallic_native.GGUFFile.")
        .def(py::init<const std::string&>(), py::arg("path"))
        .def_property_readonly("path", [](const PyGGUFFile& s) { return s.get()->path(); })
        .def_property_readonly("version", [](const PyGGUFFile& s) { return s.get()->version(); })
        .def_property_readonly("alignment", [](const PyGGUFFile& s) { return s.get()->header().alignment; })
        .def_property_readonly("data_offset", [](const PyGGUFFile& s) { return s.get()->header().data_offset; })
        .def_property_readonly("part_paths", [](const PyGGUFFile& s) {
            std::vector<std::string> out;
            for (const auto& p : s.get()->parts()) out.push_back(p.map->path());
            return out;
        })
        .def_property_readonly("closed", &PyGGUFFile::closed)
        .def("metadata", &PyGGUFFile::metadata)
        .def("metadata_types", &PyGGUFFile::metadata_types)
        .def("tensor_infos", &PyGGUFFile::tensor_infos)
        .def("raw", &PyGGUFFile::raw, py::arg("name"))
        .def("dequantize", &PyGGUFFile::dequantize, py::arg("name"), py::arg("isa") = "auto")
        .def("close", &PyGGUFFile::close)
        // The typed C++ accessors model loaders use (GGUFFile::get_*), exposed
        // so tests can check their conversions and errors.
        .def("_typed_get", [](const PyGGUFFile& s, const std::string& key, const std::string& kind) -> py::object {
            auto f = s.get();
            if (kind == "int") return py::cast(f->get_int(key));
            if (kind == "float") return py::cast(f->get_float(key));
            if (kind == "bool") return py::cast(f->get_bool(key));
            if (kind == "string") return py::cast(f->get_string(key));
            if (kind == "string_array") {
                py::list out;
                for (std::string_view v : f->get_string_array(key)) out.append(py::bytes(v.data(), v.size()));
                return std::move(out);
            }
            if (kind == "int_array") return py::cast(f->get_int_array(key));
            if (kind == "float_array") return py::cast(f->get_float_array(key));
            throw InvalidArgument("unknown kind '" + kind + "'");
        });

    // Native parse only (no Python objects built), for bench/bench_parse.py.
    m.def("_gguf_parse_only", [](const std::string& path) {
        py::gil_scoped_release nogil;
        GGUFFile f(path);
        return f.tensors().size();
    });
}

}  // namespace mn::python
