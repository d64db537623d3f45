# The README's two commands: `make demo` and `make test`. Both set up, build, then run.
BUILD_DIR ?= build
PYTHON ?= /usr/bin/python3
CMAKE_FLAGS ?=
JOBS ?= $(shell nproc)
MODEL ?= models/fmnist_resnet.onnx
SEED_MODEL ?= ../shared/models/mlperf-v0.5-int4-resnet50/model

.PHONY: all setup build demo test test-cpp test-python test-sanitize clean

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

# The C++ tests again under AddressSanitizer and UndefinedBehaviorSanitizer.
test-sanitize: setup
	cmake -S . -B $(BUILD_DIR)-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DNIBBLE_SANITIZE=ON -DNIBBLE_CUDA=OFF
	cmake --build $(BUILD_DIR)-asan -j $(JOBS)
	cd $(BUILD_DIR)-asan && ctest --output-on-failure -j $(JOBS)

clean:
	rm -rf $(BUILD_DIR) $(BUILD_DIR)-asan
