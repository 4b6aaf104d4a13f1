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
        SedConfig(**{**vars(TINY), "n_kinds": 3}),  # a learned combination of three stems
    ],
    ids=["convolutions", "with-attention", "three-kinds"],
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
        fa = model.forward_train(x, n)
        fb = model.forward_train(y, n)
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


def test_shipped_configuration_fits_the_budget() -> None:
    config = SedConfig(n_kinds=3, n_outputs=7, attention_heads=4)
    model = SedNet(config)
    assert count_parameters(model) <= 500_000
    assert config.lookahead_frames * config.stride * 10 <= 500  # ms of look-ahead


def test_bad_configurations_are_named() -> None:
    with pytest.raises(ValueError, match="channels"):
        SedConfig(channels=10, kernel_widths=(3, 5, 7))
    with pytest.raises(ValueError, match="attention_heads"):
        SedConfig(channels=96, attention_heads=5)
    with pytest.raises(ValueError, match="lookahead_frames"):
        SedConfig(lookahead_frames=-1)
