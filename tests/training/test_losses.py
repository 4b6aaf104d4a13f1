"""Tests of training.losses against hand-computed values, and on learnable toy problems."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.nn.functional import cross_entropy, normalize, one_hot

from training.losses import (
    MAX_MARGIN_RAD,
    MultiObjectiveLoss,
    PatchMixContrastiveLoss,
    QualityAdaptiveMarginLoss,
    class_weights,
    cos_plus_margin,
    soft_cross_entropy,
)

SEED = 7
LN2, LN3 = math.log(2.0), math.log(3.0)
TOY_CLASSES = 4
TOY_DIM = 8
TOY_SAMPLES = 96
TOY_STEPS = 40
TOY_LR = 0.05
DECREASE_FACTOR = 0.7  # a loss "decreases" when it ends below 70 % of where it started
# ... except the contrastive loss, whose floor is about ln(23 positives) = 3.1 from ln(95) = 4.6
CONTRASTIVE_MIN_DROP = 0.5
SCALE = 16.0


def _gen(seed: int = SEED) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- class weights ------------------------------------------------------------------------


def test_class_weights_inverse_frequency_hand_computed() -> None:
    # 1/10 : 1/30 : 1/60 = 6 : 2 : 1, mean 3 -> 2, 2/3, 1/3
    expected = torch.tensor([2.0, 2.0 / 3.0, 1.0 / 3.0])
    assert torch.allclose(class_weights([10, 30, 60]), expected)
    assert torch.allclose(class_weights([10, 30, 60], power=0.0), torch.ones(3))
    root = torch.tensor([10.0, 30.0, 60.0]) ** -0.5
    assert torch.allclose(class_weights([10, 30, 60], power=0.5), root / root.mean())


def test_class_weights_zero_count_gets_zero_weight() -> None:
    # present: 1/10, 1/40, mean 1/16 -> 1.6, 0.4
    assert torch.allclose(class_weights([0, 10, 40]), torch.tensor([0.0, 1.6, 0.4]))


@pytest.mark.parametrize(
    ("counts", "power", "message"),
    [
        ([0, 0], 1.0, "at least one positive"),
        ([3, -1], 1.0, ">= 0"),
        ([3, math.nan], 1.0, "finite"),
        ([[1, 2]], 1.0, "1-D"),
        ([1, 2], -1.0, "power"),
    ],
)
def test_class_weights_bad_input(counts: list[Any], power: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        class_weights(counts, power)


# --- soft cross-entropy and the multi-objective loss -------------------------------------


def test_soft_ce_with_one_hot_targets_equals_weighted_cross_entropy() -> None:
    logits = torch.randn(6, 4, generator=_gen())
    y = torch.tensor([0, 1, 2, 3, 3, 1])
    weights = torch.tensor([0.5, 1.0, 2.0, 4.0])
    ours = soft_cross_entropy(logits, one_hot(y, 4).float(), weights)
    assert ours.item() == pytest.approx(cross_entropy(logits, y, weight=weights).item(), rel=1e-6)


def test_multi_objective_hand_computed() -> None:
    # Sample 1: softmax(ln1, ln2, ln1) = 1/4, 1/2, 1/4; target (0.5, 0.5, 0).
    # Sample 2: uniform over 3; target class 2. Binary heads: (0, 0) and (ln 3, 0).
    logits = torch.tensor([[0.0, LN2, 0.0], [0.0, 0.0, 0.0]])
    binary_logits = torch.tensor([[0.0, 0.0], [LN3, 0.0]])
    targets = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    weights = torch.tensor([1.0, 2.0, 4.0])
    # fine: (1*0.5*ln4 + 2*0.5*ln2 + 4*ln3) / (1*0.5 + 2*0.5 + 4) ; binary: mean(ln2, ln4)
    fine = (2 * LN2 + 4 * LN3) / 5.5
    binary = (LN2 + 2 * LN2) / 2
    loss = MultiObjectiveLoss(0, fine_weight=1.0, binary_weight=0.5, class_weights=weights)
    assert loss(logits, binary_logits, targets).item() == pytest.approx(fine + 0.5 * binary)
    parts = loss.parts(logits, binary_logits, targets)
    assert [p.item() for p in parts] == pytest.approx([fine, binary])
    unweighted = MultiObjectiveLoss(0, fine_weight=2.0, binary_weight=0.0)
    expected = 2.0 * (1.5 * LN2 + LN3) / 2  # batch mean of 1.5 ln 2 and ln 3
    assert unweighted(logits, binary_logits, targets).item() == pytest.approx(expected)


def test_label_smoothing_matches_torch_on_both_heads() -> None:
    logits, binary_logits = (
        torch.randn(5, 4, generator=_gen()),
        torch.randn(5, 2, generator=_gen(1)),
    )
    y = torch.tensor([0, 1, 2, 3, 0])
    eps = 0.2
    loss = MultiObjectiveLoss(0, 1.0, 1.0, label_smoothing=eps)
    adventitious = (y != 0).long()  # binary column 0 = Normal, 1 = Adventitious
    expected = cross_entropy(logits, y, label_smoothing=eps) + cross_entropy(
        binary_logits, adventitious, label_smoothing=eps
    )
    got = loss(logits, binary_logits, one_hot(y, 4).float())
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize(
    ("targets", "binary", "message"),
    [
        (torch.full((2, 3), 0.5), torch.zeros(2, 2), "sum"),
        (torch.tensor([[1.5, -0.5, 0.0]] * 2), torch.zeros(2, 2), ">= 0"),
        (torch.eye(3)[:2], torch.zeros(2, 3), "binary_logits"),
    ],
)
def test_multi_objective_bad_input(
    targets: torch.Tensor, binary: torch.Tensor, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        MultiObjectiveLoss(0)(torch.zeros(2, 3), binary, targets)


def test_multi_objective_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError, match="both 0"):
        MultiObjectiveLoss(0, fine_weight=0.0, binary_weight=0.0)
    with pytest.raises(ValueError, match="normal_index"):
        MultiObjectiveLoss(5)(torch.zeros(1, 3), torch.zeros(1, 2), torch.eye(3)[:1])


# --- Patch-Mix contrastive loss ----------------------------------------------------------


def _reference_contrastive(
    z: torch.Tensor, y_a: list[int], y_b: list[int], lam: list[float], tau: float
) -> float:
    """The docstring's formula with loops (self mode: candidates j != i, labels y_a_j)."""
    z = normalize(z, dim=1)
    batch, losses = z.shape[0], []
    for i in range(batch):
        others = [j for j in range(batch) if j != i]
        sims = torch.stack([z[i] @ z[j] / tau for j in others])
        log_p = dict(zip(others, (sims - torch.logsumexp(sims, 0)).tolist(), strict=True))
        terms, shares = 0.0, 0.0
        for label, share in ((y_a[i], lam[i]), (y_b[i], 1 - lam[i])):
            positives = [j for j in others if y_a[j] == label]
            if positives:
                terms += share * sum(log_p[j] for j in positives) / len(positives)
                shares += share
        if shares > 0:
            losses.append(-terms / shares)
    return sum(losses) / len(losses)


