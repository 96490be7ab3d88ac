#!/usr/bin/env bash
# Every test of the project: the workspace's (the default build), then the
# torch backend's on the CPU, built with the `torch` feature against the PyPI
# torch==2.11.0 wheel (installed into target/torch-venv the first time, about
# 4.6 GB; scripts/torch-env.sh). GLIA_TORCH_TESTS=0 skips the second part.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace

if [ "${GLIA_TORCH_TESTS:-1}" != 0 ]; then
  # shellcheck source=torch-env.sh
  source scripts/torch-env.sh
  # The backend, the registry and the API with PyTorch models; the rest of
  # the suite does not change with the feature and ran above. Features are
  # resolved for the whole workspace, as above, so only the crates that
  # gain the feature build again.
  cargo test --workspace --features glia-e2e/torch --lib --test e2e -- nn:: torch:: models:: nn_probe::
fi
