"""f-distill in miniature: distil a 2-D mixture of Gaussians into a one-step generator, once per divergence.

The setting (Xu, Nie, Vahdat 2025, "One-step diffusion models with f-divergence distribution matching"):

* Teacher: a mixture of K = 8 isotropic Gaussians on a ring, unequal weights w_i, std s_i. Noised as
  x_t = x + sigma_t * eps, it is again a mixture with variances s_i^2 + sigma_t^2, so its score and its
  x0-prediction are exact (Tweedie):  x0_hat = x_t + sigma_t^2 * grad log p_t(x_t).
* Generator: an MLP from Gaussian noise z to x, one step.
* Fake score network: an MLP predicting x0 from (x_t, sigma_t), trained online by denoising regression on
  the generator's samples, so that it tracks the score of q_t.
* Discriminator: an MLP on (x_t, sigma_t) trained with the non-saturating GAN loss (real: noised teacher
  samples, drawn exactly; fake: noised generator samples). At its optimum its logit is log p_t/q_t.
* Generator loss: ``fdiv_ops.FDistillLoss(divergence)`` on x = G(z) with the teacher's and the fake
  network's x0-predictions at x_t and the (detached) discriminator logit at x_t: the gradient
  h(r) (x0_fake - x0_teacher) / normaliser, i.e. -h(r) (s_teacher - s_fake) up to the DMD normaliser.
  reverse_kl (h = 1) is DMD. Optionally, ``--gan-weight`` adds the generator's non-saturating GAN term.

Every divergence trains from the same initial weights, on the same noise stream, for the same steps.

Metrics, on ``--eval-samples`` generator samples (a sample "belongs" to mode i when it lies within
``NEAR_STDS`` = 3 standard deviations s_i of mean mu_i; in 2-D the teacher itself puts 98.9% of each mode
there):

* ``mode_recall``: the share of the K modes that hold at least ``RECALL_SHARE`` = 25% of their expected
  mass, i.e. mode i is recalled when (samples belonging to i) / N >= 0.25 * w_i * 0.989.
* ``precision``: the share of samples that belong to some mode.
* ``energy_distance``: 2 E|X - Y| - E|X - X'| - E|Y - Y'| between generator samples X and teacher samples
  Y (V-statistic on ``--energy-samples`` of each; 0 iff the distributions agree).

The teacher's own samples are scored the same way (``teacher`` in the JSON) as the ceiling to compare with.

Run:  python examples/gmm_f_distill.py [--steps 3000] [--seed 0] [--out examples/out]
Writes gmm_f_distill.json and gmm_f_distill.png to --out and prints a results table.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common
import fdiv_ops

DIVERGENCES = ("reverse_kl", "js", "forward_kl", "squared_hellinger")
METRICS = ("mode_recall", "precision", "energy_distance")
NEAR_STDS = 3.0
RECALL_SHARE = 0.25
NEAR_MASS_2D = 1.0 - math.exp(-0.5 * NEAR_STDS**2)  # P(|N(0, I_2)| <= 3): a mode's own mass within 3 std


# ---------------------------------------------------------------------------------------------- teacher
class MixtureTeacher:
    """K isotropic 2-D Gaussians: means on a ring of radius ``radius``, weights proportional to 1..K
    (interleaved around the ring so light and heavy modes alternate), a common std ``mode_std``."""

    def __init__(self, num_modes: int = 8, radius: float = 2.0, mode_std: float = 0.15) -> None:
        angles = torch.arange(num_modes, dtype=torch.float64) * (2 * math.pi / num_modes)
        self.means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)  # (K, 2)
        order = torch.tensor([(i // 2) if i % 2 == 0 else num_modes - 1 - i // 2 for i in range(num_modes)])
        raw = (order + 1).double()
        self.weights = raw / raw.sum()  # (K,), unequal: 1/36 to 8/36 for K = 8
        self.stds = torch.full((num_modes,), mode_std, dtype=torch.float64)
        self.data_std = float((self.weights * (self.means.pow(2).sum(1) / 2 + self.stds**2)).sum().sqrt())

    @property
    def num_modes(self) -> int:
        return self.means.shape[0]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        idx = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, 2, dtype=torch.float64, generator=generator)
        return (self.means[idx] + self.stds[idx, None] * noise).float()

    def x0_prediction(self, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """E[x0 | x_t] = x_t + sigma^2 * score of p_t (Tweedie), exact for the mixture; float64 inside."""
        x = x_t.double()[:, None, :]  # (B, 1, 2)
        var = self.stds[None, :] ** 2 + sigma.double()[:, None] ** 2  # (B, K): s_i^2 + sigma_t^2
        diff = self.means[None] - x  # (B, K, 2)
        log_resp = self.weights.log()[None] - diff.pow(2).sum(-1) / (2 * var) - torch.log(var)  # 2-D: -d/2 log var
        resp = torch.softmax(log_resp, dim=1)
        score = (resp[..., None] * diff / var[..., None]).sum(1)  # (B, 2)
        return (x_t.double() + sigma.double()[:, None] ** 2 * score).to(x_t.dtype)


# -------------------------------------------------------------------------------------------- networks
def mlp(d_in: int, d_out: int, width: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(d_in if i == 0 else width, width), nn.SiLU()]
    layers.append(nn.Linear(width, d_out))
    return nn.Sequential(*layers)


class NoiseConditioned(nn.Module):
    """An MLP on (c_in * x_t, log sigma features) with EDM's input scaling (Karras et al. 2022), so one
    small network serves every noise level."""

    def __init__(self, d_out: int, width: int, depth: int, data_std: float) -> None:
        super().__init__()
        self.data_std = data_std
        self.net = mlp(2 + 4, d_out, width, depth)

    def features(self, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        c_in = (sigma**2 + self.data_std**2).rsqrt()[:, None]
        c_noise = sigma.log()[:, None] / 4
        return torch.cat([c_in * x_t, c_noise, (2 * c_noise).sin(), (2 * c_noise).cos(), (4 * c_noise).sin()], 1)

    def forward(self, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.net(self.features(x_t, sigma))


class FakeDenoiser(NoiseConditioned):
    """x0-prediction D(x_t, sigma) = c_skip x_t + c_out F(...) (EDM preconditioning)."""

    def __init__(self, width: int, depth: int, data_std: float) -> None:
        super().__init__(2, width, depth, data_std)

    def forward(self, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s2, d2 = sigma[:, None] ** 2, self.data_std**2
        c_skip = d2 / (s2 + d2)
        c_out = sigma[:, None] * self.data_std / (s2 + d2).sqrt()
        return c_skip * x_t + c_out * super().forward(x_t, sigma)

    def denoising_loss(self, x0: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """EDM's weighted denoising loss: lambda(sigma) |D - x0|^2 with lambda = 1 / c_out^2."""
        s2, d2 = sigma[:, None] ** 2, self.data_std**2
        weight = (s2 + d2) / (s2 * d2)
        return (weight * (self(x_t, sigma) - x0).pow(2)).mean()


