// Loads a model through the installed nibble library, runs it on zeros and prints the outputs'
// shapes: `consumer MODEL`.
#include <cstdio>

#include "nibble/engine.h"
#include "nibble/error.h"
#include "nibble/model_loader.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: consumer MODEL\n");
    return 2;
  }
  try {
    const nibble::Engine engine(nibble::load_model(argv[1]));
    std::vector<nibble::Tensor> inputs;
    for (const nibble::ValueInfo& vi : engine.graph().inputs) {
      nibble::Shape shape = *vi.shape;
      for (int64_t& d : shape) d = d > 0 ? d : 2;
      inputs.emplace_back(*vi.dtype, shape);
    }
    for (const nibble::Tensor& t : engine.run(inputs)) std::printf("output %s\n", nibble::shape_str(t.shape()).c_str());
  } catch (const nibble::Error& e) {
    std::fprintf(stderr, "consumer: %s\n", e.what());
    return 2;
  }
  return 0;
}
