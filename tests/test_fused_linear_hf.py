"""The README's Hugging Face recipe (FusedKDTrainer), executed from the README itself, on tiny randomly
initialised GPT-2 models (no download): it trains, and its loss equals the unfused loss on materialised logits."""

import pathlib
import re

import fdiv_ops
import pytest
import torch

transformers = pytest.importorskip("transformers")

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _recipe_namespace() -> dict:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (block,) = [b for b in blocks if "class FusedKDTrainer" in b]
    code = block[: block.index("\ntrainer = FusedKDTrainer(")]  # the usage lines name undefined objects
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # our own README
    return namespace


def test_readme_trainer_recipe_trains_and_matches_the_unfused_loss(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments

    trainer_cls = _recipe_namespace()["FusedKDTrainer"]
    vocab = 257
    student = GPT2LMHeadModel(
        GPT2Config(vocab_size=vocab, n_positions=32, n_embd=32, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0)
    )
    teacher = GPT2LMHeadModel(
        GPT2Config(vocab_size=vocab, n_positions=32, n_embd=48, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0)
    )  # H' != H
    ids = torch.randint(0, vocab, (8, 12))
    data = [{"input_ids": row, "attention_mask": torch.ones_like(row), "labels": row.clone()} for row in ids]
    for row in data[:3]:
        row["labels"][:4] = -100  # a prompt without loss
    kd = fdiv_ops.FusedLinearFDivergenceLoss(
        fdiv_ops.gkd_jsd(0.5), temperature=2.0, hard_loss_weight=0.5, chunk_size=16
    )
    args = TrainingArguments(
        str(tmp_path),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=2,
        learning_rate=1e-3,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = trainer_cls(model=student, args=args, train_dataset=data, teacher=teacher, kd_loss=kd)
    before = student.lm_head.weight.detach().clone()
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(before, student.lm_head.weight)  # the student was trained
    assert all(p.grad is None for p in teacher.parameters())

    batch = {k: torch.stack([d[k] for d in data[:4]]) for k in data[0]}
    labels = batch["labels"]
    student.eval()
    fused = trainer.compute_loss(student, dict(batch))
    with torch.no_grad():
        s_logits = student(input_ids=batch["input_ids"]).logits[:, :-1]
        t_logits = teacher(input_ids=batch["input_ids"]).logits[:, :-1]
    soft = fdiv_ops.f_divergence_loss(
        s_logits, t_logits, divergence=fdiv_ops.gkd_jsd(0.5), temperature=2.0, labels=labels[:, 1:]
    )
    ce = torch.nn.functional.cross_entropy(s_logits.reshape(-1, vocab), labels[:, 1:].reshape(-1))
    torch.testing.assert_close(fused.detach(), soft + 0.5 * ce, rtol=1e-5, atol=1e-6)