# -------------------------------------------------------------------------------------------- training
@dataclass
class Config:
    steps: int = 3000
    batch_size: int = 256
    latent_dim: int = 4
    width: int = 64
    depth: int = 3
    lr_generator: float = 1e-3
    lr_critics: float = 1e-3  # the fake network and the discriminator
    critic_updates: int = 1  # fake-network and discriminator updates per generator update (DMD2: 5)
    warmup_steps: int = 200  # critic-only updates before the generator moves (the fake net starts random)
    sigma_min: float = 0.02
    sigma_max: float = 2.0
    mode_std: float = 0.15  # std of every teacher mode (the ring has radius 2: neighbours 1.53 apart)
    gan_weight: float = 0.0
    time_bins: int = 0
    eval_samples: int = 20000
    energy_samples: int = 2000


class Noise:
    """sigma_t log-uniform on [sigma_min, sigma_max] (EDM-style coverage of every scale)."""

    def __init__(self, cfg: Config) -> None:
        self.log_lo, self.log_hi = math.log(cfg.sigma_min), math.log(cfg.sigma_max)

    def sigma(self, n: int) -> torch.Tensor:
        return torch.exp(self.log_lo + (self.log_hi - self.log_lo) * torch.rand(n))


def train_one(divergence: str, teacher: MixtureTeacher, cfg: Config, seed: int) -> tuple[nn.Module, dict]:
    """Train a generator with one divergence; returns it and a few training statistics."""
    _common.seed_everything(seed)  # same initial weights and noise stream for every divergence
    generator = mlp(cfg.latent_dim, 2, cfg.width, cfg.depth)
    fake = FakeDenoiser(cfg.width, cfg.depth, teacher.data_std)
    disc = NoiseConditioned(1, cfg.width, cfg.depth, teacher.data_std)
    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.lr_generator, betas=(0.0, 0.99))
    opt_f = torch.optim.Adam(fake.parameters(), lr=cfg.lr_critics, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr_critics, betas=(0.0, 0.99))
    criterion = fdiv_ops.FDistillLoss(
        divergence, num_time_bins=cfg.time_bins, time_range=(math.log(cfg.sigma_min), math.log(cfg.sigma_max))
    )
    noise = Noise(cfg)
    data_gen = torch.Generator().manual_seed(seed + 1)
    batch = cfg.batch_size
    h_max_sum, ratio_log_abs_sum = 0.0, 0.0

    def critic_step() -> None:
        with torch.no_grad():
            x_fake = generator(torch.randn(batch, cfg.latent_dim))
        x_real = teacher.sample(batch, data_gen)
        sigma = noise.sigma(2 * batch)
        noisy = torch.cat([x_fake, x_real]) + sigma[:, None] * torch.randn(2 * batch, 2)
        # fake score network: denoising regression on generator samples only
        fake_loss = fake.denoising_loss(x_fake, noisy[:batch], sigma[:batch])
        opt_f.zero_grad(set_to_none=True)
        fake_loss.backward()
        opt_f.step()
        # discriminator: non-saturating GAN loss, real = noised teacher, fake = noised generator
        logits = disc(noisy, sigma).squeeze(1)
        labels = torch.cat([torch.zeros(batch), torch.ones(batch)])
        disc_loss = F.binary_cross_entropy_with_logits(logits, labels)
        opt_d.zero_grad(set_to_none=True)
        disc_loss.backward()
        opt_d.step()

    for _ in range(cfg.warmup_steps):
        critic_step()
    for _ in range(cfg.steps):
        for _ in range(cfg.critic_updates):
            critic_step()
        x = generator(torch.randn(batch, cfg.latent_dim))
        sigma = noise.sigma(batch)
        x_t = x.detach() + sigma[:, None] * torch.randn(batch, 2)
        with torch.no_grad():
            teacher_x0 = teacher.x0_prediction(x_t, sigma)
            fake_x0 = fake(x_t, sigma)
            disc_logits = disc(x_t, sigma).squeeze(1)
        # the time of each sample only matters when the ratio is binned by it (--time-bins > 0)
        loss = criterion(x, teacher_x0, fake_x0, disc_logits, time=sigma.log() if cfg.time_bins > 0 else None)
        if cfg.gan_weight > 0:
            # the generator's non-saturating GAN term, through the discriminator to x (f-distill adds it)
            x_t_live = x + (x_t - x.detach())
            loss = loss + cfg.gan_weight * F.softplus(-disc(x_t_live, sigma)).mean()
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        h_max_sum += float(criterion.last_h.max())
        ratio_log_abs_sum += float(criterion.last_ratio.log().abs().mean())
    stats = {"mean_h_max": h_max_sum / max(cfg.steps, 1), "mean_abs_log_ratio": ratio_log_abs_sum / max(cfg.steps, 1)}
    return generator, stats


