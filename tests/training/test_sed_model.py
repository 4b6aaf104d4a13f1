"""SedNet: streaming (chunk by chunk, state carried) equals the whole-recording pass for any
chunking; causality and the stated look-ahead; size limits of the shipped configuration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.streaming_fixture import vary_batchnorm
from training.models.sed import SedConfig, SedNet, StreamingSed, count_parameters

TINY = SedConfig(
    n_kinds=2, n_bands=8, n_outputs=3, stride=2, channels=8, dilations=(1, 2),
    kernel_widths=(3, 5), lookahead_frames=2,
)  # fmt: skip


def model_of(config: SedConfig, seed: int = 0) -> SedNet:
    torch.manual_seed(seed)
    model = SedNet(config)
    vary_batchnorm(model)
    with torch.no_grad():
        model.set_input_stats(
            torch.randn(config.n_kinds, config.n_bands),
            torch.rand(config.n_kinds, config.n_bands) + 0.5,
        )
    return model.eval()


def chunked(model: SedNet, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Run ``x`` (B, K, F, T) through the model in chunks of ``sizes`` network frames."""
    s = model.config.stride
    state, outs, at = model.initial_state(x.shape[0]), [], 0
    for n in sizes:
        logits, state = model(x[..., at * s : (at + n) * s], state)
        outs.append(logits)
        at += n
    return torch.cat(outs, dim=2)


@pytest.mark.parametrize(
    "config",
    [
        TINY,
        SedConfig(**{**vars(TINY), "attention_heads": 2, "attention_frames": 5}),
        SedConfig(**{**vars(TINY), "freq_channels": 4, "freq_pool": 2}),
        SedConfig(
            **{**vars(TINY), "freq_channels": 4, "freq_pool": 2, "freq_at_network_rate": True}
        ),
        SedConfig(**{**vars(TINY), "contrast_frames": 7}),  # its cache spans chunks
        SedConfig(
            **{
                **vars(TINY),
                "freq_channels": 4,
                "freq_pool": 2,
                "freq_at_network_rate": True,
                "freq_time_frames": 3,  # the spectral branch's caches span chunks
            }
        ),
    ],
    ids=[
        "convolutions",
        "with-attention",
        "spectral-stem",
        "spectral-branch",
        "band-contrast",
        "spectral-branch-in-time",
    ],
)
def test_any_chunking_equals_the_whole_pass(config: SedConfig) -> None:
    model = model_of(config)
    n = 41
    x = torch.randn(3, config.n_kinds, config.n_bands, n * config.stride)
    with torch.no_grad():
        whole, _ = model(x)
        rng = np.random.default_rng(0)
        for sizes in ([1] * n, [n], [7, 13, 21], None, None):
            if sizes is None:  # random cuts summing to n
                cuts = np.sort(rng.choice(np.arange(1, n), size=6, replace=False))
                sizes = np.diff([0, *cuts, n]).tolist()
            got = chunked(model, x, sizes)
            assert torch.allclose(got, whole, atol=1e-5), sizes


def test_outputs_do_not_depend_on_the_future_beyond_the_look_ahead() -> None:
    model = model_of(TINY)
    s, la = TINY.stride, TINY.lookahead_frames
    x = torch.randn(1, TINY.n_kinds, TINY.n_bands, 30 * s)
    y = x.clone()
    y[..., 20 * s :] += 5.0  # change network frames 20.. only
    with torch.no_grad():
        a, _ = model(x)
        b, _ = model(y)
    assert torch.allclose(a[..., :20], b[..., :20])  # causal in the network frame
    assert not torch.allclose(a[..., 20], b[..., 20])
    # aligned to the recording, output j depends on frames up to j + lookahead
    n = 30 - la
    with torch.no_grad():
        fa, _ = model.forward_train(x, n)
        fb, _ = model.forward_train(y, n)
    assert torch.allclose(fa[..., : 20 - la], fb[..., : 20 - la])
    assert not torch.allclose(fa[..., 20 - la], fb[..., 20 - la])


def test_streaming_wrapper_gives_sigmoid_probabilities_and_state() -> None:
    model = model_of(TINY)
    wrapper = StreamingSed(model)
    x = torch.randn(2, TINY.n_kinds, TINY.n_bands, 6 * TINY.stride)
    with torch.no_grad():
        probs, state = wrapper(x, model.initial_state(2))
        logits, _ = model(x)
    assert probs.shape == (2, TINY.n_outputs, 6)
    assert state.shape == (2, model.state_size)
    assert torch.allclose(probs, torch.sigmoid(logits))


