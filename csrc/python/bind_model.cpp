// Python binding of the inference engine: metallic_native._core.Model.
// The Python class metallic_native.Model (model.py) wraps it with name
// resolution and defaults.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <mutex>

#include "backend/cpu/cpu_backend.h"
#include "common/error.h"
#include "gguf/gguf_file.h"
#include "model/transformer.h"
#include "python/bindings.h"

namespace py = pybind11;

namespace mn::python {

namespace {

constexpr int kDefaultContextCap = 4096;

class ModelHandle {
public:
    ModelHandle(const std::string& path, int n_ctx, int n_threads, const std::string& backend,
                const std::string& kv_type, const std::string& isa, int max_batch, const std::string& activations) {
        py::gil_scoped_release nogil;
        file_ = std::make_shared<GGUFFile>(path);
        ModelConfig config = ModelConfig::from_gguf(*file_);
        const GGUFFile& f = *file_;
        ModelWeights weights = load_weights(
            config,
            [&f](const std::string& name) {
                const GGUFTensor* t = f.find_tensor(name);
                return t ? TensorLookup{t->info, t->data} : TensorLookup{};
            },
            path);
        vocab_ = int(weights.token_embd.ne1);
        if (config.vocab_size == 0) config.vocab_size = vocab_;
        TransformerOptions options;
        // n_ctx 0: the model's trained context, capped so a long-context model
        // does not reserve a cache nobody asked for.
        options.n_ctx = n_ctx > 0 ? n_ctx : std::min(config.n_ctx_train, kDefaultContextCap);
        options.max_batch = max_batch;
        if (kv_type == "f16") options.kv_type = DType::F16;
        else if (kv_type == "f32") options.kv_type = DType::F32;
        else throw InvalidArgument("kv_type must be 'f16' or 'f32', got '" + kv_type + "'");
        BackendOptions bo;
        bo.n_threads = n_threads;
        bo.isa = isa;
        bo.activations = activations;
        transformer_ = std::make_unique<Transformer>(std::move(config), std::move(weights), make_backend(backend, bo),
                                                     options);
    }

    Transformer& get() {
        if (!transformer_) throw InvalidArgument("Model is closed");
        return *transformer_;
    }

    py::object eval(py::array_t<int64_t, py::array::c_style | py::array::forcecast> tokens, bool all_logits,
                    bool capture_hidden, int top_k, bool logsumexp) {
        if (tokens.ndim() != 1) throw InvalidArgument("tokens must be a 1-D sequence of token ids");
        const int64_t n = tokens.shape(0);
        if (n == 0) throw InvalidArgument("tokens is empty");
        std::vector<int32_t> tok(n);
        const int64_t* src = tokens.data();
        for (int64_t i = 0; i < n; ++i) {
            if (src[i] < 0 || src[i] >= vocab_)
                throw InvalidArgument("token id " + std::to_string(src[i]) + " at index " + std::to_string(i) +
                                      " is outside the vocabulary [0, " + std::to_string(vocab_) + ")");
            tok[i] = int32_t(src[i]);
        }
        if (top_k != 0 && (all_logits || capture_hidden))
            throw InvalidArgument("top_k cannot be combined with all_logits or capture_hidden");
        if (logsumexp && top_k == 0) throw InvalidArgument("logsumexp needs top_k >= 1");
        if (top_k < 0 || top_k > vocab_)
            throw InvalidArgument("top_k must be in [1, " + std::to_string(vocab_) + "] (or 0 for all logits), got " +
                                  std::to_string(top_k));
        auto lock = acquire();
        Transformer& t = get();
        t.check_append(n);  // before n is narrowed to int for eval
        if (top_k > 0) {
            py::array_t<int32_t> ids(top_k);
            py::array_t<float> vals(top_k);
            int32_t* ip = ids.mutable_data();
            float* vp = vals.mutable_data();
            float lse = 0.0f;
            {
                py::gil_scoped_release nogil;
                t.eval_top_k(tok.data(), int(n), top_k, ip, vp, logsumexp ? &lse : nullptr);
            }
            if (logsumexp) return py::make_tuple(std::move(ids), std::move(vals), lse);
            return py::make_tuple(std::move(ids), std::move(vals));
        }
        py::array_t<float> logits(all_logits ? std::vector<py::ssize_t>{py::ssize_t(n), py::ssize_t(vocab_)}
                                             : std::vector<py::ssize_t>{py::ssize_t(vocab_)});
        HiddenCapture capture;
        float* out = logits.mutable_data();
        {
            py::gil_scoped_release nogil;
            t.eval(tok.data(), int(n), out, all_logits, capture_hidden ? &capture : nullptr);
        }
        if (!capture_hidden) return std::move(logits);
        const int d = t.config().d_model;
        py::array_t<float> hidden({py::ssize_t(capture.states.size()), py::ssize_t(n), py::ssize_t(d)});
        float* h = hidden.mutable_data();
        for (size_t i = 0; i < capture.states.size(); ++i)
            std::copy(capture.states[i].begin(), capture.states[i].end(), h + i * size_t(n) * d);
        return py::make_tuple(std::move(logits), std::move(hidden));
    }

