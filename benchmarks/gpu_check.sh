#!/usr/bin/env bash
# The GPU check in one short window (issues 14 and 18): build for sm_90, run the CUDA tests, benchmark the
# peers' published sizes against Liger-Kernel, TRL and eager PyTorch, run compute-sanitizer memcheck and
# racecheck on a small subset, then time torch.compile at the same sizes. For a fresh H100 machine with no
# network: finishes within 9 minutes, build included, and keeps every finished stage's results when a later
# one overruns.
#
# RUN (the device tool; one call, nothing else in it):
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=570)
#   Without .whl the liger and trl providers are skipped with a note; everything else runs.
#
# WHEELS (.whl/, ignored by git, carried with the call; 2.7 MB): make them once on the CPU machine, in the
# root of the checkout the device tool sends:
#   echo /.whl/ >> "$(git rev-parse --git-path info/exclude)"
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     liger-kernel==0.8.5 trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
#   (all pure-Python wheels; trl needs datasets, datasets needs dill and multiprocess; the image has the rest.)
#   scikit-build-core and pathspec are NOT needed: the build below calls CMake directly (the image has cmake,
#   ninja, pybind11 and nvcc), as scripts/dev_build.sh does, so no pip build of the package happens there.
#
# STAGES, in order of value; each has its own time limit, capped by a global deadline (GPU_CHECK_BUDGET_S,
# default 505 s after the start: the plot, the merge and the summary after it take ~20 s, so the script ends
# by ~9 min and the tool's 570 s limit never cuts it), and writes its log and updates status.json as it
# ends. A stage that has under 15 s left is skipped and says so.
#   stage      limit  estimate  what (estimate's basis)
#   setup        40 s     10 s  install .whl to /tmp/site; device, driver, versions -> status.json
#   build       170 s   60-80 s cmake + ninja -j$(nproc), CMAKE_CUDA_ARCHITECTURES=90-real. Timed on the 2-core
#                               CPU machine (2026-11-26): 139 CPU-s for all 16 units, the longest unit
#                               csrc/cuda/f_divergence.cu 46 CPU-s, then csrc/cpu/f_divergence.cpp 28 CPU-s;
#                               on 16 cores the longest unit bounds the wall time, plus ~10 s of configure
#   tests       120 s   40-70 s pytest -m cuda: 430 tests; collection 9 s and the same 431 tests on the CPU
#                               27 CPU-s here; plus CUDA start-up
#   bench       130 s   60-90 s fdiv-ops bench --preset headline --dtype bf16, providers fdiv_ops, torch, trl,
#                               liger (f_divergence 8192x131072 forward_kl and gkd_jsd(0.5), fused_linear
#                               8192x4096x128256, sequence_logprobs 8x1024x128256, f_distill 64x16x128x128);
#                               bench.json is rewritten after every size, so a cut run keeps what it measured
#   memcheck     60 s   20-40 s compute-sanitizer --tool memcheck on 77 CUDA tests covering every kernel,
#                               only fdiv_ops kernels instrumented (torch's run uninstrumented)
#   racecheck    60 s   20-40 s the same with --tool racecheck
#   compile    rest     60-150 s the compile provider (torch.compile of the torch expression) at the bench
#                               sizes, then merged into bench.json (fdiv-ops bench --load ... --load ...)
#   sum of estimates without compile: ~4-5 min; the deadline stops whatever is still running at 505 s.
# The whole device session is 15 minutes, machine start included (1-2 min): the full script in a 570 s call
# leaves ~3 minutes. To keep room for a rerun, GPU_CHECK_BUDGET_S=330 ends after the sanitizers (compile
# skipped). A rerun on the still-warm machine (build/ is kept, the build is incremental) of chosen stages:
#   GPU_CHECK_STAGES="build tests" bash benchmarks/gpu_check.sh     (setup always runs)
# A dry run of the plumbing on a machine without a GPU (the build's GPU check and the sanitizers fail, the
# rest runs on the CPU): GPU_CHECK_DEVICE=cpu GPU_CHECK_PRESET=tiny OUT=/tmp/out bash benchmarks/gpu_check.sh
#
# OUTPUT ($OUT, 8 files, the most that come back):
#   status.json        device, driver, versions; per stage: exit code, seconds, limit, summary lines
#   build.log  tests.log  sanitizer.log (memcheck then racecheck)  bench.log (bench and compile stages)
#   bench.json  bench_compile.json  bench.png
# Back on the CPU machine: copy bench.json to benchmarks/results/h100.json (and bench.png to h100.png), run
# python benchmarks/make_readme_table.py, and write the summaries into benchmarks/results/gpu_notes.md.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
T0=$(date +%s)
DEADLINE=$((T0 + ${GPU_CHECK_BUDGET_S:-505}))
DEVICE=${GPU_CHECK_DEVICE:-cuda}
PRESET=${GPU_CHECK_PRESET:-headline}
SELECTED=" ${GPU_CHECK_STAGES:-build tests bench memcheck racecheck compile} setup "
STAGES=/tmp/gpu_check_stages.jsonl
: > "$STAGES"
export PYTHONUNBUFFERED=1 TRL_EXPERIMENTAL_SILENCE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
BENCH_OPS="f_divergence fused_linear sequence_logprobs f_distill"
# 77 small CUDA tests that launch every kernel: divergence_terms, f_divergence dense and top-k, the f_distill
# kernels, sequence_logprobs, the fused-linear row kernel.
SAN_TESTS="cuda and (kernel_functors_match_reference_float32 or (test_matches_reference and (-js] or forward_kl])) or topk_teacher or awkward or matches_log_softmax_gather or block_rescaling or row_kernel_may_write)"

