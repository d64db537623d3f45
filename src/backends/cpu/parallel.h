// A small persistent thread pool that spreads independent tasks over the machine's cores.
#pragma once

#include <cstdint>
#include <functional>

namespace nibble::cpu {

// Threads a parallel_for may use, the caller included (std::thread::hardware_concurrency()).
int thread_count();

// Runs fn(i) for every i in [0, n), spread over the pool. Tasks must write disjoint outputs, so
// results never depend on which thread ran what. When the pool is already busy (a concurrent
// Engine::run, or a nested call from inside a task) the caller runs every task itself.
void parallel_for(int64_t n, const std::function<void(int64_t)>& fn);

// Replaces the pool with one of `threads` threads (0: one per core); only while no parallel_for runs.
void set_thread_count(int threads);

}  // namespace nibble::cpu