def test_contrastive_matches_the_written_formula() -> None:
    z = torch.randn(7, 5, generator=_gen())
    y_a, y_b = [0, 0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 0, 3, 3]
    lam = [0.7, 1.0, 0.6, 0.5, 0.8, 0.9, 0.75]  # anchor 6: y_a = y_b = 3 has no positive
    got = PatchMixContrastiveLoss(0.5)(z, torch.tensor(y_a), torch.tensor(y_b), torch.tensor(lam))
    assert got.item() == pytest.approx(_reference_contrastive(z, y_a, y_b, lam, 0.5), rel=1e-5)


def test_contrastive_without_mixing_is_supcon() -> None:
    z, y = torch.randn(6, 3, generator=_gen()), [0, 0, 0, 1, 1, 2]
    ones = torch.ones(6)
    got = PatchMixContrastiveLoss(0.1)(z, torch.tensor(y), torch.tensor(y), ones)
    assert got.item() == pytest.approx(_reference_contrastive(z, y, y, [1.0] * 6, 0.1), rel=1e-5)


def test_contrastive_instance_mode_is_bae_et_al() -> None:
    # L_i = -(lam_i log p(i, i) + (1 - lam_i) log p(i, partner_i)) over clean candidates.
    mixed, clean = torch.randn(5, 4, generator=_gen()), torch.randn(5, 4, generator=_gen(1))
    partner, lam = torch.tensor([1, 0, 3, 4, 2]), torch.tensor([0.6, 0.7, 0.8, 0.5, 0.9])
    y = torch.zeros(5, dtype=torch.long)
    log_p = torch.log_softmax(normalize(mixed) @ normalize(clean).T / 0.07, dim=1)
    expected = -(lam * log_p.diagonal() + (1 - lam) * log_p[torch.arange(5), partner]).mean()
    loss = PatchMixContrastiveLoss(0.07, positives="instance")
    got = loss(mixed, y, y[partner], lam, reference=clean, partner=partner)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_contrastive_is_lower_when_classes_cluster() -> None:
    g = _gen()
    centres = normalize(torch.randn(TOY_CLASSES, 16, generator=g), dim=1)
    y = torch.arange(32) % TOY_CLASSES
    z = centres[y] + 0.1 * torch.randn(32, 16, generator=g)
    shuffled = y[torch.randperm(32, generator=g)]
    loss, ones = PatchMixContrastiveLoss(), torch.ones(32)
    assert loss(z, y, y, ones).item() < 0.5 * loss(z, shuffled, shuffled, ones).item()


