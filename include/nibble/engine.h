// Executes a graph with the reference backend.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "nibble/graph.h"

namespace nibble {

// Where kernels come from. `cpu` takes the vectorized CPU kernel of an op where there is one
// (identical results) and the reference kernel elsewhere; `ref` uses reference kernels only.
enum class Backend { ref, cpu };

class Engine {
 public:
  // Plans execution; throws nibble::Error (naming op type, node and model file) when a node
  // uses an op the backend does not support or reads a value nothing produces.
  explicit Engine(Graph graph, Backend backend = Backend::cpu);

  const Graph& graph() const { return graph_; }

  // Checks inputs against the graph's declared inputs (count, dtype, rank, fixed dims).
  struct InputMismatch {
    size_t index;  // the offending input; inputs.size() when the count is wrong
    std::string problem;
  };
  std::optional<InputMismatch> check_inputs(const std::vector<Tensor>& inputs) const;

  // Runs the graph on inputs given in the order of graph().inputs; returns the outputs in
  // the order of graph().outputs. Thread-safe: concurrent calls share nothing mutable.
  std::vector<Tensor> run(const std::vector<Tensor>& inputs) const;

 private:
  struct Step {
    size_t node;
    std::vector<int> inputs;   // value slots, -1 for omitted optional inputs
    std::vector<int> outputs;  // value slots, -1 for omitted optional outputs
    std::vector<int> release;  // slots whose last reader is this step
  };

  Graph graph_;
  std::vector<Tensor> constants_;  // per slot: initializer value or empty
  std::vector<int> input_slots_;
  std::vector<int> output_slots_;
  std::vector<Step> steps_;
  using KernelFn = void (*)(const Node&, const std::vector<const Tensor*>&, std::vector<Tensor>&);
  std::vector<KernelFn> kernels_;  // per step, the backend function
  size_t slot_count_ = 0;
};

// Threads of the CPU backend's kernels, the calling thread included (0: one per core, the
// default). Takes effect for runs that start afterwards; call it while no run is in progress.
void set_cpu_threads(int threads);
int cpu_threads();

// The op types in `graph` that the reference backend cannot run (empty when none).
std::vector<std::string> unsupported_ops(const Graph& graph);

}  // namespace nibble
