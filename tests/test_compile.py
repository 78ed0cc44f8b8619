"""Every public op and module under torch.compile(fullgraph=True): Python scalars that change between calls and
changing batch sizes (dynamic=True) trace without graph breaks, give the eager results, and recompile a bounded
number of times (the validation is comparisons only, which become guards; see fdiv_ops/_validation.py)."""

import os
import subprocess
import sys
from pathlib import Path

import fdiv_ops
import torch
from torch._dynamo.utils import counters

# A graph for the first call and at most one more when a scalar first changes (torch.compile then makes it
# symbolic); with dynamic=True (sizes and scalars symbolic from the start), one graph for every call.
MAX_GRAPHS = 2
MAX_GRAPHS_DYNAMIC = 1


def _close(got, want):
    got, want = (tuple(v) if isinstance(v, (tuple, list)) else (v,) for v in (got, want))
    for g, w in zip(got, want, strict=True):
        if isinstance(g, dict):
            for key in w:
                torch.testing.assert_close(g[key], w[key], rtol=1e-5, atol=1e-6)
        else:
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


def _reset():
    torch._dynamo.reset()
    counters.clear()


def _run(fn, calls, *, dynamic=None, grad_of=None, output=0):
    """Compile fn once, call it with each argument tuple of `calls`, compare with eager (values and the gradient
    of output `output`, summed, with respect to the argument at index grad_of); return the number of graphs
    torch.compile made (its unique_graphs counter: the first compile plus every recompile)."""
    _reset()
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True, dynamic=dynamic)
    for args in calls:
        want_args = [
            a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a for a in args
        ]
        got_args = [
            a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a for a in args
        ]
        want = fn(*want_args)
        got = compiled(*got_args)
        _close(got, want)
        if grad_of is not None:
            pick = lambda out: out[output] if isinstance(out, (tuple, list)) else out  # noqa: E731
            pick(want).sum().backward()
            pick(got).sum().backward()
            torch.testing.assert_close(got_args[grad_of].grad, want_args[grad_of].grad, rtol=1e-5, atol=1e-6)
    return _graphs()


def _logits(*shape):
    return torch.randn(*shape, dtype=torch.float32)


GRAPHS: dict[str, int] = {}  # recompile counts, reported by test_report_graph_counts


def _record(name, count):
    GRAPHS[name] = count
    assert count <= (MAX_GRAPHS_DYNAMIC if "dynamic" in name else MAX_GRAPHS), (name, count)


def test_f_divergence_loss_changing_scalars():
    def fn(s, t, labels, temperature, num_items):
        return fdiv_ops.f_divergence_loss(
            s, t, divergence="js", temperature=temperature, labels=labels, num_items_in_batch=num_items
        )

    s, t = _logits(2, 3, 17).requires_grad_(), _logits(2, 3, 17)
    labels = torch.randint(0, 17, (2, 3))
    labels[0, 0] = -100
    calls = [(s, t, labels, 1.0, 5), (s, t, labels, 2.0, 7), (s, t, labels, 0.5, 3), (s, t, labels, 3.0, 11)]
    _record("f_divergence_loss (temperature, num_items_in_batch int)", _run(fn, calls, grad_of=0))
    calls = [(s, t, labels, 1.3, torch.tensor(float(n))) for n in (5, 6, 9)]
    _record("f_divergence_loss (num_items_in_batch tensor)", _run(fn, calls, grad_of=0))


def test_f_divergence_loss_dynamic_batch_and_topk():
    def dense(s, t, temperature):
        return fdiv_ops.f_divergence_loss(s, t, divergence=fdiv_ops.alpha(0.5), temperature=temperature)

    calls = [(_logits(b, 33).requires_grad_(), _logits(b, 40), 1.0 + b / 10) for b in (3, 5, 8, 2)]
    _record("f_divergence_loss dynamic", _run(dense, calls, dynamic=True, grad_of=0))

    def topk(s, indices, logprobs, temperature):
        return fdiv_ops.f_divergence_loss(
            s, teacher_topk=(indices, logprobs), divergence="reverse_kl", temperature=temperature, reduction="sum"
        )

    calls = []
    for b, temperature in ((3, 1.0), (5, 2.0), (4, 0.7)):
        indices = torch.stack([torch.randperm(33)[:4] for _ in range(b)])
        calls.append((_logits(b, 33).requires_grad_(), indices, torch.log(torch.full((b, 4), 0.1)), temperature))
    _record("f_divergence_loss top-k dynamic", _run(topk, calls, dynamic=True, grad_of=0))