# --------------------------------------------------------------------------------------------- metrics
def mode_metrics(samples: torch.Tensor, teacher: MixtureTeacher) -> dict[str, float]:
    """mode_recall and precision as defined in the module docstring, plus each mode's mass share."""
    dist = torch.cdist(samples.double(), teacher.means)  # (N, K)
    near = dist <= NEAR_STDS * teacher.stds[None]  # modes are > 2 * 3 std apart: at most one is near
    mass = near.double().mean(0)  # share of all samples near mode i
    expected = teacher.weights * NEAR_MASS_2D
    recalled = mass >= RECALL_SHARE * expected
    return {
        "mode_recall": float(recalled.double().mean()),
        "precision": float(near.any(1).double().mean()),
        "mode_mass_ratio": [round(float(v), 4) for v in mass / expected],
    }


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """2 E|X-Y| - E|X-X'| - E|Y-Y'| (V-statistic; Szekely & Rizzo)."""
    x, y = x.double(), y.double()
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def evaluate(samples: torch.Tensor, teacher: MixtureTeacher, reference: torch.Tensor, cfg: Config) -> dict:
    metrics = mode_metrics(samples, teacher)
    metrics["energy_distance"] = energy_distance(samples[: cfg.energy_samples], reference)
    return metrics


# ------------------------------------------------------------------------------------------------ plot
def plot(samples: dict[str, torch.Tensor], metrics: dict[str, dict], teacher: MixtureTeacher, path_out, stem):
    plt = _common.pyplot()
    names = list(samples)
    fig, axes = plt.subplots(1, len(names), figsize=(3.0 * len(names), 3.3), squeeze=False)
    lim = float(teacher.means.abs().max()) + 1.0
    for ax, name in zip(axes[0], names):
        pts = samples[name][:3000].numpy()
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.35, color="tab:blue" if name != "teacher" else "black")
        for (mx, my), w in zip(teacher.means.tolist(), teacher.weights.tolist()):
            ax.add_patch(plt.Circle((mx, my), NEAR_STDS * float(teacher.stds[0]), fill=False, color="tab:red", lw=0.8))
            ax.annotate(f"{w:.2f}", (mx * 1.28, my * 1.28), ha="center", va="center", fontsize=6, color="tab:red")
        m = metrics[name]
        ax.set_title(
            f"{name}\nrecall {m['mode_recall']:.2f}  prec {m['precision']:.2f}  ED {m['energy_distance']:.3f}",
            fontsize=8,
        )
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("f-distill on a 2-D mixture (red: 3-std circles, mode weights)", fontsize=9)
    return _common.save_figure(fig, path_out, stem)


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv):
    defaults = Config()
    parser = _common.make_parser(__file__, __doc__.splitlines()[0])
    parser.add_argument("--divergences", nargs="+", default=list(DIVERGENCES), help="divergences to train")
    for field, help_text in [
        ("steps", "generator updates per divergence"),
        ("batch_size", "samples per update"),
        ("critic_updates", "fake-network and discriminator updates per generator update"),
        ("warmup_steps", "critic-only updates before the generator trains"),
        ("width", "hidden width of every MLP"),
        ("lr_generator", "Adam learning rate of the generator"),
        ("lr_critics", "Adam learning rate of the fake network and the discriminator"),
        ("mode_std", "std of each teacher mode"),
        ("gan_weight", "weight of the generator's non-saturating GAN term (0: f-distill loss only)"),
        ("time_bins", "FDistillLoss num_time_bins over log sigma (0: off)"),
        ("eval_samples", "generator samples for mode recall / precision"),
        ("energy_samples", "samples of each side for the energy distance"),
    ]:
        value = getattr(defaults, field)
        parser.add_argument("--" + field.replace("_", "-"), type=type(value), default=value, help=help_text)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    _common.setup(args)
    cfg = Config(**{k: getattr(args, k) for k in Config.__dataclass_fields__ if hasattr(args, k)})
    stem = _common.script_stem(__file__)
    teacher = MixtureTeacher(mode_std=cfg.mode_std)
    eval_gen = torch.Generator().manual_seed(args.seed + 2)
    reference = teacher.sample(cfg.energy_samples, eval_gen)

    samples = {"teacher": teacher.sample(cfg.eval_samples, eval_gen)}
    metrics = {"teacher": evaluate(samples["teacher"], teacher, reference, cfg)}
    results, train_stats = {}, {}
    start = time.perf_counter()
    for name in args.divergences:
        t0 = time.perf_counter()
        generator, stats = train_one(name, teacher, cfg, args.seed)
        with torch.no_grad():
            samples[name] = generator(torch.randn(cfg.eval_samples, cfg.latent_dim, generator=eval_gen))
        metrics[name] = evaluate(samples[name], teacher, reference, cfg)
        results[name] = {k: metrics[name][k] for k in METRICS}
        train_stats[name] = {
            **stats,
            "mode_mass_ratio": metrics[name]["mode_mass_ratio"],
            "train_seconds": round(time.perf_counter() - t0, 2),
        }
        print(f"  {name}: {train_stats[name]['train_seconds']:.1f}s", flush=True)

    result = {
        "divergences": results,
        "teacher": {k: metrics["teacher"][k] for k in METRICS},
        "train_stats": train_stats,
        "config": {
            **cfg.__dict__,
            "seed": args.seed,
            "num_modes": teacher.num_modes,
            "mode_weights": [round(w, 4) for w in teacher.weights.tolist()],
            "near_stds": NEAR_STDS,
            "recall_share": RECALL_SHARE,
        },
        "seconds": round(time.perf_counter() - start, 1),
    }
    json_path = _common.write_json(args.out, stem, result)
    png_path = plot(samples, metrics, teacher, args.out, stem)
    print(_common.format_table({**results, "(teacher)": result["teacher"]}, METRICS))
    print(f"wrote {json_path} and {png_path} ({result['seconds']:.0f}s)")
    return result


if __name__ == "__main__":
    main()
