# The README's two commands: `make demo` and `make test`. Both set up, build, then run.
BUILD_DIR ?= build
PYTHON ?= /usr/bin/python3
CMAKE_FLAGS ?=
JOBS ?= $(shell nproc)
MODEL ?= models/fmnist_resnet.onnx
SEED_MODEL ?= models/mlperf-v0.5-int4-resnet50/model

.PHONY: all setup build demo test test-cpp test-python test-sanitize fuzz-build test-fuzz clean

all: build

setup:
	bash scripts/setup.sh

build: setup
	cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)
	cmake --build $(BUILD_DIR) -j $(JOBS)

demo: build
	$(BUILD_DIR)/nibble inspect $(MODEL) | tail -n 4
	$(BUILD_DIR)/nibble eval $(MODEL) --data fashion-mnist:test
	rm -rf $(BUILD_DIR)/demo && mkdir -p $(BUILD_DIR)/demo
	$(BUILD_DIR)/nibble calibrate $(MODEL) --samples 1000 --method mse --precision int4 -o $(BUILD_DIR)/demo/model.calib
	$(BUILD_DIR)/nibble quantize $(MODEL) --calib $(BUILD_DIR)/demo/model.calib --precision int4 --gptq -o $(BUILD_DIR)/demo/int4.nbl
	$(BUILD_DIR)/nibble eval $(BUILD_DIR)/demo/int4.nbl --data fashion-mnist:test
	@if [ -f $(SEED_MODEL)/model ]; then \
	  echo "classifying the demo photos with the INT4 ResNet-50 in $(SEED_MODEL)"; \
	  $(BUILD_DIR)/nibble classify $(SEED_MODEL) data/images/chelsea.png data/images/coffee.png data/images/rocket.jpg; \
	else \
	  echo "seed model not found at $(SEED_MODEL) (set SEED_MODEL=...): skipping classify"; \
	fi

test: build
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS) -E onnx_node_conformance
	$(BUILD_DIR)/tests/cpp/nibble_conformance
	NIBBLE_BIN=$(abspath $(BUILD_DIR))/nibble $(PYTHON) -m pytest -q tests/python

# The C++ tests (the fuzz corpus and its kept crash inputs among them) and the command-line
# tests again under AddressSanitizer and UndefinedBehaviorSanitizer.
test-sanitize: setup
	cmake -S . -B $(BUILD_DIR)-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DNIBBLE_SANITIZE=ON -DNIBBLE_CUDA=OFF \
	  -DNIBBLE_PYTHON=OFF
	cmake --build $(BUILD_DIR)-asan -j $(JOBS)
	cd $(BUILD_DIR)-asan && ctest --output-on-failure -j $(JOBS)
	NIBBLE_BIN=$(abspath $(BUILD_DIR))-asan/nibble NIBBLE_PYTHON_PACKAGE=off $(PYTHON) -m pytest -q tests/python

# The libFuzzer targets (clang), and a short run of each from the seed corpus
# (FUZZ_SECONDS each; docs/reliability.md runs them longer).
FUZZ_SECONDS ?= 30
fuzz-build: setup
	CC=clang CXX=clang++ cmake -S . -B $(BUILD_DIR)-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DNIBBLE_FUZZ=ON \
	  -DNIBBLE_BUILD_TESTS=OFF -DNIBBLE_WERROR=OFF
	cmake --build $(BUILD_DIR)-fuzz -j $(JOBS)

test-fuzz: fuzz-build
	bash tests/fuzz/run.sh $(BUILD_DIR)-fuzz $(FUZZ_SECONDS)

clean:
	rm -rf $(BUILD_DIR) $(BUILD_DIR)-asan $(BUILD_DIR)-fuzz
