"""Masked-spectrogram autoencoder: masking, loss on masked patches only, learning, sharing."""

from __future__ import annotations

import pytest
import torch

from training.models import ModelConfig, build_model
from training.ssl import MaskedSpectrogramAutoencoder, masked_mse

SEED = 4321
TINY = {
    "n_bands": 16,
    "n_frames": 32,
    "n_classes": 3,
    "channels": (8, 16),
    "embed_dim": 16,
    "attention_heads": 2,
    "dropout": 0.0,
}
PATCH_FRAMES = 4
N_PATCHES = 8  # 32 frames / 4
N_MASKED = 5  # round(0.6 * 8)
STEM_WEIGHT = "branches.0.backbone.layers.0.0.weight"


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Seed torch (the one-thread fixture is in conftest.py)."""
    torch.manual_seed(SEED)


def autoencoder(**overrides: object) -> MaskedSpectrogramAutoencoder:
    cfg = ModelConfig(**{**TINY, **overrides})  # type: ignore[arg-type]
    return MaskedSpectrogramAutoencoder(
        build_model(cfg), mask_ratio=0.6, patch_frames=PATCH_FRAMES, decoder_dim=32
    )


def smooth_spectrograms(batch: int, generator: torch.Generator, n_frames: int = 32) -> torch.Tensor:
    """(B, 1, 16, T) toy log spectra: a tilted band profile scaled per window, a linear drift in
    time, weak noise. Masked patches are predictable from the unmasked context, so the loss can
    fall.
    """
    level = torch.randn(batch, 1, 1, 1, generator=generator)
    slope = torch.randn(batch, 1, 1, 1, generator=generator)
    profile = torch.linspace(2.0, -2.0, 16).view(1, 1, 16, 1)
    time = torch.linspace(-1.0, 1.0, n_frames).view(1, 1, 1, -1)
    noise = 0.1 * torch.randn(batch, 1, 16, n_frames, generator=generator)
    return profile * (1.0 + 0.5 * level) + level + slope * time + noise


def test_mask_has_fixed_count_and_is_reproducible() -> None:
    ae = autoencoder()
    mask = ae.sample_mask(6, torch.Generator().manual_seed(1))
    assert mask.shape == (6, N_PATCHES)
    assert mask.sum(dim=1).tolist() == [N_MASKED] * 6
    assert torch.equal(mask, ae.sample_mask(6, torch.Generator().manual_seed(1)))
    assert not torch.equal(mask, ae.sample_mask(6, torch.Generator().manual_seed(2)))
    frames = ae.frame_mask(mask, 32)
    assert torch.equal(frames[:, ::PATCH_FRAMES], mask)
    assert torch.equal(
        frames.view(6, N_PATCHES, PATCH_FRAMES).float().std(dim=2), torch.zeros(6, 8)
    )


def test_only_masked_patches_contribute_to_the_loss() -> None:
    ae = autoencoder().eval()
    x = smooth_spectrograms(4, torch.Generator().manual_seed(0))
    mask = ae.sample_mask(4, torch.Generator().manual_seed(3))
    with torch.no_grad():
        pred, target, frames = ae.reconstruct(x, mask)
    loss = masked_mse(pred, target, frames)
    unmasked_changed = torch.where(frames[:, None, None, :], target, target + 100.0)
    assert masked_mse(pred, unmasked_changed, frames).item() == pytest.approx(loss.item(), rel=1e-6)
    masked_changed = torch.where(frames[:, None, None, :], target + 1.0, target)
    assert masked_mse(pred, masked_changed, frames).item() != pytest.approx(loss.item(), rel=1e-3)


def test_masked_input_does_not_reach_the_prediction() -> None:
    ae = autoencoder().eval()
    x = smooth_spectrograms(3, torch.Generator().manual_seed(0))
    mask = ae.sample_mask(3, torch.Generator().manual_seed(5))
    frames = ae.frame_mask(mask, 32)[:, None, None, :]
    with torch.no_grad():
        pred, _, _ = ae.reconstruct(x, mask)
        pred_masked_changed, _, _ = ae.reconstruct(torch.where(frames, x + 50.0, x), mask)
        pred_unmasked_changed, _, _ = ae.reconstruct(torch.where(frames, x, x + 5.0), mask)
    torch.testing.assert_close(pred_masked_changed, pred)
    assert not torch.allclose(pred_unmasked_changed, pred, atol=1e-3)


def test_loss_decreases_and_trains_the_wrapped_model() -> None:
    ae = autoencoder()
    stem = dict(ae.model.named_parameters())[STEM_WEIGHT]
    stem_before = stem.detach().clone()
    optimiser = torch.optim.Adam(ae.parameters(), lr=3e-3)
    data_g, mask_g = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    losses = []
    for _ in range(40):
        loss = ae(smooth_spectrograms(16, data_g), mask_g)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert not torch.equal(stem, stem_before)  # the wrapped LungNet itself was trained
    assert any(p is ae.mask_token for p in ae.parameters())


def test_decoder_handles_branches_and_uneven_lengths() -> None:
    ae = autoencoder(n_branches=2, arch="multibranch", n_frames=36)  # T' = 9 = P
    pred, target, frames = ae.reconstruct(torch.randn(2, 2, 16, 36), ae.sample_mask(2))
    assert pred.shape == target.shape == (2, 2, 16, 36)
    assert frames.shape == (2, 36)
    ae_short = autoencoder(n_frames=38)  # P = 9 patches of 4 frames, T' = 10: interpolated
    assert ae_short.model.cfg.out_frames == 10
    pred, target, frames = ae_short.reconstruct(torch.randn(2, 1, 16, 38), ae_short.sample_mask(2))
    assert pred.shape == target.shape == (2, 1, 16, 36)  # the 2 trailing frames are not scored
    assert torch.isfinite(ae_short(torch.randn(2, 1, 16, 38))).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mask_ratio": 1.0}, "mask_ratio must be in"),
        ({"patch_frames": 0}, "patch_frames must be in"),
        ({"patch_frames": 17}, "patch_frames must be in"),
        ({"decoder_dim": 0}, "decoder_dim must be >= 1"),
    ],
)
def test_invalid_arguments_are_rejected(kwargs: dict[str, float], message: str) -> None:
    model = build_model(ModelConfig(**TINY))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        MaskedSpectrogramAutoencoder(model, **kwargs)  # type: ignore[arg-type]


def test_masked_mse_rejects_an_empty_mask() -> None:
    zeros = torch.zeros(1, 1, 2, 4)
    with pytest.raises(ValueError, match="masks no frame"):
        masked_mse(zeros, zeros, torch.zeros(1, 4, dtype=torch.bool))
