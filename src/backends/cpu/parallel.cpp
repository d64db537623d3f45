// The CPU backend's thread pool: workers spin briefly, then sleep on a condition variable between jobs.
#include "backends/cpu/parallel.h"

#include "nibble/engine.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace nibble::cpu {

namespace {

class Pool {
 public:
  explicit Pool(int threads) {
    for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { work(); });
  }

  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_.store(true);
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
  }

  int threads() const { return static_cast<int>(workers_.size()) + 1; }

  void run(int64_t n, const std::function<void(int64_t)>& fn) {
    // An atomic flag rather than a mutex: a task that calls back in on the owning thread must see
    // "busy", and try_lock on a mutex the thread already holds is undefined.
    bool expected = false;
    if (n <= 1 || workers_.empty() || !busy_.compare_exchange_strong(expected, true)) {
      for (int64_t i = 0; i < n; ++i) fn(i);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &fn;
      count_ = n;
      next_.store(0);
      active_.store(static_cast<int>(workers_.size()));
      generation_.store(generation_.load() + 1, std::memory_order_release);
    }
    wake_.notify_all();
    drain(fn, n);
    // The workers usually finish within microseconds of the caller: spin before sleeping.
    for (int i = 0; i < kSpins && active_.load(std::memory_order_acquire) != 0; ++i) pause();
    {
      std::unique_lock<std::mutex> lock(mutex_);
      done_.wait(lock, [this] { return active_.load() == 0; });
      job_ = nullptr;
    }
    busy_.store(false);
  }

 private:
  void drain(const std::function<void(int64_t)>& fn, int64_t n) {
    for (int64_t i = next_.fetch_add(1); i < n; i = next_.fetch_add(1)) fn(i);
  }

  static void pause() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#else
    std::this_thread::yield();
#endif
  }

  void work() {
    uint64_t seen = 0;
    for (;;) {
      // Jobs come in bursts (one per layer): spin a little before sleeping.
      for (int i = 0; i < kSpins && generation_.load(std::memory_order_acquire) == seen && !stop_.load(); ++i) pause();
      const std::function<void(int64_t)>* fn;
      int64_t n;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stop_.load() || generation_.load() != seen; });
        if (stop_.load()) return;
        seen = generation_.load();
        fn = job_;
        n = count_;
      }
      drain(*fn, n);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (active_.fetch_sub(1) == 1) done_.notify_one();
      }
    }
  }

  // About 30 us of pause instructions (their latency is 40 to 140 cycles by processor).
  static constexpr int kSpins = 1000;

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  const std::function<void(int64_t)>* job_ = nullptr;
  int64_t count_ = 0;
  std::atomic<int> active_{0};
  std::atomic<uint64_t> generation_{0};  // written under mutex_, read by spinning workers too
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> next_{0};
  std::atomic<bool> busy_{false};
};

int default_threads() { return static_cast<int>(std::max(1u, std::thread::hardware_concurrency())); }

std::mutex pool_mutex;
std::unique_ptr<Pool>& pool_slot() {
  static std::unique_ptr<Pool> p;
  return p;
}

Pool& pool() {
  const std::lock_guard<std::mutex> lock(pool_mutex);
  auto& p = pool_slot();
  if (!p) p = std::make_unique<Pool>(default_threads());
  return *p;
}

}  // namespace

int thread_count() { return pool().threads(); }

void parallel_for(int64_t n, const std::function<void(int64_t)>& fn) { pool().run(n, fn); }

void set_thread_count(int threads) {
  const std::lock_guard<std::mutex> lock(pool_mutex);
  auto& p = pool_slot();
  const int n = threads > 0 ? threads : default_threads();
  if (!p || p->threads() != n) p = std::make_unique<Pool>(n);
}

}  // namespace nibble::cpu

namespace nibble {

void set_cpu_threads(int threads) { cpu::set_thread_count(threads); }
int cpu_threads() { return cpu::thread_count(); }

}  // namespace nibble