def test_contrastive_without_any_positive_is_zero_with_finite_gradient() -> None:
    z = torch.randn(4, 3, generator=_gen(), requires_grad=True)
    y = torch.arange(4)
    value = PatchMixContrastiveLoss()(z, y, y, torch.ones(4))
    value.backward()
    assert value.item() == 0.0
    assert z.grad is not None
    assert bool(torch.isfinite(z.grad).all())


# --- quality-adaptive angular margin ----------------------------------------------------


def test_margin_grows_as_quality_falls() -> None:
    loss = QualityAdaptiveMarginLoss(SCALE, base_margin=0.2, quality_gain=1.0)
    margins = loss.margins(torch.zeros(3, dtype=torch.long), torch.tensor([1.0, 0.5, 0.0]))
    assert torch.allclose(margins, torch.tensor([0.2, 0.3, 0.4]))


def test_imbalance_margin_is_larger_for_rare_classes() -> None:
    loss = QualityAdaptiveMarginLoss(SCALE, 0.2, 1.0, class_counts=[100, 10, 1], imbalance_gain=0.1)
    margins = loss.margins(torch.tensor([0, 1, 2]), torch.ones(3))
    expected = torch.tensor([0.2, 0.2 + 0.1 * math.log(10), 0.2 + 0.1 * math.log(100)])
    assert torch.allclose(margins, expected)
    capped = QualityAdaptiveMarginLoss(SCALE, 1.0, 1.0, class_counts=[1000, 1], imbalance_gain=1.0)
    assert capped.margins(torch.tensor([1]), torch.zeros(1)).item() == pytest.approx(MAX_MARGIN_RAD)


def test_cos_plus_margin_is_cos_of_the_shifted_angle_and_never_larger() -> None:
    cosine = torch.linspace(-1.0, 1.0, 2001, dtype=torch.float64)
    for margin in (0.0, 0.2, 0.5, MAX_MARGIN_RAD):
        m = torch.full_like(cosine, margin)
        phi = cos_plus_margin(cosine, m)
        assert bool((phi <= cosine + 1e-12).all())
        inside = (cosine.abs() < 0.999) & (torch.arccos(cosine) + margin < math.pi)
        assert torch.allclose(phi[inside], torch.cos(torch.arccos(cosine[inside]) + margin))


def test_margin_loss_is_at_least_the_plain_loss() -> None:
    cosine = 2 * torch.rand(64, 5, generator=_gen()) - 1
    cosine[:4, 0] = torch.tensor([1.0, -1.0, 0.999, -0.999])
    y = torch.randint(0, 5, (64,), generator=_gen(1))
    y[:4] = 0
    quality = torch.rand(64, generator=_gen(2))
    plain = QualityAdaptiveMarginLoss(SCALE, base_margin=0.0)(SCALE * cosine, y, quality)
    assert plain.item() == pytest.approx(cross_entropy(SCALE * cosine, y).item(), rel=1e-6)
    margined = QualityAdaptiveMarginLoss(SCALE, 0.2, 1.0, [50, 20, 10, 5, 1], 0.1)
    assert margined(SCALE * cosine, y, quality).item() > plain.item()


