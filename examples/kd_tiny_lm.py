"""Token-level distillation of a GPT-2-style teacher into a smaller student inside a Hugging Face Trainer.

A synthetic language (a sparse random Markov chain over the vocabulary, generated here; nothing is
downloaded) trains a small GPT-2 teacher from random init. A smaller GPT-2 student is then distilled on the
same kind of text with ``fdiv_ops.fused_linear_f_divergence`` inside ``Trainer.compute_loss``: the loss takes
the last hidden states (``output_hidden_states=True``, with ``logits_to_keep=1`` so the model itself builds
no full logits tensor) and the two ``lm_head.weight`` matrices, and never materialises the (tokens, V)
logits. Compared: forward_kl, reverse_kl and gkd_jsd(0.5), on the held-out teacher-student KL
KL(teacher || student) per token (``heldout_kl``), and the loss op's peak memory against eager KD
(logits by F.linear, then log-softmax and the divergence in plain PyTorch: ``loss_peak_mem_mb`` and
``eager_loss_peak_mem_mb``).

    pip install "fdiv-ops[examples]"       # transformers, accelerate, matplotlib
    python examples/kd_tiny_lm.py          # ~60 s on a 2-core CPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common
import fdiv_ops
from fdiv_ops import reference

DIVERGENCES = ("forward_kl", "reverse_kl", "gkd_jsd(0.5)")
METRICS = ("heldout_kl", "loss_peak_mem_mb")


# ---------------------------------------------------------------------------------------------------
# the synthetic language


class MarkovLanguage:
    """x_{t+1} ~ P(. | x_t): each token has ``branching`` successors whose probabilities are normalised
    squared exponential draws, so the next-token distribution is sparse and uneven, like text's."""

    def __init__(self, vocab: int, branching: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        successors = torch.stack([torch.randperm(vocab, generator=gen)[:branching] for _ in range(vocab)])
        weights = (-torch.rand(vocab, branching, generator=gen).clamp_min(1e-12).log()).pow(2) + 1e-3
        self.transition = torch.zeros(vocab, vocab, dtype=torch.float64)
        self.transition.scatter_(1, successors, (weights / weights.sum(1, keepdim=True)).double())
        self.vocab = vocab

    def sample(self, count: int, length: int, gen: torch.Generator) -> torch.Tensor:
        tokens = torch.empty(count, length, dtype=torch.long)
        tokens[:, 0] = torch.randint(self.vocab, (count,), generator=gen)
        for t in range(1, length):
            tokens[:, t] = torch.multinomial(self.transition[tokens[:, t - 1]].float(), 1, generator=gen).squeeze(1)
        return tokens

    def entropy_rate(self) -> float:
        """Mean next-token entropy under the uniform start (nats): the floor of the teacher's loss."""
        p = self.transition
        return float(-(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(1).mean())


class TokenDataset(torch.utils.data.Dataset):
    def __init__(self, tokens: torch.Tensor) -> None:
        self.tokens = tokens

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokens[i]}


# ---------------------------------------------------------------------------------------------------
# models


def gpt2(vocab: int, length: int, width: int, layers: int, heads: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab,
        n_positions=length,
        n_embd=width,
        n_layer=layers,
        n_head=heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,  # no dropout: paired, repeatable runs
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(config)


def last_hidden(model, input_ids: torch.Tensor) -> torch.Tensor:
    """The final hidden states (after GPT-2's ln_f, what lm_head reads). logits_to_keep=1 makes the model
    compute logits for the last position only, so no (tokens, V) tensor is built on the way."""
    return model(input_ids, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]


def train_teacher(teacher, data: torch.Tensor, cfg, seed: int) -> list[float]:
    """Plain next-token cross-entropy, a short AdamW run (the teacher only has to be a fixed, non-trivial
    distribution for the students to match)."""
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(teacher.parameters(), lr=cfg.teacher_lr, weight_decay=0.0)
    teacher.train()
    losses = []
    for _ in range(cfg.teacher_steps):
        batch = data[torch.randint(len(data), (cfg.batch_size,), generator=gen)]
        loss = teacher(batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def kd_trainer_class():
    """A Trainer whose compute_loss distils the teacher into the model with fused_linear_f_divergence."""
    from transformers import Trainer

    class FusedKDTrainer(Trainer):
        def __init__(self, *args, teacher, divergence: str, chunk_size: int | None, **kwargs):
            super().__init__(*args, **kwargs)
            self.teacher = teacher.eval().requires_grad_(False)
            self.divergence = divergence
            self.chunk_size = chunk_size
            self.kd_losses: list[float] = []

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            input_ids = inputs["input_ids"]
            with torch.no_grad():
                teacher_hidden = last_hidden(self.teacher, input_ids)
            student_hidden = last_hidden(model, input_ids)
            # every position is a KD row: both models predict the next token there, so no shift and no labels.
            # Without labels the Trainer passes num_items_in_batch=None; "batchmean" over the step's rows is
            # then right because this example does not accumulate gradients (with accumulation and labels,
            # pass num_items_in_batch on, as the top-level README's recipe does)
            loss = fdiv_ops.fused_linear_f_divergence(
                student_hidden,
                model.lm_head.weight,
                teacher_hidden,
                self.teacher.lm_head.weight,
                divergence=self.divergence,
                chunk_size=self.chunk_size,
            )
            self.kd_losses.append(float(loss.detach()))
            return (loss, None) if return_outputs else loss

    return FusedKDTrainer


def distil(divergence: str, student_init, teacher, data: torch.Tensor, cfg, seed: int, workdir: str):
    import copy

    from transformers import TrainingArguments

    student = copy.deepcopy(student_init)
    args = TrainingArguments(
        output_dir=workdir,
        max_steps=cfg.student_steps,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.student_lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        seed=seed,
        data_seed=seed,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )
    trainer = kd_trainer_class()(
        model=student,
        args=args,
        train_dataset=TokenDataset(data),
        teacher=teacher,
        divergence=divergence,
        chunk_size=cfg.chunk_size,
    )
    trainer.train()
    return student, trainer.kd_losses


@torch.no_grad()
def heldout_kl(student, teacher, data: torch.Tensor, batch_size: int) -> dict[str, float]:
    """Per-token KL(teacher || student) and KL(student || teacher) on held-out text, in float64."""
    student.eval()
    teacher.eval()
    forward, reverse, count = 0.0, 0.0, 0
    for start in range(0, len(data), batch_size):
        batch = data[start : start + batch_size]
        log_p = F.log_softmax(teacher(batch).logits.double(), -1)
        log_q = F.log_softmax(student(batch).logits.double(), -1)
        forward += float((log_p.exp() * (log_p - log_q)).sum())
        reverse += float((log_q.exp() * (log_q - log_p)).sum())
        count += batch.numel()
    return {"heldout_kl": forward / count, "heldout_reverse_kl": reverse / count}


# ---------------------------------------------------------------------------------------------------
# peak memory of the loss op


def loss_step(provider: str, shapes: dict, divergence: str, chunk_size: int | None):
    """One forward+backward of the KD loss on random inputs of the training batch's shapes."""
    gen = torch.Generator().manual_seed(0)
    rows, vocab = shapes["rows"], shapes["vocab"]
    s_h = torch.randn(rows, shapes["student_width"], generator=gen, requires_grad=True)
    s_w = shapes["student_width"] ** -0.5 * torch.randn(vocab, shapes["student_width"], generator=gen)
    s_w.requires_grad_(True)
    t_h = torch.randn(rows, shapes["teacher_width"], generator=gen)
    t_w = shapes["teacher_width"] ** -0.5 * torch.randn(vocab, shapes["teacher_width"], generator=gen)

    def step():
        if provider == "fused":
            loss = fdiv_ops.fused_linear_f_divergence(s_h, s_w, t_h, t_w, divergence=divergence, chunk_size=chunk_size)
        else:  # eager KD: both (rows, V) logits, log-softmaxes and the divergence in plain PyTorch
            loss = reference.fused_linear_f_divergence(s_h, s_w, t_h, t_w, divergence=divergence)
        loss.backward()
        s_h.grad = s_w.grad = None

    return step


def measure_memory(shapes: dict, divergences, chunk_size: int | None) -> dict:
    """{divergence: {"fused": MiB, "eager": MiB}}: the growth of the peak RSS of a fresh subprocess over one
    forward+backward, least of three (fdiv_ops.bench.memory's method: the CPU has no allocator counter, and
    glibc is made to return freed tensors to the OS so one measurement does not reuse another's heap)."""
    spec = json.dumps({"shapes": shapes, "divergences": list(divergences), "chunk_size": chunk_size})
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path(fdiv_ops.__file__).parent.parent), env.get("PYTHONPATH")) if p
    )
    proc = subprocess.run(
        [sys.executable, __file__, "--memprobe", spec], env=env, capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _memprobe(spec_json: str) -> None:
    from fdiv_ops.bench.memory import rss_growth_mb

    spec = json.loads(spec_json)
    torch.set_num_threads(1)
    result = {}
    for divergence in spec["divergences"]:
        result[divergence] = {}
        for provider in ("fused", "eager"):
            step = loss_step(provider, spec["shapes"], divergence, spec["chunk_size"])
            step()  # warm-up: first-call allocations (thread pools, caches) are not the op's
            result[divergence][provider] = round(min(rss_growth_mb(step) for _ in range(3)), 2)
    print(json.dumps(result))


# ---------------------------------------------------------------------------------------------------
# outputs


def plot(curves: dict, results: dict, eager_mem: dict, teacher_losses, cfg, out_dir, stem):
    plt = _common.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    window = max(1, cfg.student_steps // 20)
    for name, losses in curves.items():
        smooth = torch.tensor(losses).unfold(0, window, 1).mean(1) if len(losses) >= window else torch.tensor(losses)
        axes[0].plot(range(window - 1, window - 1 + len(smooth)), smooth, label=name)
    axes[0].set_title(f"training KD loss (own divergence; mean of {window} steps)", fontsize=10)
    axes[0].set_xlabel("student step")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=8)
    names = list(results)
    axes[1].bar(names, [results[n]["heldout_kl"] for n in names], color=["C0", "C1", "C2"][: len(names)])
    axes[1].set_title("held-out KL(teacher || student) per token (nats)", fontsize=10)
    width = 0.38
    xs = torch.arange(len(names)).float()
    fused = [results[n]["loss_peak_mem_mb"] for n in names]
    axes[2].bar(xs - width / 2, fused, width, label="fused_linear_f_divergence")
    axes[2].bar(xs + width / 2, [eager_mem[n] for n in names], width, label="eager KD (full logits)")
    axes[2].set_xticks(xs.tolist(), names)
    axes[2].set_title(
        f"loss op peak memory, one fwd+bwd (MiB; {cfg.batch_size * cfg.length} tokens, V={cfg.vocab})", fontsize=10
    )
    axes[2].legend(fontsize=8)
    fig.suptitle(
        f"KD of a GPT-2 teacher ({cfg.teacher_layers}x{cfg.teacher_width}) into a student "
        f"({cfg.student_layers}x{cfg.student_width}) in a HF Trainer; teacher final train loss "
        f"{sum(teacher_losses[-20:]) / len(teacher_losses[-20:]):.3f} nats",
        fontsize=11,
    )
    return _common.save_figure(fig, out_dir, stem)


def parse_args(argv):
    parser = _common.make_parser(__file__, __doc__.splitlines()[0])
    parser.add_argument("--divergences", nargs="+", default=list(DIVERGENCES))
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--branching", type=int, default=8, help="successors per token in the language")
    parser.add_argument("--length", type=int, default=64, help="tokens per sequence")
    parser.add_argument("--train-sequences", type=int, default=4096)
    parser.add_argument("--heldout-sequences", type=int, default=256)
    parser.add_argument("--teacher-width", type=int, default=128)
    parser.add_argument("--teacher-layers", type=int, default=2)
    parser.add_argument("--student-width", type=int, default=64)
    parser.add_argument("--student-layers", type=int, default=1)
    parser.add_argument("--teacher-steps", type=int, default=300)
    parser.add_argument("--student-steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--teacher-lr", type=float, default=3e-3)
    parser.add_argument("--student-lr", type=float, default=3e-3)
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=128,
        help="rows per chunk of the fused loss; 0 lets the op pick (all rows when they fit)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocess")
    parser.add_argument("--memprobe", help=argparse.SUPPRESS)  # internal: the memory subprocess's entry
    args = parser.parse_args(argv)
    args.chunk_size = args.chunk_size or None
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.memprobe:
        _memprobe(args.memprobe)
        return {}
    _common.setup(args)
    for name in args.divergences:
        fdiv_ops.divergences.resolve(name)  # fail before training on a misspelt divergence
    cfg = args
    stem = _common.script_stem(__file__)
    start = time.perf_counter()
    language = MarkovLanguage(cfg.vocab, cfg.branching, args.seed)
    data_gen = torch.Generator().manual_seed(args.seed + 1)
    train = language.sample(cfg.train_sequences, cfg.length, data_gen)
    heldout = language.sample(cfg.heldout_sequences, cfg.length, data_gen)

    torch.manual_seed(args.seed)
    teacher = gpt2(cfg.vocab, cfg.length, cfg.teacher_width, cfg.teacher_layers, heads=4)
    teacher_losses = train_teacher(teacher, train, cfg, args.seed)
    teacher.eval().requires_grad_(False)
    student_init = gpt2(cfg.vocab, cfg.length, cfg.student_width, cfg.student_layers, heads=2)
    print(
        f"  teacher: {time.perf_counter() - start:.1f}s, final loss {teacher_losses[-1]:.3f} "
        f"(language entropy rate {language.entropy_rate():.3f})",
        flush=True,
    )

    results, extras, curves = {}, {}, {}
    untrained = heldout_kl(student_init, teacher, heldout, cfg.batch_size)
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.divergences:
            t0 = time.perf_counter()
            student, curves[name] = distil(name, student_init, teacher, train, cfg, args.seed, workdir)
            kl = heldout_kl(student, teacher, heldout, cfg.batch_size)
            results[name] = {"heldout_kl": kl["heldout_kl"]}
            extras[name] = {
                "heldout_reverse_kl": kl["heldout_reverse_kl"],
                "train_seconds": round(time.perf_counter() - t0, 2),
            }
            print(f"  {name}: {extras[name]['train_seconds']:.1f}s", flush=True)

    shapes = {
        "rows": cfg.batch_size * cfg.length,
        "vocab": cfg.vocab,
        "student_width": cfg.student_width,
        "teacher_width": cfg.teacher_width,
    }
    memory = None if args.no_memory else measure_memory(shapes, args.divergences, cfg.chunk_size)
    eager_mem = {}
    for name in args.divergences:
        results[name]["loss_peak_mem_mb"] = memory[name]["fused"] if memory else float("nan")
        eager_mem[name] = memory[name]["eager"] if memory else float("nan")
        extras[name]["eager_loss_peak_mem_mb"] = eager_mem[name]

    config = {k: v for k, v in vars(args).items() if k not in ("out", "memprobe")}
    result = {
        "divergences": results,
        "extras": extras,
        "untrained_student": untrained,
        "teacher": {
            "final_train_loss": sum(teacher_losses[-20:]) / len(teacher_losses[-20:]),
            "language_entropy_rate": language.entropy_rate(),
        },
        "memory_shapes": shapes,
        "config": config,
        "seconds": round(time.perf_counter() - start, 1),
    }
    json_path = _common.write_json(args.out, stem, result)
    png_path = plot(curves, results, eager_mem, teacher_losses, cfg, args.out, stem)
    rows = {
        name: {
            **results[name],
            "eager_loss_peak_mem_mb": eager_mem[name],
            "heldout_reverse_kl": extras[name]["heldout_reverse_kl"],
        }
        for name in results
    }
    rows["(untrained student)"] = untrained
    print(_common.format_table(rows, (*METRICS, "eager_loss_peak_mem_mb", "heldout_reverse_kl")))
    print(f"wrote {json_path} and {png_path} ({result['seconds']:.0f}s)")
    return result


if __name__ == "__main__":
    main()
