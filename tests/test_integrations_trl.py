"""fdiv_ops.integrations.trl against the installed TRL itself (TRL's own functions are called, not a copy):
GKD's generalized_jsd_loss in every reduction, a few GKDTrainer steps on tiny random GPT-2s, and the DPO
sigmoid loss for every f_divergence_type through DPOTrainer._compute_loss.

``PYTHONPATH=python python tests/test_integrations_trl.py`` prints the largest differences measured here (the
numbers of docs/integrations.md's compatibility table).
"""

from __future__ import annotations

import itertools
import math
import tempfile
import warnings
from collections import defaultdict
from types import SimpleNamespace

import fdiv_ops
import pytest
import torch
from fdiv_ops import reference as ref
from fdiv_ops.integrations import trl as fi

trl = pytest.importorskip("trl", reason="TRL is not installed (the test extra installs it: pip install -e '.[test]')")


def _trl_gkd_trainer():
    try:
        with warnings.catch_warnings():  # TRL warns on every import from trl.experimental
            warnings.simplefilter("ignore")
            from trl.experimental.gkd import GKDTrainer
    except ImportError as err:
        pytest.skip(f"trl {trl.__version__} has no trl.experimental.gkd.GKDTrainer (TRL 1.x moved it there): {err}")
    return GKDTrainer


def _rel_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want| (the largest magnitude sets the scale: an entry can be ~0)."""
    scale = float(want.double().abs().max()) if want.numel() else 0.0
    diff = float((got.double() - want.double()).abs().max()) if want.numel() else 0.0
    return diff / scale if scale > 0 else diff


# ---------------------------------------------------------------------------------------------------
# GKD: generalized_jsd_loss

BETAS = [0.0, 0.1, 0.5, 0.9, 1.0]
REDUCTIONS = ["batchmean", "sum", "mean", "none"]
NUM_ITEMS = [None, 7, "tensor"]


def _gkd_inputs(dtype, with_labels, seed=0):
    gen = torch.Generator().manual_seed(seed)
    student = (3 * torch.randn(2, 5, 37, generator=gen, dtype=torch.float64)).to(dtype)
    teacher = (3 * torch.randn(2, 5, 37, generator=gen, dtype=torch.float64)).to(dtype)
    labels = torch.randint(0, 37, (2, 5), generator=gen)
    labels[0, :2] = -100  # a prompt
    labels[1, -1] = -100  # padding
    return student, teacher, (labels if with_labels else None)


def _gkd_compare(dtype, beta, reduction, with_labels, num_items, temperature, device="cpu"):
    """(relative difference of the loss, of the student gradient) between ours and TRL's static method."""
    trl_loss_fn = _trl_gkd_trainer().generalized_jsd_loss
    student, teacher, labels = (None if v is None else v.to(device) for v in _gkd_inputs(dtype, with_labels))
    items = torch.tensor(7.0, device=device) if num_items == "tensor" else num_items
    args = (labels, beta, temperature, reduction, items)
    ours_in, trl_in = student.clone().requires_grad_(), student.clone().requires_grad_()
    ours = fi.generalized_jsd_loss(ours_in, teacher, *args)
    want = trl_loss_fn(trl_in, teacher, *args)
    assert ours.shape == want.shape, (ours.shape, want.shape)
    weight = torch.rand(want.shape, dtype=torch.float64, device=device)  # grad_output != 1 for "none"
    ours.backward(weight.to(ours.dtype))
    want.backward(weight.to(want.dtype))
    return _rel_diff(ours.detach(), want.detach()), _rel_diff(ours_in.grad, trl_in.grad)


