#!/usr/bin/env bash
# Packs what a GPU machine needs to run bench/hopper_check.sh into one folder (git-ignored
# .device/ by default): the CUDA build's nibble and nibble_tests (stripped) and the shared
# libraries they load that a CUDA image may lack, all xz-compressed. The seed model travels with the
# repository (models/mlperf-v0.5-int4-resnet50).
#   bench/pack_device.sh [BUILD_DIR] [DEST]
set -euo pipefail
BUILD=${1:-build}
DEST=${2:-.device}
rm -rf "$DEST"
mkdir -p "$DEST/bin" "$DEST/lib"
strip -o "$DEST/bin/nibble" "$BUILD/nibble"
strip -o "$DEST/bin/nibble_tests" "$BUILD/tests/cpp/nibble_tests"
for bin in "$DEST/bin/nibble" "$DEST/bin/nibble_tests"; do
  ldd "$bin" | awk '/=>/ {print $3}' | grep -E 'libfmt|libonnx|libprotobuf|libz\.|libcudart|libturbojpeg|libpng|libopenblas|liblapack|libblas|libgfortran|libquadmath' | while read -r lib; do
    cp -L "$lib" "$DEST/lib/"
  done
done
# The scripts that run them unpack them (the working tree that travels, the seed model
# included, is limited to 64 MiB: gzip's 39 MB did not fit beside it, xz's 29 MB do).
xz -T0 -6 "$DEST/bin/nibble" "$DEST/bin/nibble_tests" "$DEST"/lib/*
du -sh "$DEST"