def test_record_head_pools_only_the_masked_frames() -> None:
    config = SedConfig(**{**vars(TINY), "record_outputs": 2})
    model = model_of(config)
    x = torch.randn(2, config.n_kinds, config.n_bands, 12 * config.stride)
    mask = torch.ones(2, 10)
    mask[1, 6:] = 0.0
    with torch.no_grad():
        _, full = model.forward_train(x, 10, mask)
        x2 = x.clone()
        x2[1, ..., 12 * config.stride - 2 :] += 3.0  # only frames the mask excludes change
        _, masked = model.forward_train(x2, 10, mask)
    assert full is not None
    assert masked is not None
    assert torch.allclose(full[1], masked[1])


def test_shipped_configuration_fits_the_budget() -> None:
    config = SedConfig(n_kinds=3, n_bands=64, n_outputs=7, attention_heads=4)
    model = SedNet(config)
    assert count_parameters(model) <= 500_000
    assert config.lookahead_frames * config.stride * 10 <= 500  # ms of look-ahead


def test_bad_configurations_are_named() -> None:
    with pytest.raises(ValueError, match="channels"):
        SedConfig(channels=10, kernel_widths=(3, 5, 7))
    with pytest.raises(ValueError, match="attention_heads"):
        SedConfig(channels=96, attention_heads=5)
    with pytest.raises(ValueError, match="freq_time_frames"):  # time context at 10 ms: no
        SedConfig(freq_channels=4, freq_time_frames=3)
    with pytest.raises(ValueError, match="freq_time_frames"):
        SedConfig(freq_channels=4, freq_at_network_rate=True, freq_time_frames=0)


def test_the_spectral_branch_in_time_carries_its_caches_in_the_state() -> None:
    base = {**vars(TINY), "freq_channels": 4, "freq_pool": 2, "freq_at_network_rate": True}
    flat, timed = SedNet(SedConfig(**base)), SedNet(SedConfig(**{**base, "freq_time_frames": 3}))
    # per kind: the input frame and its 4 channels, two network frames each, per band
    kinds = TINY.n_kinds
    assert timed.state_size - flat.state_size == kinds * (1 + 4) * TINY.n_bands * 2
    assert count_parameters(timed) - count_parameters(flat) == kinds * 2 * (4 + 4 * 4) * 5


def test_band_contrast_feeds_the_input_less_its_causal_moving_mean() -> None:
    config = SedConfig(**{**vars(TINY), "contrast_frames": 4})
    model = model_of(config)
    contrast = model.contrasts[0]
    x = torch.randn(2, config.n_bands, 12)
    with torch.no_grad():
        y, cache = contrast(x, torch.zeros(2, config.n_bands, 3))
    padded = torch.cat([torch.zeros(2, config.n_bands, 3), x], dim=2)
    mean = torch.stack([padded[:, :, t : t + 4].mean(dim=2) for t in range(12)], dim=2)
    assert torch.allclose(y[:, : config.n_bands], x)
    assert torch.allclose(y[:, config.n_bands :], x - mean, atol=1e-6)
    assert torch.equal(cache, x[:, :, -3:])
    assert model.state_size == SedNet(TINY).state_size + config.n_kinds * config.n_bands * 3
    with pytest.raises(ValueError, match="contrast_frames"):
        SedConfig(**{**vars(TINY), "contrast_frames": 4, "freq_channels": 4})
    with pytest.raises(ValueError, match=r"contrast_frames must be 0 \(off\) or an integer >= 2"):
        SedConfig(**{**vars(TINY), "contrast_frames": 1})  # x less its own mean: always 0


def test_dropout_acts_in_training_only() -> None:
    config = SedConfig(**{**vars(TINY), "dropout": 0.5})
    model = model_of(config)  # eval mode
    x = torch.randn(2, config.n_kinds, config.n_bands, 20 * config.stride)
    with torch.no_grad():
        a, _ = model(x)
        b, _ = model(x)
        plain = SedNet(TINY)
        plain.load_state_dict(model.state_dict())  # the same weights without dropout
        c, _ = plain.eval()(x)
        model.train()
        plain.train()
        d1, d2 = model(x)[0], model(x)[0]
        p1, p2 = plain(x)[0], plain(x)[0]
    assert torch.equal(a, b)  # evaluation is deterministic
    assert torch.allclose(a, c)  # and equals the model without dropout: the export is unchanged
    assert torch.equal(p1, p2)  # without dropout a training pass is deterministic
    assert not torch.allclose(d1, d2)  # with it, each training pass drops other channels
    with pytest.raises(ValueError, match=r"dropout must be a number in \[0, 1\), got 1.0"):
        SedConfig(**{**vars(TINY), "dropout": 1.0})
