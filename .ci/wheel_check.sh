#!/usr/bin/env bash
# `pip wheel . -w dist` must give a wheel that installs next to torch alone and works.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf dist
pip wheel . -w dist --no-deps --quiet
venv=$(mktemp -d)/venv
python -m venv "$venv"
"$venv/bin/python" -m pip install --quiet torch==2.13.0 dist/fdiv_ops-*.whl
cd "$(mktemp -d)"  # away from the source tree, so the installed wheel is what gets imported
"$venv/bin/python" - <<'PY'
import torch
import fdiv_ops

print("wheel smoke test:", fdiv_ops.build_info())
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
# The benchmark CLI from the installed console script, without the optional rich/matplotlib (plain text).
"$venv/bin/fdiv-ops" bench --preset tiny --providers fdiv_ops,eager
