"""f-DPG on a sequence space small enough to enumerate: every divergence measured exactly, not estimated.

Sequences are all V^L strings of length L over V tokens (defaults 6^4 = 1296). A tiny autoregressive policy
pi (an MLP on the one-hot prefix) starts as an exact copy of the base distribution a, as in DPG. The target
is p(x) = a(x) b(x) exp(beta * n1(x)) / Z, where b(x) = 1 if x contains token 0 (a hard constraint: p is 0
elsewhere) and n1(x) counts token 1 (a soft preference). The policy is trained on its own samples with
``fdiv_ops.FDPG`` (running importance-sampled log Z and moving-average baseline, as naver/disco does) for
reverse_kl, forward_kl, js and total_variation; ``--exact-log-z`` uses ``fdiv_ops.f_dpg_loss`` with the
true log Z instead. Sequence log-probs come from ``fdiv_ops.sequence_logprobs``.

Because the space is enumerable, every evaluation computes pi on all sequences and reports exact
KL(p||pi), KL(pi||p), the entropy H(pi) and the constraint satisfaction pi(b = 1).

    python examples/fdpg_toy.py            # ~10-20 s on a 2-core CPU
"""

from __future__ import annotations

import copy
import itertools
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common
import fdiv_ops

DIVERGENCES = ("reverse_kl", "forward_kl", "js", "total_variation")
METRICS = ("kl_p_pi", "kl_pi_p", "entropy", "constraint_satisfaction")