# status.json from the stage lines so far: rewritten whole (then renamed) after every stage.
cat > /tmp/gpu_check_status.py <<'PY'
import json, os, re, sys
out, stages_file, elapsed = sys.argv[1], sys.argv[2], int(sys.argv[3])
def tail(path, pattern, n):
    try:
        lines = open(path, errors="replace").read().splitlines()
    except OSError:
        return []
    return ([l for l in lines if re.search(pattern, l)] if pattern else lines)[-n:]
PATTERNS = {  # the lines worth reading first, per stage
    "build": (r"build_info|error|Error|FAILED|Assertion", 12),
    "tests": (r"passed|failed|skipped|FAILED|ERROR|[Ee]rror|no tests ran", 40),
    "memcheck": (r"ERROR SUMMARY|Invalid|out of bounds|passed|failed|[Ee]rror|rc=", 30),
    "racecheck": (r"RACECHECK SUMMARY|ERROR SUMMARY|[Hh]azard|passed|failed|[Ee]rror|rc=", 30),
}
def section(path, name):
    """This stage's part of a log that several stages append to (each starts with a line '=== name')."""
    text = open(path, errors="replace").read() if os.path.exists(path) else ""
    part = text.split(f"=== {name}\n", 1)[-1]
    return re.split(r"^=== \w+\n", part, flags=re.M)[0]
stages = [json.loads(l) for l in open(stages_file) if l.strip()]
for s in stages:
    pattern, n = PATTERNS.get(s["name"], (None, 14))
    if s.get("log"):
        part = f"/tmp/gpu_check_{s['name']}.part"
        open(part, "w").write(section(s["log"], s["name"]))
        s["summary"] = tail(part, pattern, n)
    else:
        s["summary"] = []
    s["log"] = os.path.basename(s.get("log") or "")
device = json.load(open("/tmp/gpu_check_device.json")) if os.path.exists("/tmp/gpu_check_device.json") else {}
status = {"elapsed_s": elapsed, "device": device, "stages": stages}
tmp = os.path.join(out, ".status.json.tmp")
json.dump(status, open(tmp, "w"), indent=1)
os.replace(tmp, os.path.join(out, "status.json"))
if len(sys.argv) > 4:  # --print: the closing summary
    for s in stages:
        print(f"{s['name']:10} rc={s['rc']:<4} {s['seconds']:>4} s of {s['limit_s']} s  {s['log']}")
PY

status() { python3 /tmp/gpu_check_status.py "$OUT" "$STAGES" "$(($(date +%s) - T0))" "$@" || true; }

record() {  # record NAME RC SECONDS LIMIT LOGPATH
  local timed_out=false
  { [ "$2" = 124 ] || [ "$2" = 137 ]; } && timed_out=true
  printf '{"name": "%s", "rc": %s, "seconds": %s, "limit_s": %s, "timed_out": %s, "log": "%s"}\n' \
    "$1" "$2" "$3" "$4" "$timed_out" "$5" >> "$STAGES"
  status
  echo "== $1: rc=$2 after $3 s (limit $4 s, timed out: $timed_out); $(($(date +%s) - T0)) s since the start"
}

stage() {  # stage NAME CAP_S LOGPATH COMMAND...: run under min(CAP_S, time to the deadline), log appended
  local name=$1 cap=$2 log=$3 start left limit rc
  shift 3
  start=$(date +%s)
  left=$((DEADLINE - start))
  limit=$((cap < left ? cap : left))
  if [[ "$SELECTED" != *" $name "* ]]; then
    echo "== $name: not in GPU_CHECK_STAGES"
    return 0  # a stage left out on purpose does not stop the ones after it
  fi
  if [ "$limit" -lt 15 ]; then
    record "$name" 99 0 0 ""
    echo "== $name: skipped, ${left} s left before the deadline"
    return 99
  fi
  echo "== $name (limit ${limit} s)"
  echo "=== $name" >> "$log"  # where this stage's part of a shared log begins (status.json's summaries)
  timeout -k 5 "$limit" "$@" >> "$log" 2>&1
  rc=$?
  record "$name" "$rc" "$(($(date +%s) - start))" "$limit" "$log"
  return $rc
}

