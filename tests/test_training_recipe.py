"""The recipe's per-sample pieces: classifier-free dropout follows ControlLDM.get_input exactly, and
the loss target (noise or velocity) and optional Min-SNR weights follow their closed forms."""

from __future__ import annotations

import numpy as np
import torch

from training.train import apply_dropout, dropout_masks


def test_exact_masks_for_fixed_draws() -> None:
    r = torch.tensor([0.0, 0.0499, 0.05, 0.0999, 0.10, 0.1499, 0.15, 0.5, 0.9999])
    text, pair = dropout_masks(r, 0.05)
    # r < 0.05: text only; 0.05 <= r < 0.10: both; 0.10 <= r < 0.15: pair only; else neither.
    assert text.tolist() == [True, True, True, True, False, False, False, False, False]
    assert pair.tolist() == [False, False, True, True, True, True, False, False, False]


def test_rates_over_many_draws() -> None:
    n = 400_000
    text, pair = dropout_masks(torch.rand(n, generator=torch.Generator().manual_seed(0)), 0.05)
    rates = {
        "text only": (text & ~pair).float().mean().item(),
        "both": (text & pair).float().mean().item(),
        "pair only": (~text & pair).float().mean().item(),
        "neither": (~text & ~pair).float().mean().item(),
    }
    # Binomial standard deviation at p = 0.05 is 0.00034; 5 sigma.
    for name in ("text only", "both", "pair only"):
        assert abs(rates[name] - 0.05) < 0.0017, rates
    assert abs(rates["neither"] - 0.85) < 0.003, rates


def test_apply_dropout_swaps_in_the_empty_prompt_and_zeroes_the_pair() -> None:
    ids = torch.arange(4 * 5).reshape(4, 5)
    empty = torch.full((1, 5), -1)
    pair = torch.ones(4, 6, 2, 2)
    r = torch.tensor([0.01, 0.07, 0.12, 0.6])
    new_ids, new_pair = apply_dropout(ids, empty, pair, r, 0.05)
    assert new_ids[0].eq(-1).all() and new_ids[1].eq(-1).all()
    assert torch.equal(new_ids[2:], ids[2:])
    assert [bool(new_pair[i].eq(0).all()) for i in range(4)] == [False, True, True, False]
    assert new_pair[3].eq(1).all()


def sd15_abar() -> np.ndarray:
    """SD1.5's schedule written out by hand: betas on a squared linspace, abar their running product."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def training_scheduler(prediction_type: str):
    from diffusers import DDIMScheduler, DDPMScheduler

    from pdiff_core.presets import SD15_SCHEDULER

    # As the trainer builds it: DDPM from the pipeline's DDIM config.
    return DDPMScheduler.from_config(DDIMScheduler(**SD15_SCHEDULER).config, prediction_type=prediction_type)


TIMESTEPS = torch.tensor([0, 100, 300, 500, 999])


def test_min_snr_weights_follow_the_closed_form() -> None:
    from training.train import min_snr_weights

    abar = sd15_abar()[TIMESTEPS.numpy()]
    snr = abar / (1.0 - abar)
    weights = min_snr_weights(training_scheduler("epsilon"), TIMESTEPS, gamma=5.0)
    np.testing.assert_allclose(weights.numpy(), np.minimum(snr, 5.0) / snr, rtol=1e-4)
    # Low noise is down-weighted, high noise (SNR below gamma) keeps weight 1.
    assert weights[0] < 0.01 and weights[-1] == 1.0
    v_weights = min_snr_weights(training_scheduler("v_prediction"), TIMESTEPS, gamma=5.0)
    np.testing.assert_allclose(v_weights.numpy(), np.minimum(snr, 5.0) / (snr + 1.0), rtol=1e-4)


def test_diffusion_target_is_the_noise_or_the_velocity() -> None:
    from training.train import diffusion_target

    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(5, 4, 2, 2, generator=g), torch.randn(5, 4, 2, 2, generator=g)
    assert torch.equal(diffusion_target(training_scheduler("epsilon"), latents, noise, TIMESTEPS), noise)
    # v = sqrt(abar) * noise - sqrt(1 - abar) * x0 (Salimans & Ho 2022).
    abar = torch.from_numpy(sd15_abar()[TIMESTEPS.numpy()]).float()[:, None, None, None]
    expected = abar.sqrt() * noise - (1 - abar).sqrt() * latents
    torch.testing.assert_close(
        diffusion_target(training_scheduler("v_prediction"), latents, noise, TIMESTEPS), expected, atol=1e-5, rtol=1e-5
    )
