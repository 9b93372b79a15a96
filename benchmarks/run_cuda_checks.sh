#!/usr/bin/env bash
# The GPU checks, as one script for a machine with CUDA: the skorch nets' estimator
# checks and adapter tests with the nets on the GPU, then the skorch half of the network benchmark there.
# Wheels for packages the machine lacks (skorch, this scikit-learn) may lie in .whl/.
set -uo pipefail
out="${OUT:-/tmp/puma-cuda}"
mkdir -p "$out"
export PYTHONPATH="$PWD"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD"
fi
export PYTHONUNBUFFERED=1
python3 - <<'PY' 2>&1 | tee "$out/versions.txt"
import sklearn, skorch, torch
print("torch", torch.__version__, "| scikit-learn", sklearn.__version__, "| skorch",
      skorch.__version__, "| cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PY
PUMA_TEST_DEVICE=cuda timeout 300 python3 -m pytest tests/test_skorch.py -q \
  -p no:cacheprovider 2>&1 | tail -12 | tee "$out/skorch_cuda_tests.txt"
timeout 240 python3 benchmarks/bench_networks.py --nets skorch --device cuda --n 20000 --cap 150 2>&1 \
  | tee "$out/bench_networks_cuda.txt"
