"""Self-supervised pretraining in the spirit of HeAR: a masked-spectrogram autoencoder.

On unlabelled windows (about 2 s: 200 frames at a 10 ms hop), random time patches of the
*normalised* input are replaced by a learned mask token (one value per branch and band), the
whole window is encoded by :meth:`LungNet.encode_sequence`, and a light decoder predicts the
spectrogram values of every patch from the sequence; the loss is the mean squared error over
the masked patches only. The autoencoder wraps the very :class:`LungNet` instance it is given,
so after pretraining that model carries the pretrained encoder and fine-tuning continues from
it (the decoder and mask token are dropped).

Shapes: ``B`` batch, ``K`` branches, ``F`` bands, ``T`` frames, ``P = T // patch_frames``
patches (trailing frames beyond ``P * patch_frames`` are never masked nor scored), ``T'`` the
encoder's time steps, ``D`` its embedding size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.functional import interpolate, pad
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from training.models import LungNet

if TYPE_CHECKING:
    from training.config import RunConfig

DEFAULT_MASK_RATIO = 0.6
DEFAULT_PATCH_FRAMES = 8
DEFAULT_DECODER_DIM = 128
SSL_SEED_OFFSET = 7919  # keeps the pretraining streams apart from the fine-tuning ones


class MaskedSpectrogramAutoencoder(nn.Module):
    """Masks time patches, encodes with the wrapped model, reconstructs the masked patches.

    ``forward(x, generator)`` with ``x`` (B, K, F, T) raw log features returns the scalar loss.
    The mask is drawn from ``generator`` (exactly ``round(mask_ratio * P)`` patches per
    window, at least one, never all), so a seeded generator makes the masking reproducible.
    """

    def __init__(
        self,
        model: LungNet,
        mask_ratio: float = DEFAULT_MASK_RATIO,
        patch_frames: int = DEFAULT_PATCH_FRAMES,
        decoder_dim: int = DEFAULT_DECODER_DIM,
    ) -> None:
        super().__init__()
        cfg = model.cfg
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if not 1 <= patch_frames <= cfg.n_frames // 2:
            raise ValueError(
                f"patch_frames must be in [1, n_frames // 2 = {cfg.n_frames // 2}], "
                f"got {patch_frames}"
            )
        if decoder_dim < 1:
            raise ValueError(f"decoder_dim must be >= 1, got {decoder_dim}")
        self.model = model
        self.patch_frames = patch_frames
        self.n_patches = cfg.n_frames // patch_frames
        self.n_masked = min(max(1, round(mask_ratio * self.n_patches)), self.n_patches - 1)
        self.mask_token = nn.Parameter(torch.zeros(cfg.n_branches, cfg.n_bands, 1))
        patch_values = cfg.n_branches * cfg.n_bands * patch_frames
        self.decoder = nn.Sequential(
            nn.Linear(cfg.embed_dim, decoder_dim),
            nn.GELU(),
            nn.Linear(decoder_dim, patch_values),
        )

    def sample_mask(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, P) bool, True where a patch is masked; ``n_masked`` patches per row."""
        device = self.mask_token.device
        scores = torch.rand(batch, self.n_patches, generator=generator, device=device)
        ranks = scores.argsort(dim=1).argsort(dim=1)
        return ranks < self.n_masked

    def frame_mask(self, patch_mask: torch.Tensor, n_frames: int) -> torch.Tensor:
        """(B, P) patch mask -> (B, T) frame mask (trailing frames beyond the patches False)."""
        frames = patch_mask.repeat_interleave(self.patch_frames, dim=1)
        return pad(frames, (0, n_frames - frames.shape[1]), value=False)

    def reconstruct(
        self, x: torch.Tensor, patch_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prediction, target and frame mask for raw input ``x`` (B, K, F, T).

        Returns ``pred`` (B, K, F, P * patch_frames), ``target`` (the normalised input over the
        same frames) and the frame mask (B, P * patch_frames) bool. Masked frames of the
        encoder's input hold the mask token, so the prediction never sees them.
        """
        target = self.model.normalise(x)
        covered = self.n_patches * self.patch_frames
        mask = self.frame_mask(patch_mask, x.shape[-1])[:, None, None, :]  # (B, 1, 1, T)
        masked_input = torch.where(mask, self.mask_token, target)
        sequence = self.model.encode_sequence(masked_input, normalised=True)  # (B, T', D)
        return self._decode(sequence), target[..., :covered], mask[:, 0, 0, :covered]

    def _decode(self, sequence: torch.Tensor) -> torch.Tensor:
        """(B, T', D) -> (B, K, F, P * patch_frames)."""
        if sequence.shape[1] != self.n_patches:
            sequence = interpolate(
                sequence.transpose(1, 2), size=self.n_patches, mode="linear", align_corners=False
            ).transpose(1, 2)
        cfg = self.model.cfg
        patches = self.decoder(sequence).reshape(
            -1, self.n_patches, cfg.n_branches, cfg.n_bands, self.patch_frames
        )
        return patches.permute(0, 2, 3, 1, 4).reshape(
            -1, cfg.n_branches, cfg.n_bands, self.n_patches * self.patch_frames
        )

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, K, F, T) raw log features -> scalar MSE over the masked patches."""
        patch_mask = self.sample_mask(x.shape[0], generator)
        pred, target, frame_mask = self.reconstruct(x, patch_mask)
        return masked_mse(pred, target, frame_mask)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over masked frames only.

    ``pred``, ``target``: (B, K, F, T); ``frame_mask``: (B, T) bool. Unmasked frames contribute
    nothing (neither to the sum nor to the count).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    weights = frame_mask[:, None, None, :].to(pred.dtype)
    count = weights.sum() * pred.shape[1] * pred.shape[2]
    if count.item() == 0:
        raise ValueError("frame_mask masks no frame: nothing to reconstruct")
    return ((pred - target) ** 2 * weights).sum() / count


def pretrain(
    model: LungNet, dataset: Dataset[Any], run: RunConfig, rank: int = 0, world: int = 1
) -> list[float]:
    """Masked-autoencoder pretraining of ``model`` in place on unlabelled windows.

    Runs ``run.ssl.epochs`` passes (DistributedDataParallel when ``world > 1``) and returns
    the mean loss of each pass. Labels in ``dataset`` are ignored.
    """
    autoencoder = MaskedSpectrogramAutoencoder(model, run.ssl.mask_ratio, run.ssl.patch_frames)
    trained: nn.Module = DistributedDataParallel(autoencoder) if world > 1 else autoencoder
    optimizer = torch.optim.AdamW(autoencoder.parameters(), lr=run.ssl.lr)
    sampler: DistributedSampler[Any] | None = (
        DistributedSampler(dataset, num_replicas=world, rank=rank, seed=run.seed)
        if world > 1
        else None
    )
    loader = DataLoader(
        dataset,
        batch_size=run.optim.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=True,
        generator=torch.Generator().manual_seed(run.seed + SSL_SEED_OFFSET),
    )
    generator = torch.Generator().manual_seed(run.seed + SSL_SEED_OFFSET + rank)
    losses = []
    autoencoder.train()
    for epoch in range(run.ssl.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        total, count = 0.0, 0
        for x, _, _ in loader:
            loss = trained(x, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + float(loss.detach()), count + 1
        losses.append(total / max(count, 1))
    return losses