def test_margin_loss_gradients_are_finite_at_cos_plus_minus_one() -> None:
    logits = torch.tensor([[SCALE, -SCALE, 0.0], [-SCALE, SCALE, 0.0]], requires_grad=True)
    loss = QualityAdaptiveMarginLoss(SCALE, 0.3, 1.0)
    value = loss(logits, torch.tensor([0, 0]), torch.tensor([0.2, 0.9]))  # cos = +1 and -1
    value.backward()
    assert torch.isfinite(value)
    assert logits.grad is not None
    assert bool(torch.isfinite(logits.grad).all())
    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("logits", "quality", "message"),
    [
        (torch.full((2, 3), 2 * SCALE), torch.ones(2), "cosine classifier"),
        (torch.zeros(2, 3), torch.tensor([0.5, 1.5]), "quality"),
        (torch.zeros(2, 3), torch.ones(3), r"\(B,\)"),
    ],
)
def test_margin_loss_bad_input(logits: torch.Tensor, quality: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        QualityAdaptiveMarginLoss(SCALE)(logits, torch.tensor([0, 1]), quality)


# --- each loss decreases on a learnable toy problem --------------------------------------


def _toy() -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian clusters: features (N, TOY_DIM), labels (N,)."""
    g = _gen()
    centres = 2.0 * torch.randn(TOY_CLASSES, TOY_DIM, generator=g)
    y = torch.arange(TOY_SAMPLES) % TOY_CLASSES
    return centres[y] + torch.randn(TOY_SAMPLES, TOY_DIM, generator=g), y


def _train(parameters: list[torch.Tensor], step_loss: Callable[[], torch.Tensor]) -> list[float]:
    optimiser = torch.optim.Adam(parameters, lr=TOY_LR)
    history = []
    for _ in range(TOY_STEPS):
        optimiser.zero_grad()
        value = step_loss()
        value.backward()
        optimiser.step()
        history.append(value.item())
    return history


def test_multi_objective_loss_decreases() -> None:
    torch.manual_seed(SEED)
    x, y = _toy()
    fine, binary = torch.nn.Linear(TOY_DIM, TOY_CLASSES), torch.nn.Linear(TOY_DIM, 2)
    loss = MultiObjectiveLoss(0, class_weights=class_weights([10, 20, 30, 40]), label_smoothing=0.1)
    targets = one_hot(y, TOY_CLASSES).float()
    history = _train(
        [*fine.parameters(), *binary.parameters()], lambda: loss(fine(x), binary(x), targets)
    )
    assert history[-1] < DECREASE_FACTOR * history[0]


def test_patch_mix_contrastive_loss_decreases() -> None:
    torch.manual_seed(SEED)
    x, y = _toy()
    g = _gen(1)
    partner = torch.randperm(TOY_SAMPLES, generator=g)
    lam = 0.5 + 0.5 * torch.rand(TOY_SAMPLES, generator=g)
    mixed = lam[:, None] * x + (1 - lam[:, None]) * x[partner]
    project = torch.nn.Linear(TOY_DIM, 4)
    loss = PatchMixContrastiveLoss(temperature=0.2)
    history = _train(list(project.parameters()), lambda: loss(project(mixed), y, y[partner], lam))
    assert history[-1] < history[0] - CONTRASTIVE_MIN_DROP


def test_quality_margin_loss_decreases() -> None:
    torch.manual_seed(SEED)
    x, y = _toy()
    quality = torch.rand(TOY_SAMPLES, generator=_gen(1))
    embed = torch.nn.Linear(TOY_DIM, 6)
    classes = torch.nn.Parameter(torch.randn(TOY_CLASSES, 6, generator=_gen(2)))
    loss = QualityAdaptiveMarginLoss(SCALE, 0.2, 1.0, [40, 30, 20, 6], imbalance_gain=0.05)

    def step() -> torch.Tensor:
        cosine = normalize(embed(x), dim=1) @ normalize(classes, dim=1).T
        return loss(SCALE * cosine, y, quality)

    history = _train([*embed.parameters(), classes], step)
    assert history[-1] < DECREASE_FACTOR * history[0]