setup() {
  if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
  fi
  python3 - <<'PY'
import importlib.metadata, json, os, platform, subprocess
def run(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception as exc:
        return f"unavailable: {exc}"
import torch
info = {
    "nvidia_smi": run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem",
                       "--format=csv,noheader"]),
    "torch": torch.__version__, "torch_cuda": torch.version.cuda, "python": platform.python_version(),
    "nvcc": run(["nvcc", "--version"]).splitlines()[-1:],
    "compute_sanitizer": run(["compute-sanitizer", "--version"]).splitlines()[-1:],
    "cpu_count": os.cpu_count(), "load_avg_1min": os.getloadavg()[0],
}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(device=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                memory_gib=round(p.total_memory / 2**30, 1))
for dist in ("liger-kernel", "trl", "transformers", "triton", "datasets", "pytest-timeout"):
    try:
        info[dist] = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        info[dist] = None
json.dump(info, open("/tmp/gpu_check_device.json", "w"), indent=1)
print(json.dumps(info, indent=1))
PY
}

build() {
  local generator=() so
  command -v ninja > /dev/null && generator=(-G Ninja)
  cmake -S . -B build/gpu-check "${generator[@]}" -DFDIV_OPS_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90-real \
    -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v python3)" || return 1
  cmake --build build/gpu-check -j "$(nproc)" || return 1
  so=$(ls build/gpu-check/_C*.so) || return 1
  ln -sf "$PWD/$so" "python/fdiv_ops/$(basename "$so")"
  python3 -c "import fdiv_ops; print('build_info', fdiv_ops.build_info())" || return 1
  [ "$DEVICE" = cpu ] || python3 -c "import fdiv_ops; assert fdiv_ops.cuda_available(), 'fdiv_ops sees no GPU'"
}

tests() {
  local per_test=()
  python3 -c "import pytest_timeout" 2> /dev/null && per_test=(--timeout 120)
  python3 -m pytest tests -m cuda -q -p no:cacheprovider -rf "${per_test[@]}"
}

sanitize() {  # sanitize memcheck|racecheck
  local filter=() rc
  # Instrument only this package's kernels (their mangled names hold its namespace): torch's run at full speed.
  compute-sanitizer --help 2> /dev/null | grep -q -- "--kernel-name" && filter=(--kernel-name kns=fdiv_ops)
  # No caching allocator: every tensor is its own cudaMalloc, so an access past a tensor's end is outside any
  # allocation and memcheck sees it (inside torch's pooled segments it would not). API errors are not
  # reported: torch probes the driver with calls that may fail; a failing launch of ours fails its test.
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$1" "${filter[@]}" --error-exitcode 9 --print-limit 30 \
    --report-api-errors no \
    python3 -m pytest tests -m cuda -q -p no:cacheprovider -k "$SAN_TESTS"
  rc=$?
  echo "== $1 rc=$rc (0: clean, 9: errors found, 1: a test failed, 5: no test selected)"
  return $rc
}

bench() {  # bench PROVIDERS JSON
  # shellcheck disable=SC2086
  python3 -m fdiv_ops.cli bench $BENCH_OPS --device "$DEVICE" --preset "$PRESET" --dtype bf16 --providers "$1" \
    --json "$2"
}

export -f setup build tests sanitize bench
export OUT SAN_TESTS BENCH_OPS DEVICE PRESET

stage setup 40 /tmp/gpu_check_setup.log bash -c setup
[ -d /tmp/site ] && export PYTHONPATH="$PYTHONPATH:/tmp/site"  # the carried wheels, for every later stage

if stage build 170 "$OUT/build.log" bash -c build; then
  stage tests 120 "$OUT/tests.log" bash -c tests
  stage bench 130 "$OUT/bench.log" bash -c "bench fdiv_ops,torch,trl,liger $OUT/bench.json"
  [ -f "$OUT/bench.json" ] && python3 -m fdiv_ops.cli bench --load "$OUT/bench.json" --plot "$OUT/bench.png" \
    > /dev/null 2>> "$OUT/bench.log"
  stage memcheck 60 "$OUT/sanitizer.log" bash -c "sanitize memcheck"
  stage racecheck 60 "$OUT/sanitizer.log" bash -c "sanitize racecheck"
  # whatever time is left: torch.compile of the same expressions at the same sizes, merged into bench.json
  stage compile 600 "$OUT/bench.log" bash -c "bench fdiv_ops,compile $OUT/bench_compile.json"
  if [ -f "$OUT/bench_compile.json" ] && [ -f "$OUT/bench.json" ]; then
    python3 -m fdiv_ops.cli bench --load "$OUT/bench.json" --load "$OUT/bench_compile.json" \
      --json "$OUT/bench.json" --plot "$OUT/bench.png" > /dev/null 2>> "$OUT/bench.log"
  fi
fi
echo "== done in $(($(date +%s) - T0)) s"
status --print
ls -la "$OUT"
[ -f "$OUT/bench.json" ] && python3 -m fdiv_ops.cli bench --load "$OUT/bench.json" 2>&1 | tail -12
exit 0