def test_fused_linear_f_divergence_changing_scalars():
    def fn(hs, ws, ht, wt, labels, temperature, hard, num_items):
        return fdiv_ops.fused_linear_f_divergence(
            hs,
            ws,
            ht,
            wt,
            labels=labels,
            temperature=temperature,
            hard_loss_weight=hard,
            num_items_in_batch=num_items,
            chunk_size=4,
        )

    ws, wt = _logits(19, 8).requires_grad_(), _logits(21, 6)
    calls = []
    for b, temperature, hard, num in ((5, 1.0, 0.5, 5), (9, 2.0, 0.25, 9.0), (7, 1.5, 0.75, torch.tensor(7))):
        calls.append(
            (_logits(b, 8).requires_grad_(), ws, _logits(b, 6), wt, torch.randint(0, 19, (b,)), temperature, hard, num)
        )
    _record("fused_linear_f_divergence (num_items_in_batch int)", _run(fn, [calls[0], calls[2][:-1] + (7,)], grad_of=0))
    tensor_count = [c[:-1] + (torch.tensor(float(c[0].shape[0])),) for c in calls]
    _record(
        "fused_linear_f_divergence dynamic (num_items_in_batch tensor)", _run(fn, tensor_count, dynamic=True, grad_of=0)
    )


def test_sequence_logprobs_changing_scalars_and_batch():
    def fn(logits, labels, temperature, ignore_index):
        return fdiv_ops.sequence_logprobs(
            logits, labels, temperature=temperature, ignore_index=ignore_index, return_entropy=True
        )

    calls = []
    for b, temperature, ignore in ((2, 1.0, -100), (3, 0.7, -1), (5, 1.9, -7)):
        labels = torch.randint(0, 23, (b, 4))
        labels[0, 0] = ignore
        calls.append((_logits(b, 4, 23).requires_grad_(), labels, temperature, ignore))
    _record("sequence_logprobs dynamic", _run(fn, calls, dynamic=True, grad_of=0))
    _record("sequence_logprobs", _run(fn, [(*c[:2], c[2], -100) for c in calls[:1]] + [calls[0][:2] + (2.5, -100)]))


def test_fused_linear_sequence_logprobs_changing_scalars():
    def fn(hidden, weight, labels, temperature):
        return fdiv_ops.fused_linear_sequence_logprobs(hidden, weight, labels, temperature=temperature, chunk_size=3)

    weight = _logits(29, 8).requires_grad_()
    calls = [(_logits(b, 8).requires_grad_(), weight, torch.randint(0, 29, (b,)), t) for b, t in ((5, 1.0), (7, 2.0))]
    calls.append((_logits(4, 8).requires_grad_(), weight, torch.randint(0, 29, (4,)), 0.3))
    _record("fused_linear_sequence_logprobs dynamic", _run(fn, calls, dynamic=True, grad_of=0))


def test_f_distill_loss_changing_scalars_and_batch():
    def fn(x, teacher, fake, logits, logit_clamp, eps, lo):
        return fdiv_ops.f_distill_loss(
            x, teacher, fake, logits, divergence="js", logit_clamp=logit_clamp, eps=eps, ratio_clip=(lo, 20.0)
        )

    calls = []
    for b, clamp, eps, lo in ((4, 10.0, 1e-6, 0.1), (6, 5.0, 1e-5, 0.2), (3, 7.5, 1e-4, 0.05)):
        x = _logits(b, 3, 5)
        calls.append(
            (x.requires_grad_(), x + 0.3 * _logits(b, 3, 5), x + 0.3 * _logits(b, 3, 5), _logits(b, 2), clamp, eps, lo)
        )
    _record("f_distill_loss dynamic", _run(fn, calls, dynamic=True, grad_of=0))
    _record(
        "f_distill_loss",
        _run(
            fn,
            [(*calls[0][:4], c, e, lo) for c, e, lo in ((10.0, 1e-6, 0.1), (3.0, 1e-3, 0.3), (4.0, 1e-2, 0.4))],
            grad_of=0,
        ),
    )


def test_f_dpo_loss_changing_scalars():
    def fn(pc, pr, rc, rr, beta, smoothing, cap):
        return fdiv_ops.f_dpo_loss(
            pc, pr, rc, rr, divergence="js", beta=beta, label_smoothing=smoothing, max_exponent=cap
        )

    calls = []
    for b, beta, smoothing, cap in ((4, 0.1, 0.0, 50.0), (6, 0.2, 0.1, 40.0), (3, 0.5, 0.3, 30.0)):
        calls.append((_logits(b).requires_grad_(), _logits(b), _logits(b), _logits(b), beta, smoothing, cap))
    _record("f_dpo_loss dynamic", _run(fn, calls, dynamic=True, grad_of=0))
    _record("f_dpo_loss", _run(fn, [(*calls[0][:4], *c[4:]) for c in calls], grad_of=0))


