#!/usr/bin/env bash
# Installs the build in BUILD_DIR under a fresh prefix, builds tests/install's consumer against
# it with find_package(nibble), runs it on a model, and checks the pkg-config file and the
# installed command and Python package.
#   tests/install/run.sh BUILD_DIR
set -euo pipefail
build=$(cd "${1:?usage: tests/install/run.sh BUILD_DIR}" && pwd)
root=$(cd "$(dirname "$0")/../.." && pwd)
prefix="$build/install-test/prefix"
rm -rf "$build/install-test"
cmake --install "$build" --prefix "$prefix" > /dev/null
cmake -S "$root/tests/install" -B "$build/install-test/consumer" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$prefix" > "$build/install-test/configure.log"
cmake --build "$build/install-test/consumer" > "$build/install-test/build.log"
out=$("$build/install-test/consumer/consumer" "$root/models/fmnist_resnet.onnx")
[ "$out" = "output [2, 10]" ] || { echo "consumer printed: $out" >&2; exit 1; }
PKG_CONFIG_PATH="$prefix/lib/pkgconfig" pkg-config --cflags --libs nibble | grep -q -- "-lnibble"
"$prefix/bin/nibble" --version | grep -q "nibble 0.1.0"
"$prefix/bin/nibble" classify "$root/models/mlperf-v0.5-int4-resnet50/model" "$root/data/images/coffee.png" \
  | grep -q espresso
if [ -d "$build/python/nibble" ]; then
  site=$(find "$prefix" -type d -path "*dist-packages" | head -n 1)
  (cd / && PYTHONPATH="$site" /usr/bin/python3 -c "import nibble; assert nibble.load('$root/models/fmnist_resnet.onnx').outputs[0][0] == 'logits'")
fi
echo "install test: consumer, pkg-config, command and Python package OK"
