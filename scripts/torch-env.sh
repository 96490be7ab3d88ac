# Sourced, not run: makes PyTorch 2.11 available to build and test glia's
# `torch` feature (docs/torch.md). Creates a virtual environment with the
# PyPI `torch==2.11.0` wheel (about 4.6 GB with its CUDA libraries) the first
# time, in $GLIA_TORCH_VENV (default: target/torch-venv), and exports what
# tch's build needs to link against it (LIBTORCH_USE_PYTORCH=1).
#
#   source scripts/torch-env.sh && cargo test -p glia-e2e --features torch

glia_torch_venv=${GLIA_TORCH_VENV:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/torch-venv}
if ! "$glia_torch_venv/bin/python" -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.11.0")' 2>/dev/null; then
  echo "installing torch==2.11.0 into $glia_torch_venv (first time only)" >&2
  python3 -m venv "$glia_torch_venv"
  "$glia_torch_venv/bin/pip" install --quiet --disable-pip-version-check torch==2.11.0
fi
export VIRTUAL_ENV=$glia_torch_venv
export PATH="$glia_torch_venv/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
unset glia_torch_venv
