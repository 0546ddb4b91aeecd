# Sourced by the scripts: the one virtualenv the Python package is built and tested in. It lives
# outside the clone (torch from PyPI pulls several GB of CUDA wheels: installed once per machine,
# never per clone or per run); CAIRN_VENV overrides where.
export CAIRN_VENV="${CAIRN_VENV:-$HOME/.cache/cairn-venv}"
# What the Python tests import, pinned to the majors they were written against.
CAIRN_PY_REQUIREMENTS=(
  "maturin>=1.16,<2" "pytest>=8" "numpy>=2" "safetensors>=0.4"
  "torch>=2.4" "jax[cpu]>=0.4.30" "ml_dtypes>=0.4" "transformers>=4.50" "accelerate>=1.1" "lightning>=2.4"
)
# The imports that prove the virtualenv works as the tests use it.
CAIRN_PY_PROBE='import numpy, safetensors.torch, safetensors.numpy, torch, jax.numpy, ml_dtypes, pytest, transformers, accelerate, lightning'
