"""Per-call cost of a public op at a tiny size, in instructions (load-independent), counted by callgrind over the
timed loop only: forward + backward of 4 x 64 fp32 inputs, 1 thread.

    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=/tmp/cg.out \
        $(python -c 'import sys; print(sys.executable)') scripts/op_overhead_callgrind.py f_divergence_loss 50
    # "Collected : N" on stderr: N / 50 instructions a call. --registered forces the torch.library path
    # (what a dispatch mode or a traced graph takes) instead of the eager fast path.

Run with the interpreter binary itself (not a pyenv shim, which valgrind would follow into a shell).
"""

from __future__ import annotations

import argparse
import os
import subprocess

import fdiv_ops
import torch


def cases() -> dict:
    batch, vocab, hidden = 4, 64, 16
    s = torch.randn(batch, vocab, requires_grad=True)
    t = torch.randn(batch, vocab)
    labels = torch.randint(0, vocab, (batch,))
    hs, w = torch.randn(batch, hidden, requires_grad=True), torch.randn(vocab, hidden, requires_grad=True)
    ht, wt = torch.randn(batch, hidden), torch.randn(vocab, hidden)
    x, tx, fx, dl = (
        torch.randn(batch, 64, requires_grad=True),
        torch.randn(batch, 64),
        torch.randn(batch, 64),
        torch.randn(batch),
    )
    lr, pc, other = (
        torch.randn(8, requires_grad=True),
        torch.randn(8, requires_grad=True),
        [torch.randn(8) for _ in range(3)],
    )
    return {
        "f_divergence_loss": lambda: fdiv_ops.f_divergence_loss(s, t, divergence="js").backward(),
        "f_divergence_loss_forward": lambda: fdiv_ops.f_divergence_loss(s.detach(), t, divergence="js"),
        "sequence_logprobs": lambda: fdiv_ops.sequence_logprobs(s, labels).sum().backward(),
        "fused_linear_f_divergence": lambda: fdiv_ops.fused_linear_f_divergence(hs, w, ht, wt).backward(),
        "fused_linear_sequence_logprobs": lambda: (
            fdiv_ops.fused_linear_sequence_logprobs(hs, w, labels).sum().backward()
        ),
        "f_distill_loss": lambda: fdiv_ops.f_distill_loss(x, tx, fx, dl, divergence="js").backward(),
        "divergence_terms": lambda: fdiv_ops.divergence_terms(lr, "js")[1].sum().backward(),
        "f_dpo_loss": lambda: fdiv_ops.f_dpo_loss(pc, *other, divergence="js")[0].sum().backward(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("case", choices=sorted(cases()))
    parser.add_argument("calls", type=int, nargs="?", default=50)
    parser.add_argument("--registered", action="store_true", help="take the registered op, not the fast path")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.registered:
        from fdiv_ops.ops import _plumbing

        _plumbing._needs_dispatch = lambda _args: True
    fn = cases()[args.case]
    for _ in range(5):
        fn()
    pid = str(os.getpid())
    subprocess.run(["callgrind_control", "-i", "on", pid], capture_output=True, check=False)
    for _ in range(args.calls):
        fn()
    subprocess.run(["callgrind_control", "-i", "off", pid], capture_output=True, check=False)


if __name__ == "__main__":
    main()