    // One call at a time per model. The lock is taken with the GIL released,
    // so a thread waiting here never blocks one that needs the GIL to finish.
    std::unique_lock<std::mutex> acquire() {
        py::gil_scoped_release nogil;
        return std::unique_lock<std::mutex>(mutex_);
    }

    void close() {
        auto lock = acquire();
        py::gil_scoped_release nogil;  // freeing device memory and unmapping can take a while
        transformer_.reset();
        file_.reset();
    }

    bool closed() const { return !transformer_; }

    py::dict config() {
        const ModelConfig& c = get().config();
        py::dict d;
        d["architecture"] = c.arch_name;
        d["n_layers"] = c.n_layers;
        d["d_model"] = c.d_model;
        d["n_heads"] = c.n_heads;
        d["n_kv_heads"] = c.n_kv_heads;
        d["head_dim"] = c.head_dim;
        d["d_ff"] = c.d_ff;
        d["vocab_size"] = vocab_;
        d["n_ctx_train"] = c.n_ctx_train;
        d["rms_eps"] = c.rms_eps;
        d["rope_base"] = c.rope_base;
        d["rope_style"] = c.rope_style == RopeStyle::NeoX ? "neox" : "normal";
        return d;
    }

private:
    std::mutex mutex_;
    std::shared_ptr<GGUFFile> file_;
    std::unique_ptr<Transformer> transformer_;
    int vocab_ = 0;
};

}  // namespace

void bind_model(py::module_& m) {
    py::class_<ModelHandle>(m, "Model")
        .def(py::init<const std::string&, int, int, const std::string&, const std::string&, const std::string&, int,
                      const std::string&>(),
             py::arg("path"), py::arg("n_ctx") = 0, py::arg("n_threads") = 0, py::arg("backend") = "auto",
             py::arg("kv_type") = "f16", py::arg("isa") = "auto", py::arg("max_batch") = 256, py::arg("activations") = "q8")
        .def("eval", &ModelHandle::eval, py::arg("tokens"), py::arg("all_logits") = false,
             py::arg("capture_hidden") = false, py::arg("top_k") = 0, py::arg("logsumexp") = false)
        .def("reset", [](ModelHandle& h) { auto l = h.acquire(); h.get().reset(); })
        .def("truncate",
             [](ModelHandle& h, int n) {
                 auto l = h.acquire();
                 Transformer& t = h.get();
                 if (n < 0 || n > t.n_past())
                     throw InvalidArgument("truncate: n must be in [0, " + std::to_string(t.n_past()) + "], got " +
                                           std::to_string(n));
                 t.truncate(n);
             })
        .def_property_readonly("n_past", [](ModelHandle& h) { return h.get().n_past(); })
        .def_property_readonly("n_ctx", [](ModelHandle& h) { return h.get().n_ctx(); })
        .def_property_readonly("backend", [](ModelHandle& h) { return h.get().backend().name(); })
        .def_property_readonly("n_threads",
                               [](ModelHandle& h) {
                                   auto* cpu = dynamic_cast<CpuBackend*>(&h.get().backend());
                                   return cpu ? cpu->n_threads() : 0;
                               })
        .def_property_readonly("config", &ModelHandle::config)
        .def_property_readonly("backend_counters",
                               [](ModelHandle& h) {
                                   py::dict d;
                                   for (const auto& [name, value] : h.get().backend().counters()) d[py::str(name)] = value;
                                   return d;
                               })
        .def_property_readonly("closed", &ModelHandle::closed)
        .def("close", &ModelHandle::close);
    m.def("supported_architectures", [] { return supported_architectures(); });
    m.def("backend_available", [](const std::string& name) { return backend_available(name); }, py::arg("name"),
          "Whether Model(..., backend=name) can run here: compiled in and, for GPUs, a device visible.");
}

}  // namespace mn::python
