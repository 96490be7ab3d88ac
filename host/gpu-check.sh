#!/usr/bin/env bash
# The GPU device check for the torch backend (docs/torch.md).
#
#   host/gpu-check.sh prepare   on a build machine: builds glia (release, the
#                               torch feature), and gathers what the check
#                               needs into target/gpu-check/ (~55 MB)
#   host/gpu-check.sh run       on the GPU machine, from the repository root
#                               with target/gpu-check/ copied beside it:
#                               builds nothing, needs no network
#
# `run` uses the machine's Python with PyTorch 2.11 (CUDA) for libtorch and
# for the native baseline. It serves the `nn-probe` function with a TorchScript
# CNN, asks for target gpu, checks that glia's log names the CUDA device, that
# the GPU's outputs equal the CPU's (and Python torch's) within tolerance, and
# times an in-function `compute` against the same model called from Python
# torch on the GPU. It prints a Markdown report and writes it, with the raw
# numbers, to $OUT (or target/gpu-check/out). Exit status 0 when every check
# passes.
#
# GPU_CHECK_ALLOW_CPU=1 lets `run` finish on a machine without CUDA (a dry
# run of the script itself: the device checks then report "cpu" and fail
# soft). GPU_CHECK_PYTHON picks the Python (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."

bundle=target/gpu-check

case "${1:-}" in
prepare)
  # shellcheck source=../scripts/torch-env.sh
  source scripts/torch-env.sh
  cargo build --release --locked -p glia-host --features torch --bin glia
  # The nn-probe fixture, built for wasm32-wasip2 like the tests build it.
  cargo build --quiet --locked --manifest-path tests/fixtures/Cargo.toml \
    --target wasm32-wasip2 --release -p nn-probe --target-dir target/wasm
  rm -rf "$bundle"
  mkdir -p "$bundle"
  strip -o "$bundle/glia" target/release/glia
  cp target/wasm/wasm32-wasip2/release/nn_probe.wasm "$bundle/nn-probe.wasm"
  cp tests/fixtures/torch/cnn.pt tests/fixtures/torch/digits.pt \
    tests/fixtures/torch/reference.json host/gpu_check.py "$bundle/"
  du -sh "$bundle"
  echo "ready: copy the repository with $bundle/ to the GPU machine and run host/gpu-check.sh run"
  ;;
run)
  python=${GPU_CHECK_PYTHON:-python3}
  [ -x "$bundle/glia" ] || {
    echo "no $bundle/glia: run 'host/gpu-check.sh prepare' on a build machine first" >&2
    exit 2
  }
  torch_lib=$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
  export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  out=${OUT:-$bundle/out}
  mkdir -p "$out"
  exec "$python" "$bundle/gpu_check.py" --bundle "$bundle" --out "$out"
  ;;
*)
  echo "usage: host/gpu-check.sh prepare|run" >&2
  exit 2
  ;;
esac