@pytest.mark.parametrize("num_items", NUM_ITEMS, ids=["items=None", "items=7", "items=tensor"])
@pytest.mark.parametrize("with_labels", [False, True], ids=["no-labels", "labels"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_generalized_jsd_loss_matches_trl(dtype, beta, reduction, with_labels, num_items):
    loss_diff, grad_diff = _gkd_compare(dtype, beta, reduction, with_labels, num_items, temperature=2.0)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert loss_diff <= tol and grad_diff <= tol, (loss_diff, grad_diff)


@pytest.mark.parametrize("num_items", NUM_ITEMS, ids=["items=None", "items=7", "items=tensor"])
@pytest.mark.parametrize("with_labels", [False, True], ids=["no-labels", "labels"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_generalized_jsd_loss_matches_trl_on_each_device(reduction, with_labels, num_items, device):
    loss_diff, grad_diff = _gkd_compare(torch.float32, 0.5, reduction, with_labels, num_items, 2.0, device)
    assert loss_diff <= 1e-5 and grad_diff <= 1e-5, (loss_diff, grad_diff)


def test_generalized_jsd_loss_defaults_and_temperature_match_trl():
    trl_loss_fn = _trl_gkd_trainer().generalized_jsd_loss
    student, teacher, labels = _gkd_inputs(torch.float64, True, seed=3)
    for kwargs in ({}, {"labels": labels}, {"labels": labels, "temperature": 0.5, "beta": 0.3}):
        torch.testing.assert_close(
            fi.generalized_jsd_loss(student, teacher, **kwargs),
            trl_loss_fn(student, teacher, **kwargs),
            rtol=1e-12,
            atol=0,
        )


def test_batchmean_without_labels_divides_by_the_batch_not_the_rows():
    # the issue: TRL 1.x divides by size(0) = B; the core op's batchmean divides by the B * S rows
    student, teacher, _ = _gkd_inputs(torch.float64, False)
    ours = fi.generalized_jsd_loss(student, teacher)
    core = fdiv_ops.f_divergence_loss(student, teacher, divergence=fdiv_ops.gkd_jsd(0.5))
    torch.testing.assert_close(ours, core * student.shape[1], rtol=1e-12, atol=0)


def test_reference_restates_trl():
    # fdiv_ops.reference.trl_generalized_jsd_loss is the restatement other tests use: it must agree with TRL
    trl_loss_fn = _trl_gkd_trainer().generalized_jsd_loss
    for beta, reduction, with_labels, items in itertools.product(BETAS, REDUCTIONS, [False, True], [None, 7]):
        student, teacher, labels = _gkd_inputs(torch.float64, with_labels)
        args = (labels, beta, 2.0, reduction, items)
        torch.testing.assert_close(
            ref.trl_generalized_jsd_loss(student, teacher, *args),
            trl_loss_fn(student, teacher, *args),
            rtol=1e-12,
            atol=1e-15,  # "none" has per-element terms of ~1e-18
        )


def test_none_terms_sum_to_the_core_rows():
    student, teacher, labels = _gkd_inputs(torch.float64, True)
    terms = fi.generalized_jsd_loss(student, teacher, labels, 0.3, 1.5, "none")
    rows = fdiv_ops.f_divergence_loss(
        student, teacher, divergence=fdiv_ops.gkd_jsd(0.3), temperature=1.5, labels=labels, reduction="none"
    )
    torch.testing.assert_close(terms.sum(-1), rows[labels != -100], rtol=1e-12, atol=1e-15)


def test_mean_with_every_position_masked_is_zero_not_nan():
    # the one deliberate difference: TRL takes the mean of an empty tensor (NaN); ours gives 0 and a zero gradient
    trl_loss_fn = _trl_gkd_trainer().generalized_jsd_loss
    student, teacher, _ = _gkd_inputs(torch.float32, False)
    labels = torch.full((2, 5), -100)
    assert torch.isnan(trl_loss_fn(student, teacher, labels, reduction="mean"))
    s = student.clone().requires_grad_()
    loss = fi.generalized_jsd_loss(s, teacher, labels, reduction="mean")
    loss.backward()
    assert float(loss.detach()) == 0.0 and (s.grad == 0).all()


def test_bf16_is_closer_to_float64_than_trl():
    # TRL computes in the logits' dtype; ours accumulates in float32 (and returns float32)
    trl_loss_fn = _trl_gkd_trainer().generalized_jsd_loss
    student, teacher, labels = _gkd_inputs(torch.float64, True)
    s16, t16 = student.bfloat16(), teacher.bfloat16()
    truth = trl_loss_fn(s16.double(), t16.double(), labels)
    ours, theirs = fi.generalized_jsd_loss(s16, t16, labels), trl_loss_fn(s16, t16, labels)
    assert ours.dtype == torch.float32 and theirs.dtype == torch.bfloat16
    assert abs(float(ours) - float(truth)) <= abs(float(theirs) - float(truth))
    assert abs(float(ours) - float(truth)) <= 1e-5 * abs(float(truth))


def test_gkd_errors():
    student, teacher, _ = _gkd_inputs(torch.float32, False)
    with pytest.raises(ValueError, match="reduction"):
        fi.generalized_jsd_loss(student, teacher, reduction="avg")
    with pytest.raises(ValueError, match="beta"):
        fi.generalized_jsd_loss(student, teacher, beta=1.5)
    with pytest.raises(ValueError, match="vocabular"):
        fi.generalized_jsd_loss(student, teacher[..., :-1])


# ---------------------------------------------------------------------------------------------------
# GKD: GKDTrainer steps on tiny random GPT-2s, stock TRL against ours

VOCAB = 32


def _tiny_gpt2(width: int, seed: int, init_range: float, dtype=torch.float64):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=16,
        n_embd=width,
        n_layer=1,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        initializer_range=init_range,
    )
    return GPT2LMHeadModel(config).to(dtype)


def _word_tokenizer():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(VOCAB)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t0"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="t0", eos_token="t1")


def _collate(batch):
    ids = torch.tensor([example["input_ids"] for example in batch])
    labels = ids.clone()
    labels[:, :3] = -100  # the prompt
    labels[0, -2:] = -100  # a shorter completion: the micro-batches hold different token counts
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _train_gkd(trainer_cls, steps: int, beta: float):
    pytest.importorskip("transformers")
    from datasets import Dataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.gkd import GKDConfig
    gen = torch.Generator().manual_seed(0)
    data = Dataset.from_dict({"input_ids": torch.randint(2, VOCAB, (16, 10), generator=gen).tolist()})
    student, teacher = _tiny_gpt2(16, 1, 0.2), _tiny_gpt2(24, 2, 0.5)
    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = GKDConfig(
            output_dir=out,
            max_steps=steps,
            per_device_train_batch_size=4,
            gradient_accumulation_steps=2,  # Trainer passes num_items_in_batch over both micro-batches
            optim="sgd",  # plain SGD: parameter differences stay proportional to gradient differences
            learning_rate=0.5,
            lr_scheduler_type="constant",
            lmbda=0.0,  # off-policy only: on-policy generation would sample
            seq_kd=False,
            beta=beta,
            logging_steps=1,
            report_to=[],
            save_strategy="no",
            use_cpu=True,
            seed=0,
            disable_tqdm=True,
        )
        trainer = trainer_cls(
            model=student,
            teacher_model=teacher,
            args=args,
            train_dataset=data,
            processing_class=_word_tokenizer(),
            data_collator=_collate,
        )
        trainer.train()
    losses = torch.tensor([h["loss"] for h in trainer.state.log_history if "loss" in h], dtype=torch.float64)
    start = _tiny_gpt2(16, 1, 0.2).state_dict()
    moved = {k: v.detach().clone() - start[k] for k, v in student.state_dict().items()}
    return losses, moved


def gkd_trainer_differences(steps: int = 6, beta: float = 0.5) -> tuple[float, float]:
    """(largest relative difference of a step's loss, of a parameter's total update) after `steps` steps."""
    stock = _trl_gkd_trainer()
    want_losses, want_moved = _train_gkd(stock, steps, beta)
    got_losses, got_moved = _train_gkd(fi.GKDTrainer, steps, beta)
    assert len(got_losses) == steps and len(want_losses) == steps
    assert want_losses.min() > 1e-3  # the models disagree: the loss measures something
    update = max(_rel_diff(got_moved[k], want_moved[k]) for k in want_moved if want_moved[k].abs().max() > 0)
    return _rel_diff(got_losses, want_losses), update


def test_gkd_trainer_matches_stock_trl():
    assert issubclass(fi.GKDTrainer, _trl_gkd_trainer())
    loss_diff, update_diff = gkd_trainer_differences()
    # float64 models, so that rounding differences (ours fused, TRL's eager) are not amplified by the training
    # dynamics (in float32 the updates drift apart by ~1e-3 relative over 6 steps at this learning rate);
    # the logged losses are rounded to float32 by the Trainer
    assert loss_diff <= 1e-6 and update_diff <= 1e-10, (loss_diff, update_diff)


def test_mixin_replaces_the_loss():
    stock = _trl_gkd_trainer()

    class Mine(fi.GKDLossMixin, stock):
        pass

    assert Mine.generalized_jsd_loss is fi.generalized_jsd_loss
    assert stock.generalized_jsd_loss is not fi.generalized_jsd_loss


# ---------------------------------------------------------------------------------------------------
# DPO: TRL 1.x's sigmoid loss, run through DPOTrainer._compute_loss itself


def _trl_dpo_loss(chosen, rejected, ref_chosen, ref_rejected, *, beta, f_divergence_type, coef, label_smoothing):
    """TRL's DPOTrainer._compute_loss on a stand-in trainer whose model returns the given sequence log-probs:
    each sequence has one completion token carrying its whole log-prob, so TRL's sum over tokens is that
    number. Returns TRL's mean loss and its logged metrics."""
    from trl import DPOTrainer

    n = chosen.shape[0]
    logps = torch.cat([chosen, rejected])  # TRL's batch is [chosen, rejected]
    per_token = torch.stack([torch.zeros_like(logps), logps], dim=1)
    zeros = torch.zeros(2 * n, 2, dtype=logps.dtype)
    outputs = SimpleNamespace(
        log_probs=per_token, entropy=zeros, mean_logits=zeros, is_top1=torch.zeros(2 * n, 2, dtype=torch.bool)
    )

    class Model:
        training = True

        def __call__(self, **kwargs):
            return outputs

    accelerator = SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x)
    trainer = SimpleNamespace(
        model=Model(),
        accelerator=accelerator,
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type=f_divergence_type,
        f_alpha_divergence_coef=coef,
        loss_types=["sigmoid"],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=label_smoothing,
        use_weighting=False,
        _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0,
        _tp_size=1,
    )
    completion_mask = torch.ones(2 * n, 2, dtype=torch.long)
    completion_mask[:, 0] = 0  # position 0 is the prompt
    inputs = {
        "completion_mask": completion_mask,
        "input_ids": torch.zeros(2 * n, 2, dtype=torch.long),
        "attention_mask": torch.ones(2 * n, 2, dtype=torch.long),
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
    }
    loss = DPOTrainer._compute_loss(trainer, trainer.model, inputs, False)
    return loss, trainer._metrics["train"]


DPO_CASES = [
    ("reverse_kl", 0.5),
    ("forward_kl", 0.5),
    ("js_divergence", 0.5),
    ("alpha_divergence", 0.5),
    ("alpha_divergence", 0.3),
    ("alpha_divergence", 1.5),
    ("alpha_divergence", 1.0),  # TRL's fallback to reverse_kl
    ("alpha_divergence", 0.0),  # forward_kl
]


def _dpo_pairs(extreme: bool):
    if extreme:  # TRL's own test values: sequence log-ratios of hundreds of nats, the alpha clamp active
        return [
            torch.tensor([410.0, 0.1, -12.0, -40.0]),
            torch.tensor([810.5, 0.2, -15.0, -38.0]),
            torch.tensor([-610.0, -0.1, -13.0, -41.0]),
            torch.tensor([110.6, 0.5, -14.0, -37.5]),
        ]
    gen = torch.Generator().manual_seed(1)
    return [-30 + 4 * torch.randn(16, generator=gen) for _ in range(4)]


def dpo_differences(f_divergence_type: str, coef: float, extreme: bool) -> tuple[float, float]:
    """(relative difference of the mean loss, of the gradients to the policy log-probs) against TRL."""
    pc, pr, rc, rr = _dpo_pairs(extreme)
    beta = 0.1
    ours_c, ours_r = pc.clone().requires_grad_(), pr.clone().requires_grad_()
    trl_c, trl_r = pc.clone().requires_grad_(), pr.clone().requires_grad_()
    losses, chosen_rewards, rejected_rewards = fi.dpo_loss(
        ours_c, ours_r, rc, rr, beta=beta, f_divergence_type=f_divergence_type, f_alpha_divergence_coef=coef
    )
    want, metrics = _trl_dpo_loss(
        trl_c, trl_r, rc, rr, beta=beta, f_divergence_type=f_divergence_type, coef=coef, label_smoothing=0.3
    )
    ours = losses.mean()
    assert torch.isfinite(ours) and torch.isfinite(want)
    got_grads = torch.autograd.grad(ours, (ours_c, ours_r))
    want_grads = torch.autograd.grad(want, (trl_c, trl_r))
    # the rewards TRL logs: beta log(pi / pi_ref), whatever the divergence
    assert metrics["rewards/chosen"][0] == pytest.approx(float(chosen_rewards.mean()), rel=1e-6)
    assert metrics["rewards/rejected"][0] == pytest.approx(float(rejected_rewards.mean()), rel=1e-6)
    grad_diff = max(_rel_diff(g, w) for g, w in zip(got_grads, want_grads))
    return _rel_diff(ours.detach(), want.detach()), grad_diff


@pytest.mark.parametrize("extreme", [False, True], ids=["ordinary", "extreme"])
@pytest.mark.parametrize("f_divergence_type, coef", DPO_CASES)
def test_dpo_loss_matches_trl(f_divergence_type, coef, extreme):
    # TRL's label_smoothing is set to 0.3 on its side: its 1.x sigmoid loss ignores it, and ours has none
    loss_diff, grad_diff = dpo_differences(f_divergence_type, coef, extreme)
    assert loss_diff <= 1e-6 and grad_diff <= 1e-6, (loss_diff, grad_diff)


@pytest.mark.parametrize("coef", [0.5, 0.3, 1.5, -1.0])
def test_alpha_coefficient_a_is_fdiv_alpha_one_minus_a(coef):
    assert fi.f_divergence("alpha_divergence", coef) == fdiv_ops.alpha(1 - coef)
    pairs = [t.double() for t in _dpo_pairs(False)]
    want = ref.trl_f_dpo_logits(*pairs, divergence="alpha_divergence", alpha_coef=coef)
    losses, _, _ = fi.dpo_loss(*pairs, beta=0.1, f_divergence_type="alpha_divergence", f_alpha_divergence_coef=coef)
    torch.testing.assert_close(losses, -torch.nn.functional.logsigmoid(0.1 * want), rtol=1e-12, atol=1e-14)


def test_dpo_names_and_errors():
    assert fi.f_divergence("js_divergence") == fdiv_ops.resolve("js")
    assert fi.f_divergence("alpha_divergence", 1.0 + 1e-7) == fdiv_ops.resolve("reverse_kl")
    assert fi.f_divergence("alpha_divergence", 0.0) == fdiv_ops.resolve("forward_kl")
    with pytest.raises(ValueError, match="f_divergence_type"):
        fi.f_divergence("kl")
    with pytest.raises(ValueError, match="f_alpha_divergence_coef"):
        fi.f_divergence("alpha_divergence", math.nan)


# ---------------------------------------------------------------------------------------------------
# The README's and the core docstrings' claims about TRL, held against the installed TRL (1.16.0 when written):
# the core ops themselves, not the integration module


def _core_vs_trl_dpo(pairs, f_divergence_type, coef, divergence, **core_kw) -> float:
    """Relative difference between the core f_dpo_loss's mean loss and TRL's DPOTrainer._compute_loss."""
    losses, _, _ = fdiv_ops.f_dpo_loss(*pairs, divergence=divergence, beta=0.1, **core_kw)
    want, _ = _trl_dpo_loss(*pairs, beta=0.1, f_divergence_type=f_divergence_type, coef=coef, label_smoothing=0.0)
    return _rel_diff(losses.mean().detach(), want.detach())


@pytest.mark.parametrize(
    "f_divergence_type, coef, divergence",
    [
        ("js_divergence", 0.5, "js"),
        ("forward_kl", 0.5, "forward_kl"),
        ("reverse_kl", 0.5, "reverse_kl"),
        ("alpha_divergence", 0.3, fdiv_ops.alpha(0.7)),
        ("alpha_divergence", 1.5, fdiv_ops.alpha(-0.5)),
    ],
    ids=str,
)
def test_core_f_dpo_is_trl_sigmoid_loss(f_divergence_type, coef, divergence):
    # README: "js" is TRL 1.x's js_divergence and alpha(1 - a) its alpha_divergence with coefficient a
    assert _core_vs_trl_dpo(_dpo_pairs(False), f_divergence_type, coef, divergence) <= 1e-6


def test_core_alpha_a_is_not_trl_1x_alpha_a():
    # the stale claim "fdiv_ops.alpha(a) is TRL's alpha_divergence" (true for TRL <= 0.28 only)
    assert _core_vs_trl_dpo(_dpo_pairs(False), "alpha_divergence", 0.3, fdiv_ops.alpha(0.3)) > 1e-2


def test_trl_alpha_clamp_is_80_not_log_float32_max():
    # (a - 1) log u = 85 and 84 for a = 1.5: both clamped at 80 (TRL 1.16: equal scores, loss log 2), neither at
    # 88.72 (TRL <= 0.28's cap: scores 2(e^85 - 1) > 2(e^84 - 1), loss 0). max_exponent=80 reproduces TRL 1.16.
    zeros = torch.zeros(1)
    pairs = (torch.tensor([170.0]), torch.tensor([168.0]), zeros, zeros)
    want, _ = _trl_dpo_loss(*pairs, beta=0.1, f_divergence_type="alpha_divergence", coef=1.5, label_smoothing=0.0)
    assert float(want) == pytest.approx(math.log(2), rel=1e-6)
    assert _core_vs_trl_dpo(pairs, "alpha_divergence", 1.5, fdiv_ops.alpha(-0.5), max_exponent=80.0) <= 1e-6
    old_cap = fdiv_ops.ops.divergence_terms.dtype_max_exponent(torch.float32)
    assert _core_vs_trl_dpo(pairs, "alpha_divergence", 1.5, fdiv_ops.alpha(-0.5), max_exponent=old_cap) > 0.5


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_core_gkd_with_labels_is_trl_batchmean(beta):
    # README: gkd_jsd(beta) with labels is TRL 1.x's generalized_jsd_loss(..., labels, beta, T), value and gradient
    trl_loss_fn = _trl_gkd_trainer().generalized_jsd_loss
    student, teacher, labels = _gkd_inputs(torch.float64, True)
    ours_in, trl_in = student.clone().requires_grad_(), student.clone().requires_grad_()
    ours = fdiv_ops.f_divergence_loss(
        ours_in, teacher, divergence=fdiv_ops.gkd_jsd(beta), temperature=2.0, labels=labels
    )
    want = trl_loss_fn(trl_in, teacher, labels, beta, 2.0)
    ours.backward()
    want.backward()
    assert _rel_diff(ours.detach(), want.detach()) <= 1e-12 and _rel_diff(ours_in.grad, trl_in.grad) <= 1e-12


# ---------------------------------------------------------------------------------------------------
# the numbers of docs/integrations.md


def _report() -> None:
    import transformers

    print(f"trl {trl.__version__}, transformers {transformers.__version__}, torch {torch.__version__}")
    for dtype in (torch.float32, torch.float64):
        worst_loss = worst_grad = 0.0
        for beta, reduction, with_labels, items in itertools.product(BETAS, REDUCTIONS, [False, True], NUM_ITEMS):
            loss_diff, grad_diff = _gkd_compare(dtype, beta, reduction, with_labels, items, 2.0)
            worst_loss, worst_grad = max(worst_loss, loss_diff), max(worst_grad, grad_diff)
        print(f"generalized_jsd_loss {dtype}: loss {worst_loss:.1e}, grad {worst_grad:.1e} (max relative difference)")
    loss_diff, update_diff = gkd_trainer_differences()
    print(f"GKDTrainer, 6 SGD steps, float64: step losses {loss_diff:.1e}, parameter updates {update_diff:.1e}")
    for (ftype, coef), extreme in itertools.product(DPO_CASES, [False, True]):
        loss_diff, grad_diff = dpo_differences(ftype, coef, extreme)
        label = "extreme" if extreme else "ordinary"
        print(f"dpo_loss {ftype}({coef}) {label} float32: loss {loss_diff:.1e}, grad {grad_diff:.1e}")


if __name__ == "__main__":
    _report()
