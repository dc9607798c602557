// The kernels' worker threads: started once, kept for the process, handed one job at a time.
//
// Starting threads per call cost ~65 us per kernel call (RMVPE makes ~140 calls per forward, the synthesizer
// ~1000). Between jobs a worker spins for SPIN before it sleeps: back-to-back kernel calls (a few hundred us of
// Python between them) find it awake, and a sleeping worker uses no core, unlike OpenMP's, whose idle spinning
// took the cores from MLX's next ops.
#include "kernels.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <pthread.h>
#include <system_error>
#include <vector>

namespace {

constexpr auto SPIN = std::chrono::microseconds(200);

struct Pool {
  std::mutex busy;  // one job at a time; a concurrent caller starts threads of its own
  std::mutex m;
  std::condition_variable wake, done;
  std::atomic<unsigned> generation{0};
  std::atomic<int> remaining{0};
  const std::function<void(int)>* job = nullptr;
  int job_workers = 0;
  int started = 0;  // pool threads running: workers 1 .. started

  // seen: the generation before the worker's first job (read by the starting thread, before it posts the job)
  void loop(int index, unsigned seen) {
    for (;;) {
      const auto until = std::chrono::steady_clock::now() + SPIN;
      while (generation.load(std::memory_order_acquire) == seen && std::chrono::steady_clock::now() < until) {
#if defined(__x86_64__)
        __builtin_ia32_pause();
#endif
      }
      if (generation.load(std::memory_order_acquire) == seen) {
        std::unique_lock<std::mutex> lock(m);
        wake.wait(lock, [&] { return generation.load(std::memory_order_acquire) != seen; });
      }
      seen = generation.load(std::memory_order_acquire);
      if (index < job_workers) {
        (*job)(index);
        if (remaining.fetch_sub(1, std::memory_order_acq_rel) == 1) {
          std::lock_guard<std::mutex> lock(m);
          done.notify_one();
        }
      }
    }
  }

  // Starts pool threads up to n - 1 (as many as can be had); returns the workers available, caller included.
  int grow(int n) {
    for (; started < n - 1; ++started) {
      try {
        std::thread(&Pool::loop, this, started + 1, generation.load(std::memory_order_acquire)).detach();
      } catch (const std::system_error&) {
        break;
      }
    }
    return std::min(n, started + 1);
  }
};

Pool* current = nullptr;  // never destroyed: its detached threads live until the process exits

Pool& pool() {
  static std::once_flag once;
  std::call_once(once, [] {
    current = new Pool;
    // a forked child has none of the parent's threads (and maybe a locked mutex): it starts a pool of its own
    pthread_atfork(nullptr, nullptr, [] { current = new Pool; });
  });
  return *current;
}

void spawned(int n, const std::function<void(int)>& work) {
  std::vector<std::thread> threads;
  for (int t = 1; t < n; ++t) {
    try {
      threads.emplace_back(work, t);
    } catch (const std::system_error&) {  // no thread to be had: the others take its share
      break;
    }
  }
  work(0);
  for (auto& t : threads) t.join();
}

}  // namespace

void parallel(int n, const std::function<void(int)>& work) {
  if (n <= 1) {
    work(0);
    return;
  }
  Pool& p = pool();
  std::unique_lock<std::mutex> busy(p.busy, std::try_to_lock);
  if (!busy) {  // another thread's job holds the pool
    spawned(n, work);
    return;
  }
  n = p.grow(n);
  p.job = &work;
  p.job_workers = n;
  p.remaining.store(n - 1, std::memory_order_release);
  {
    std::lock_guard<std::mutex> lock(p.m);
    p.generation.fetch_add(1, std::memory_order_acq_rel);
  }
  p.wake.notify_all();
  work(0);
  const auto until = std::chrono::steady_clock::now() + SPIN;
  while (p.remaining.load(std::memory_order_acquire) > 0 && std::chrono::steady_clock::now() < until) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
  }
  std::unique_lock<std::mutex> lock(p.m);
  p.done.wait(lock, [&] { return p.remaining.load(std::memory_order_acquire) == 0; });
}