class PrefixPolicy(nn.Module):
    """pi(x_t | x_<t) from an MLP on [one-hot of x_<t, zero-padded to L-1 slots; one-hot of t].

    Every position is scored in one batched pass (teacher forcing), which is what a transformer does too.
    """

    def __init__(self, vocab: int, length: int, hidden: int = 64) -> None:
        super().__init__()
        self.vocab, self.length = vocab, length
        self.net = nn.Sequential(
            nn.Linear((length - 1) * vocab + length, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, vocab),
        )

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) tokens -> (B, L, F): position t sees tokens 0..t-1 only."""
        batch, length = tokens.shape
        onehot = nn.functional.one_hot(tokens, self.vocab).float()  # (B, L, V)
        prefix = onehot[:, :-1].reshape(batch, 1, -1).expand(batch, length, -1)
        # causal mask: slot s (token s) is visible at position t only when s < t
        visible = torch.arange(length - 1)[None, :] < torch.arange(length)[:, None]  # (L, L-1)
        mask = visible.repeat_interleave(self.vocab, dim=1).float()  # (L, (L-1) V)
        position = torch.eye(length).expand(batch, length, length)
        return torch.cat([prefix * mask, position], dim=-1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B, L, V) of x_t given x_<t."""
        return self.net(self.features(tokens))

    def sequence_logprobs(self, tokens: torch.Tensor) -> torch.Tensor:
        """log pi(x) (B,), through the fused op (no log-softmax tensor)."""
        return fdiv_ops.sequence_logprobs(self(tokens), tokens).sum(-1)

    @torch.no_grad()
    def sample(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        tokens = torch.zeros(batch, self.length, dtype=torch.long)
        for t in range(self.length):  # position t only reads tokens < t, so the zeros after t are ignored
            probs = torch.softmax(self(tokens)[:, t], dim=-1)
            tokens[:, t] = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        return tokens


class ToyTarget:
    """The target P(x) = a(x) b(x) exp(beta n1(x)) on the enumerated space, with its exact normaliser."""

    def __init__(self, base: PrefixPolicy, beta: float) -> None:
        self.vocab = base.vocab
        self.space = torch.tensor(list(itertools.product(range(base.vocab), repeat=base.length)))
        self.beta = beta
        with torch.no_grad():
            self.log_base = base.sequence_logprobs(self.space).double()
        scores = self.log_scores(self.space)
        self.log_z = float(torch.logsumexp(scores, 0))  # the exact normaliser, by enumeration
        self.log_p = scores - self.log_z

    @staticmethod
    def satisfies(tokens: torch.Tensor) -> torch.Tensor:
        """The hard constraint b(x): the sequence contains token 0."""
        return (tokens == 0).any(dim=1)

    def log_scores_with_base(self, tokens: torch.Tensor, log_base: torch.Tensor) -> torch.Tensor:
        bonus = self.beta * (tokens == 1).sum(1).double()
        hard = torch.where(self.satisfies(tokens), 0.0, -torch.inf).double()
        return log_base.double() + bonus + hard

    def log_scores(self, tokens: torch.Tensor) -> torch.Tensor:
        """log P(x) for tokens that are rows of self.space (looked up by their base-V index)."""
        return self.log_scores_with_base(tokens, self.log_base[self.index(tokens)])

    def index(self, tokens: torch.Tensor) -> torch.Tensor:
        weights = self.vocab ** torch.arange(tokens.shape[1] - 1, -1, -1)
        return (tokens * weights).sum(1)


@torch.no_grad()
def exact_metrics(policy: PrefixPolicy, target: ToyTarget) -> dict[str, float]:
    """KL(p||pi), KL(pi||p), H(pi) and pi(b = 1), summed over every sequence in float64."""
    log_pi = policy.sequence_logprobs(target.space).double()
    log_pi = log_pi - torch.logsumexp(log_pi, 0)  # exact already up to float32 rounding
    pi, p = log_pi.exp(), target.log_p.exp()
    support = p > 0
    kl_p_pi = float((p[support] * (target.log_p[support] - log_pi[support])).sum())
    # KL(pi||p) itself is +inf: a softmax policy always puts some mass off a hard constraint. Reported instead:
    # KL(pi_b || p) with pi_b = pi(. | b = 1), the reverse KL of the policy's on-constraint part (>= 0, and 0
    # iff pi_b = p); constraint_satisfaction pi(b = 1) says how much mass is off.
    log_pi_b = log_pi[support] - torch.logsumexp(log_pi[support], 0)
    return {
        "kl_p_pi": kl_p_pi,
        "kl_pi_p": float((log_pi_b.exp() * (log_pi_b - target.log_p[support])).sum()),
        "entropy": float(-(pi * log_pi).sum()),
        "constraint_satisfaction": float(pi[target.satisfies(target.space)].sum()),
    }


class Config:
    """Defaults: chosen so that all four divergences train in about a minute on one CPU thread."""

    def __init__(self, args) -> None:
        self.vocab, self.length = args.vocab, args.length
        self.hidden, self.base_scale = args.hidden, args.base_scale
        self.beta, self.violation_penalty = args.beta, args.violation_penalty
        self.steps, self.batch_size, self.lr = args.steps, args.batch_size, args.lr
        self.eval_every, self.baseline_momentum = args.eval_every, args.baseline_momentum
        self.exact_log_z = args.exact_log_z


def make_base(cfg: Config, seed: int) -> PrefixPolicy:
    """The base a: a randomly initialised policy whose output layer is scaled up, so a is far from uniform
    (a 'pretrained' model with preferences of its own). The policy starts as an exact copy of it."""
    torch.manual_seed(seed)
    base = PrefixPolicy(cfg.vocab, cfg.length, cfg.hidden)
    with torch.no_grad():
        base.net[-1].weight.mul_(cfg.base_scale)
        base.net[-1].bias.mul_(cfg.base_scale)
    return base.requires_grad_(False)


def train_one(divergence: str, base: PrefixPolicy, target: ToyTarget, cfg: Config, seed: int):
    """Train a copy of the base on its own samples; every divergence sees the same seed (a paired run)."""
    policy = copy.deepcopy(base).requires_grad_(True)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    fdpg = fdiv_ops.FDPG(divergence, baseline_momentum=cfg.baseline_momentum)
    generator = torch.Generator().manual_seed(seed + 1)
    history: dict[str, list[float]] = {"step": [], **{k: [] for k in METRICS}}
    z_error = []
    for step in range(cfg.steps + 1):
        if step % cfg.eval_every == 0 or step == cfg.steps:
            history["step"].append(step)
            for key, value in exact_metrics(policy, target).items():
                history[key].append(value)
        if step == cfg.steps:
            break
        tokens = policy.sample(cfg.batch_size, generator)
        log_pi = policy.sequence_logprobs(tokens)
        # Off the constraint log P = -inf, where reverse_kl's pseudo-reward log(p/pi) - 1 is -inf too (its
        # f = -log r is linear in l, so no clamp bounds it): the loss sees log P floored at log a - penalty.
        # The same floor for every divergence keeps the comparison paired; at 20 nats it moves p by < 1e-8.
        log_scores = target.log_scores(tokens)
        floor = target.log_base[target.index(tokens)] - cfg.violation_penalty
        log_scores = torch.maximum(log_scores, floor)
        if cfg.exact_log_z:
            loss, stats = fdiv_ops.f_dpg_loss(
                log_pi, target_logscores=log_scores, log_z=target.log_z, divergence=divergence
            )
        else:
            loss, stats = fdpg(log_pi, log_scores)
            z_error.append(float(stats["log_z"][0]) - target.log_z)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    final = {k: history[k][-1] for k in METRICS}
    tail = history["kl_p_pi"][-max(2, len(history["kl_p_pi"]) // 4) :]
    extras = {
        # step-to-step wobble of the exact KL(p||pi) over the last quarter of training: the variance the
        # f-DPG paper attributes to forward_kl shows up here, measured without sampling noise
        "kl_p_pi_tail_std": float(torch.tensor(tail).std()),
        "final_log_z_error": z_error[-1] if z_error else 0.0,
    }
    return final, extras, history


def plot(histories: dict[str, dict], base_metrics: dict, cfg: Config, out_dir, stem):
    plt = _common.pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    panels = [
        ("kl_p_pi", "KL(p || pi)"),
        ("kl_pi_p", "KL(pi_b || p), pi conditioned on b = 1"),
        ("entropy", "entropy H(pi) (nats)"),
        ("constraint_satisfaction", "pi(b = 1)"),
    ]
    for ax, (key, title) in zip(axes, panels, strict=True):
        for name, history in histories.items():
            ax.plot(history["step"], history[key], label=name, lw=1.3)
        if key == "entropy":
            ax.axhline(base_metrics["target_entropy"], color="k", ls="--", lw=1, label="H(p)")
        if key == "constraint_satisfaction":
            ax.axhline(1.0, color="k", ls="--", lw=1)
        if key.startswith("kl"):
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"f-DPG on all {cfg.vocab**cfg.length} sequences of length {cfg.length} over {cfg.vocab} tokens "
        "(metrics exact, by enumeration)",
        fontsize=11,
    )
    return _common.save_figure(fig, out_dir, stem)


def parse_args(argv):
    parser = _common.make_parser(__file__, __doc__.splitlines()[0])
    parser.add_argument("--divergences", nargs="+", default=list(DIVERGENCES), choices=DIVERGENCES)
    parser.add_argument("--vocab", type=int, default=6)
    parser.add_argument("--length", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--base-scale", type=float, default=8.0, help="output-layer scale of the random base")
    parser.add_argument("--beta", type=float, default=1.0, help="soft preference: +beta nats per token 1")
    parser.add_argument(
        "--violation-penalty",
        type=float,
        default=20.0,
        help="nats below log a(x) the loss floors log P(x) at off the hard constraint",
    )
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--baseline-momentum", type=float, default=0.99)
    parser.add_argument(
        "--exact-log-z", action="store_true", help="f_dpg_loss with the exact log Z instead of FDPG's running estimate"
    )
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    _common.setup(args)
    cfg = Config(args)
    stem = _common.script_stem(__file__)
    base = make_base(cfg, args.seed)
    target = ToyTarget(base, cfg.beta)
    p = target.log_p.exp()
    base_metrics = {
        **exact_metrics(base, target),
        "target_entropy": float(-(p[p > 0] * target.log_p[p > 0]).sum()),
        "num_sequences": len(target.space),
        "log_z": target.log_z,
    }
    results, extras, histories = {}, {}, {}
    start = time.perf_counter()
    for name in args.divergences:
        t0 = time.perf_counter()
        results[name], extras[name], histories[name] = train_one(name, base, target, cfg, args.seed)
        extras[name]["train_seconds"] = round(time.perf_counter() - t0, 2)
        print(f"  {name}: {extras[name]['train_seconds']:.1f}s", flush=True)
    result = {
        "divergences": results,
        "base": base_metrics,
        "extras": extras,
        "history": histories,
        "config": {
            **cfg.__dict__,
            "seed": args.seed,
            "kl_pi_p": "KL(pi(.|b=1) || p): KL(pi||p) itself is +inf, a softmax policy puts mass off a hard constraint",
        },
        "seconds": round(time.perf_counter() - start, 1),
    }
    json_path = _common.write_json(args.out, stem, result)
    png_path = plot(histories, base_metrics, cfg, args.out, stem)
    rows = {name: {**results[name], "kl_p_pi_tail_std": extras[name]["kl_p_pi_tail_std"]} for name in results}
    rows["(base = initial policy)"] = base_metrics
    print(_common.format_table(rows, (*METRICS, "kl_p_pi_tail_std")))
    print(f"target: H(p) = {base_metrics['target_entropy']:.4f} over {len(target.space)} sequences")
    print(f"wrote {json_path} and {png_path} ({result['seconds']:.0f}s)")
    return result


if __name__ == "__main__":
    main()
