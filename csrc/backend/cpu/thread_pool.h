// A small persistent thread pool for the CPU backend's ops.
//
// A decode step issues a few hundred short ops, so dispatch latency matters
// more than generality: workers spin briefly on a generation counter before
// sleeping, and the calling thread takes part as thread 0.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace mn {

class ThreadPool {
public:
    explicit ThreadPool(int n_threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return n_threads_; }

    // Calls fn(thread_index, n_threads) once on each thread and returns when all are done.
    template <typename F>
    void run(F&& fn) {
        using Fn = std::remove_reference_t<F>;
        auto trampoline = [](void* ctx, int i, int n) { (*static_cast<Fn*>(ctx))(i, n); };
        dispatch(trampoline, const_cast<void*>(static_cast<const void*>(&fn)));
    }

    // Splits [0, n) into chunks of `grain` handed out dynamically; calls fn(begin, end).
    template <typename F>
    void parallel_for(int64_t n, int64_t grain, F&& fn) {
        if (n <= 0) return;
        if (grain < 1) grain = 1;
        if (n_threads_ == 1 || n <= grain) { fn(int64_t(0), n); return; }
        std::atomic<int64_t> next{0};
        run([&](int, int) {
            for (;;) {
                const int64_t b = next.fetch_add(grain, std::memory_order_relaxed);
                if (b >= n) break;
                fn(b, b + grain < n ? b + grain : n);
            }
        });
    }

    // Splits [0, n) into one contiguous share per thread, walked front to back
    // in chunks of `grain` (one sequential stream per thread, which the
    // hardware prefetchers follow); a thread done with its share takes chunks
    // from the back of the others', so a thread whose core ran late (a busy
    // host, another process) is relieved instead of waited for. Calls fn(begin, end).
    template <typename F>
    void parallel_shares(int64_t n, int64_t grain, F&& fn) {
        if (n <= 0) return;
        if (grain < 1) grain = 1;
        const int64_t chunks = (n + grain - 1) / grain;
        if (n_threads_ == 1 || chunks == 1) { fn(int64_t(0), n); return; }
        // Share t holds chunks [front, back), packed as front << 32 | back in one atomic.
        constexpr int kMaxShares = 64;
        struct alignas(64) Share { std::atomic<uint64_t> range; };
        Share shares[kMaxShares];
        const int n_shares = n_threads_ < kMaxShares ? n_threads_ : kMaxShares;
        for (int t = 0; t < n_shares; ++t) {
            const uint64_t front = uint64_t(chunks * t / n_shares), back = uint64_t(chunks * (t + 1) / n_shares);
            shares[t].range.store(front << 32 | back, std::memory_order_relaxed);
        }
        auto take = [&](int t, bool from_front) -> int64_t {  // a chunk index, or -1
            uint64_t r = shares[t].range.load(std::memory_order_relaxed);
            for (;;) {
                const uint64_t front = r >> 32, back = r & 0xFFFFFFFFu;
                if (front >= back) return -1;
                const uint64_t next = from_front ? (front + 1) << 32 | back : front << 32 | (back - 1);
                if (shares[t].range.compare_exchange_weak(r, next, std::memory_order_relaxed))
                    return int64_t(from_front ? front : back - 1);
            }
        };
        auto chunk = [&](int64_t c) { fn(c * grain, c * grain + grain < n ? c * grain + grain : n); };
        run([&](int thread, int) {
            const int own = thread % n_shares;
            for (int64_t c; (c = take(own, true)) >= 0;) chunk(c);
            for (int k = 1; k < n_shares; ++k)
                for (int64_t c; (c = take((own + k) % n_shares, false)) >= 0;) chunk(c);
        });
    }

private:
    using Trampoline = void (*)(void*, int, int);
    void dispatch(Trampoline fn, void* ctx);
    void worker(int index);

    int n_threads_;
    std::vector<std::thread> workers_;
    std::atomic<uint64_t> generation_{0};
    std::atomic<int> pending_{0};
    std::atomic<bool> stop_{false};
    Trampoline job_fn_ = nullptr;
    void* job_ctx_ = nullptr;
    std::mutex mutex_;
    std::condition_variable wake_;
    std::atomic<int> sleepers_{0};
};

// Number of physical cores (hyper-threads of one core counted once).
int physical_core_count();

}  // namespace mn
