#!/usr/bin/env bash
# A wheel must install into a fresh venv holding only torch and work there, for every torch CI tests.
#   .ci/wheel_check.sh                 builds `pip wheel . --no-deps` into dist/ and checks it
#   .ci/wheel_check.sh path/to.whl     checks that wheel (e.g. the release wheel of scripts/build_release_wheel.sh)
#   FDIV_OPS_CHECK_TORCH="2.13.0 2.14.1" .ci/wheel_check.sh ...   the torch releases to check against
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
torch_versions=${FDIV_OPS_CHECK_TORCH:-2.13.0}

if [ $# -ge 1 ]; then
  wheel=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
else
  rm -rf dist
  # --no-deps: torch is an unpinned dependency; without it pip downloads a CUDA torch (~2.9 GB) into dist/.
  pip wheel . -w dist --no-deps --quiet
  wheel=$(ls "$repo"/dist/fdiv_ops-*.whl)
fi
echo "wheel check: $(basename "$wheel") ($(du -h "$wheel" | cut -f1))"

# The LICENSE (and any NOTICE) at the repository root must ship in the wheel's metadata.
for license in LICENSE* NOTICE*; do
  [ -e "$license" ] || continue
  python -m zipfile -l "$wheel" | grep -Eq "dist-info/(licenses/)?$license" ||
    { echo "wheel check: $license is not in the wheel" >&2; exit 1; }
done

for torch_version in $torch_versions; do
  echo "--- torch $torch_version"
  work=$(mktemp -d)
  python -m venv "$work/venv"
  start=$(date +%s)
  "$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check "torch==$torch_version"
  echo "torch $torch_version installed in $(($(date +%s) - start)) s"
  "$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$wheel"
  cd "$work"  # away from the source tree, so the installed wheel is what gets imported
  "$work/venv/bin/python" - "$torch_version" <<'PY'
import importlib.metadata
import importlib.resources
import sys

import torch

import fdiv_ops
from fdiv_ops import _cuda_status

assert torch.__version__.split("+")[0] == sys.argv[1], (torch.__version__, sys.argv[1])
assert fdiv_ops.__version__ == importlib.metadata.version("fdiv-ops"), "__version__ differs from the metadata"
assert importlib.resources.files("fdiv_ops").joinpath("py.typed").is_file(), "py.typed is missing"
info = fdiv_ops.build_info()
print("wheel smoke test:", info)
if info["cuda"] and not torch.cuda.is_available():
    # CI has no GPU: the status must name the real cause, never "driver version is insufficient"
    assert info["cuda_status"] in ("no NVIDIA driver", "no CUDA device"), info["cuda_status"]
    assert _cuda_status.gpu_but_unusable() is None
x = torch.randn(4, 3, 8, requires_grad=True)
teacher, fake, logits = torch.randn(4, 3, 8), torch.randn(4, 3, 8), torch.randn(4)
loss = fdiv_ops.f_distill_loss(x, teacher, fake, logits, divergence="js")
loss.backward()
assert torch.isfinite(loss) and x.grad is not None and torch.isfinite(x.grad).all()
student = torch.randn(2, 5, 301, requires_grad=True)
kd = fdiv_ops.f_divergence_loss(student, torch.randn(2, 5, 300), divergence=fdiv_ops.gkd_jsd(0.5))
kd.backward()
assert torch.isfinite(kd) and torch.isfinite(student.grad).all()
print("wheel smoke test passed")
PY
  "$work/venv/bin/fdiv-ops" info
  # The benchmark CLI from the installed console script, without the optional rich/matplotlib (plain text).
  "$work/venv/bin/fdiv-ops" bench --preset tiny --providers fdiv_ops,torch
  cd "$repo"
  rm -rf "$work"
done
