"""Tests of training.augment: SpecAugment, mixup, Patch-Mix and soft targets."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from training.augment import mixup, patch_mix, soft_targets, spec_augment

SEED = 1234
BATCH = 8
BRANCHES = 3
BANDS = 16
FRAMES = 40
N_CLASSES = 5


def _gen(seed: int = SEED) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(batch: int = BATCH, bands: int = BANDS, frames: int = FRAMES) -> torch.Tensor:
    """Continuous random values: no two cells of the batch are equal."""
    return torch.randn(batch, BRANCHES, bands, frames, generator=_gen(SEED + 1))


def _labels(batch: int = BATCH) -> torch.Tensor:
    return torch.randint(0, N_CLASSES, (batch,), generator=_gen(SEED + 2))


def _runs(flags: torch.Tensor) -> list[tuple[int, int]]:
    """``(start, length)`` of each run of True in a 1-D boolean tensor."""
    runs, start = [], None
    for i, flag in enumerate([*flags.tolist(), False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append((start, i - start))
            start = None
    return runs


def _masked_lines(sample: torch.Tensor, axis: str) -> torch.Tensor:
    """Frames (axis "time") or bands ("freq") masked in every branch and cell of a sample."""
    return sample.all(dim=(0, 1)) if axis == "time" else sample.all(dim=(0, 2))


def _expand_lines(lines: torch.Tensor, axis: str, like: torch.Tensor) -> torch.Tensor:
    view = (1, 1, -1) if axis == "time" else (1, -1, 1)
    return lines.view(view).expand_as(like)


# --- determinism --------------------------------------------------------------------------


def _run_all(generator: torch.Generator) -> list[torch.Tensor]:
    """Every augmentation in turn on one generator: all the tensors they return."""
    x, y = _batch(), _labels()
    targets = soft_targets(y, y, torch.ones(BATCH), N_CLASSES)
    patched = patch_mix(x, y, generator, 4, 8, 0.3)
    return [
        spec_augment(x, generator),
        *mixup(x, targets, generator, alpha=0.4),
        patched.x,
        patched.lam,
        patched.partner,
    ]


def test_same_generator_state_gives_same_output() -> None:
    first, again, other = _run_all(_gen()), _run_all(_gen()), _run_all(_gen(SEED + 99))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(first[:4], other[:4], strict=True))


def test_inputs_are_not_modified() -> None:
    x, y = _batch(), _labels()
    before = x.clone()
    spec_augment(x, _gen())
    mixup(x, soft_targets(y, y, torch.ones(BATCH), N_CLASSES), _gen(), alpha=1.0)
    patch_mix(x, y, _gen(), 4, 8, 0.5)
    assert torch.equal(x, before)


# --- SpecAugment --------------------------------------------------------------------------


@pytest.mark.parametrize(("axis", "width"), [("time", 7), ("freq", 5)])
def test_spec_augment_masks_one_stripe_of_at_most_the_stated_width(axis: str, width: int) -> None:
    x = _batch(batch=200)
    kwargs = {"time_masks": 0, "freq_masks": 0, f"{axis}_masks": 1, f"{axis}_width": width}
    out = spec_augment(x, _gen(), fill=-100.0, **kwargs)
    masked = out == -100.0
    widths = []
    for sample in masked:
        lines = _masked_lines(sample, axis)
        assert torch.equal(sample, _expand_lines(lines, axis, sample))  # whole lines, all branches
        runs = _runs(lines)
        assert len(runs) <= 1
        widths.append(runs[0][1] if runs else 0)
    assert max(widths) == width
    assert min(widths) == 0
    assert torch.equal(out[~masked], x[~masked])


def test_spec_augment_default_fill_is_the_mean_of_each_sample_branch() -> None:
    x = _batch() + torch.arange(BATCH).view(BATCH, 1, 1, 1) * 10.0
    out = spec_augment(x, _gen(), time_masks=2, time_width=10, freq_masks=2, freq_width=4)
    means = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    changed = out != x
    assert changed.any()
    assert torch.allclose(out[changed], means[changed])


def test_spec_augment_masks_at_most_the_stated_counts() -> None:
    out = spec_augment(
        _batch(batch=50), _gen(), time_masks=2, time_width=6, freq_masks=2, freq_width=3, fill=1e9
    )
    for sample in out == 1e9:
        frames, bands = _masked_lines(sample, "time"), _masked_lines(sample, "freq")
        assert torch.equal(
            sample, _expand_lines(frames, "time", sample) | _expand_lines(bands, "freq", sample)
        )
        assert len(_runs(frames)) <= 2
        assert int(frames.sum()) <= 2 * 6
        assert len(_runs(bands)) <= 2
        assert int(bands.sum()) <= 2 * 3


# --- mixup --------------------------------------------------------------------------------


def test_mixup_is_the_same_convex_combination_of_inputs_and_targets() -> None:
    batch = 64
    x = torch.eye(batch).view(batch, 1, batch, 1).repeat(1, BRANCHES, 1, 2)  # sample i = e_i
    y = torch.arange(batch) % N_CLASSES
    targets = soft_targets(y, y, torch.ones(batch), N_CLASSES)
    mixed_x, mixed_t = mixup(x, targets, _gen(), alpha=1.0)
    weights = mixed_x[:, 0, :, 0]  # row i: lam_i e_i + (1 - lam_i) e_partner(i)
    assert torch.allclose(weights.sum(dim=1), torch.ones(batch))
    assert bool((weights >= 0).all())
    lam = weights.diagonal()
    partner = (weights - torch.diag(lam)).argmax(dim=1)  # any index where lam_i = 1
    expected_t = lam[:, None] * targets + (1 - lam[:, None]) * targets[partner]
    assert torch.allclose(mixed_t, expected_t, atol=1e-6)
    assert torch.allclose(mixed_x, torch.einsum("ij,j...->i...", weights, x), atol=1e-6)
    assert 0.3 < float(lam.mean()) < 0.7  # Beta(1, 1) is uniform


def test_small_alpha_gives_lam_near_zero_or_one() -> None:
    batch = 200
    x = torch.eye(batch).view(batch, 1, batch, 1)
    targets = torch.full((batch, N_CLASSES), 1.0 / N_CLASSES)
    lam = mixup(x, targets, _gen(), alpha=0.05)[0][:, 0, :, 0].diagonal()
    assert float(((lam < 0.05) | (lam > 0.95)).float().mean()) > 0.8


# --- Patch-Mix ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bands", "frames", "patch_bands", "patch_frames", "mix_prob"),
    [(16, 40, 4, 8, 0.3), (16, 40, 4, 8, 0.5), (10, 33, 4, 8, 0.4), (16, 40, 16, 40, 1.0)],
)
def test_patch_mix_lam_is_the_exact_fraction_of_own_cells(
    bands: int, frames: int, patch_bands: int, patch_frames: int, mix_prob: float
) -> None:
    x, y = _batch(bands=bands, frames=frames), _labels()
    result = patch_mix(x, y, _gen(), patch_bands, patch_frames, mix_prob)
    grid = (-(-bands // patch_bands), -(-frames // patch_frames))
    n_mixed = int(mix_prob * grid[0] * grid[1] + 0.5)
    for i in range(BATCH):
        j = int(result.partner[i])
        own = result.x[i] == x[i]
        from_partner = result.x[i] == x[j]
        assert bool((own | from_partner).all())  # every cell comes from one of the two
        if j == i:
            assert float(result.lam[i]) == 1.0
            continue
        taken = from_partner.all(dim=0)  # the same cells in every branch
        assert torch.equal(from_partner.any(dim=0), taken)
        padded = torch.zeros(grid[0] * patch_bands, grid[1] * patch_frames, dtype=torch.bool)
        padded[:bands, :frames] = taken
        per_patch = padded.view(grid[0], patch_bands, grid[1], patch_frames).sum(dim=(1, 3))
        cells = torch.ones_like(padded, dtype=torch.int64)
        cells[bands:, :] = 0
        cells[:, frames:] = 0
        patch_area = cells.view(grid[0], patch_bands, grid[1], patch_frames).sum(dim=(1, 3))
        assert bool(((per_patch == 0) | (per_patch == patch_area)).all())  # whole patches
        assert int((per_patch > 0).sum()) == n_mixed
        own_fraction = 1.0 - taken.float().mean()
        assert float(result.lam[i]) == pytest.approx(float(own_fraction), abs=1e-6)
        if bands % patch_bands == 0 and frames % patch_frames == 0:
            assert float(result.lam[i]) == pytest.approx(1.0 - n_mixed / (grid[0] * grid[1]))


def test_patch_mix_labels_follow_the_partner() -> None:
    y = _labels()
    result = patch_mix(_batch(), y, _gen(), 4, 8, 0.25)
    assert sorted(result.partner.tolist()) == list(range(BATCH))
    assert torch.equal(result.y_a, y)
    assert torch.equal(result.y_b, y[result.partner])
    targets = soft_targets(result.y_a, result.y_b, result.lam, N_CLASSES)
    assert torch.allclose(targets.sum(dim=1), torch.ones(BATCH))
    for i in range(BATCH):
        expected = torch.zeros(N_CLASSES)
        expected[y[i]] += result.lam[i]
        expected[result.y_b[i]] += 1 - result.lam[i]
        assert torch.allclose(targets[i], expected)


def test_patch_mix_with_zero_prob_changes_nothing() -> None:
    x, y = _batch(), _labels()
    result = patch_mix(x, y, _gen(), 4, 8, 0.0)
    assert torch.equal(result.x, x)
    assert torch.equal(result.lam, torch.ones(BATCH))


def test_soft_targets_hand_computed() -> None:
    targets = soft_targets(torch.tensor([0, 2]), torch.tensor([1, 2]), torch.tensor([0.75, 0.4]), 3)
    assert torch.allclose(targets, torch.tensor([[0.75, 0.25, 0.0], [0.0, 0.0, 1.0]]))


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: spec_augment(torch.zeros(2, 3, 4), _gen()), "shape"),
        (lambda: spec_augment(_batch(), _gen(), time_width=-1), "time_width"),
        (lambda: patch_mix(_batch(), _labels(), _gen(), 4, 8, 1.5), "mix_prob"),
        (lambda: patch_mix(_batch(), _labels(), _gen(), 0, 8, 0.5), "patch_bands"),
        (lambda: patch_mix(_batch(), _labels(BATCH + 1), _gen(), 4, 8, 0.5), "y"),
        (lambda: patch_mix(_batch(), _labels().float(), _gen(), 4, 8, 0.5), "integer"),
        (lambda: mixup(_batch(), torch.zeros(BATCH, 3), _gen(), alpha=0.0), "alpha"),
        (lambda: soft_targets(torch.tensor([3]), torch.tensor([0]), torch.ones(1), 3), "y_a"),
    ],
)
def test_bad_arguments_raise(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
