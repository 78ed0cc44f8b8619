#!/usr/bin/env bash
# GPU validation in one call (issue 8): build, CUDA tests against the float64 reference, the same under
# compute-sanitizer (memcheck, racecheck), then the full benchmark with the liger provider. Logs, JSON and
# the plot go to $OUT: 8 files, the most that come back from the device machine.
#
# The GPU image has torch, nvcc, pybind11, cmake, ninja, pytest but no network and no scikit-build-core;
# bring wheels in .whl/ (ignored by git; carry it), made here with:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform any -d .whl scikit-build-core pathspec liger-kernel
# then on the device: bash benchmarks/gpu_check.sh   (with carry [".whl"])
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
{ nvidia-smi; python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"; nvcc --version; } \
  > "$OUT/device.txt" 2>&1

echo "== build"
FDIV_OPS_CUDA=ON FDIV_OPS_CUDA_ARCHS="90" python3 -m pip install --no-build-isolation --no-deps -e . \
  > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
python3 -c "import fdiv_ops; print(fdiv_ops.build_info()); assert fdiv_ops.cuda_available()" | tee -a "$OUT/build.log"

echo "== CUDA tests"
python3 -m pytest tests -m cuda -q -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -15

echo "== compute-sanitizer (CUDA tests of the kernels, small shapes)"
for tool in memcheck racecheck; do
  compute-sanitizer --tool "$tool" --error-exitcode 9 python3 -m pytest tests -m cuda -q -x -p no:cacheprovider \
    -k "kernel_functors or matches_reference or awkward or non_contiguous or gradient_over_the_student" > "$OUT/sanitizer_$tool.log" 2>&1
  echo "$tool exit code: $? (0 clean, 9 errors found)"; tail -3 "$OUT/sanitizer_$tool.log"
done

echo "== benchmark (every provider; liger is skipped with a note when liger-kernel is not importable)"
python3 -m fdiv_ops.cli bench --device cuda --preset full --dtype bf16 \
  --json "$OUT/bench_cuda.json" --plot "$OUT/bench_cuda.png" 2>&1 | tee "$OUT/bench.txt" | tail -40
# Back here: copy bench_cuda.json to benchmarks/results/<device>.json (e.g. h100.json) and run
# benchmarks/make_readme_table.py so the README shows it.
