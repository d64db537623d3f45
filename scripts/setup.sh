#!/usr/bin/env bash
# Installs every dependency of nibble from Debian's packages. Idempotent: does nothing when
# everything is already installed.
set -euo pipefail

packages=(
  build-essential g++ cmake ninja-build pkg-config clang libclang-rt-14-dev
  libonnx-dev libprotobuf-dev protobuf-compiler
  libcli11-dev nlohmann-json3-dev libfmt-dev libstb-dev zlib1g-dev libturbojpeg0-dev libpng-dev
  libopenblas-dev liblapacke-dev pybind11-dev python3-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libonnx-testdata dataset-fashion-mnist
  python3 python3-torch python3-torchvision python3-onnx python3-numpy python3-pytest python3-matplotlib python3-pil
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#packages[@]} dependencies are installed"
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update
$sudo apt-get install -y --no-install-recommends "${missing[@]}"
