#!/usr/bin/env bash
# The GPU-speed measurements in one device call (bench/RESULTS.md says what to record from them).
#
# The device image has torch, numpy, scipy, scikit-learn, pandas, pyarrow, matplotlib, pyyaml and
# tqdm, but not pydantic. Once, here, in the repo root (the wheels travel with `carry: [".whl"]`):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     pydantic==2.14.3 pydantic_core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5
# Then: run(command="bash bench/on_gpu.sh eager graph", carry=[".whl"]) and, in a second call (the
# compiled variants spend minutes compiling), "bash bench/on_gpu.sh compile" (batch 256 only).
set -uo pipefail
if (($#)); then execs=("$@"); else execs=(eager graph); fi
name=$(IFS=_; echo "${execs[*]}")
out=${OUT:-/tmp/rbp-gpu}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv | tee "$out/device.txt"
if [[ " ${execs[*]} " == *" eager "* ]]; then
  # The GPU-only tests (captured step == eager step, no host syncs, on-GPU augmentation), then the
  # mask-threshold timings.
  python3 -m pytest -q -p no:cacheprovider -m "not slow" tests/test_amp.py tests/test_data.py tests/test_mask_cache.py \
    2>&1 | tee "$out/gpu_tests.txt"
  python3 bench/mask_threshold.py 2>&1 | tee "$out/mask_threshold.txt"
fi
# Compiling takes minutes per variant and again per batch size: the compiled variants at batch 256 only.
batches=(128 256 512)
[[ " ${execs[*]} " == *" compile "* ]] && batches=(256)
python3 bench/train_step.py --execs "${execs[@]}" --batches "${batches[@]}" 2>&1 | tee "$out/train_step_$name.txt"