def test_f_dpg_loss_and_advantages_changing_scalars():
    def fn(policy, target, log_z, baseline, cap):
        return fdiv_ops.f_dpg_loss(
            policy, target_logscores=target, log_z=log_z, baseline=baseline, divergence="forward_kl", max_exponent=cap
        )

    calls = []
    for b, log_z, baseline, cap in ((4, 0.5, 0.1, 30.0), (6, 1.5, -0.2, 20.0), (5, -0.5, 0.3, 25.0)):
        calls.append((_logits(b).requires_grad_(), _logits(b), log_z, baseline, cap))
    _record("f_dpg_loss dynamic", _run(fn, calls, dynamic=True, grad_of=0))

    def advantages(rewards, eps, clip):
        return fdiv_ops.group_normalized_advantages(rewards, 4, eps=eps, clip=clip)

    calls = [
        (_logits(b).requires_grad_(), eps, clip) for b, eps, clip in ((8, 1e-8, 3.0), (12, 1e-6, 2.0), (16, 1e-4, 1.0))
    ]
    _record("group_normalized_advantages dynamic", _run(advantages, calls, dynamic=True, grad_of=0))


def test_divergence_terms_dynamic():
    def fn(log_ratio):
        return fdiv_ops.divergence_terms(log_ratio, "js")

    calls = [(_logits(n).requires_grad_(),) for n in (3, 7, 12)]
    _record("divergence_terms dynamic", _run(fn, calls, dynamic=True, grad_of=0, output=1))


def test_modules_changing_batch():
    kd = fdiv_ops.FDivergenceLoss("reverse_kl", temperature=2.0)

    def fn(s, t, labels, num_items):
        return kd(s, t, labels, num_items_in_batch=num_items)

    calls = [(_logits(b, 13).requires_grad_(), _logits(b, 13), torch.randint(0, 13, (b,)), b + 1) for b in (3, 6, 4)]
    _record("FDivergenceLoss dynamic", _run(fn, calls, dynamic=True, grad_of=0))

    fused = fdiv_ops.FusedLinearFDivergenceLoss("js", chunk_size=2)
    w, wt = _logits(11, 4).requires_grad_(), _logits(11, 4)

    def fused_fn(h, ht):
        return fused(h, w, ht, wt)

    calls = [(_logits(b, 4).requires_grad_(), _logits(b, 4)) for b in (3, 5, 7)]
    _record("FusedLinearFDivergenceLoss dynamic", _run(fused_fn, calls, dynamic=True, grad_of=0))


def test_stateful_modules_compile_and_update_like_eager():
    for name, make, args_of in (
        (
            "FDistillLoss (time bins)",
            lambda: fdiv_ops.FDistillLoss("js", num_time_bins=4, ema_rate=0.5, time_range=(0.0, 1.0)),
            lambda b: (_logits(b, 6).requires_grad_(), _logits(b, 6), _logits(b, 6), _logits(b, 2)),
        ),
        (
            "FDPG",
            lambda: fdiv_ops.FDPG("js", num_contexts=3),
            lambda b: (_logits(b).requires_grad_(), _logits(b)),
        ),
    ):
        eager, compiled_module = make(), make()
        _reset()
        if name == "FDPG":
            step = torch.compile(
                lambda m, p, t, c: m(p, t, context=c)[0], backend="aot_eager", fullgraph=True, dynamic=True
            )
        else:
            step = torch.compile(
                lambda m, x, t, f, lg, time: m(x, t, f, lg, time=time),
                backend="aot_eager",
                fullgraph=True,
                dynamic=True,
            )
        for b in (4, 6, 5):
            args = args_of(b)
            extra = (torch.randint(0, 3, (b,)),) if name == "FDPG" else (torch.rand(b),)
            want = eager(*args, context=extra[0])[0] if name == "FDPG" else eager(*args, time=extra[0])
            got = step(compiled_module, *(a.detach().clone().requires_grad_(a.requires_grad) for a in args), *extra)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        for key, value in eager.state_dict().items():
            torch.testing.assert_close(compiled_module.state_dict()[key], value, rtol=1e-6, atol=1e-7, equal_nan=True)
        _record(name + " dynamic", _graphs())


def test_constant_marker_is_torchs():
    """fdiv_ops marks its constant-folded helpers itself (fdiv_ops/_compiler.py) so that importing it does not
    import torch._dynamo; the marker must be exactly what torch.compiler.assume_constant_result sets."""
    from fdiv_ops._compiler import assume_constant_result

    def ours():
        return 0

    def torchs():
        return 0

    assert assume_constant_result(ours) is ours
    torch.compiler.assume_constant_result(torchs)
    assert vars(ours) == vars(torchs) and vars(ours)


def test_import_does_not_load_dynamo():
    """`import fdiv_ops` (and so every fdiv-ops command, even one refused for its arguments) must not pay for
    torch._dynamo (about 2 s); torch.compile imports it when it is used."""
    code = "import sys, fdiv_ops; print('torch._dynamo' in sys.modules)"
    env = dict(os.environ)
    package_parent = str(Path(fdiv_ops.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr


def test_report_graph_counts():
    """Prints the counts gathered above (run with -s); the bound is asserted where each is recorded."""
    for name, count in sorted(GRAPHS.items()):
        print(f"graphs {count}  {name}")
