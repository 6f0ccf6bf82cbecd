"""Turn captioned images into a pdiff-groups dataset by running condition-map annotators.

    python -m training.annotate --input DIR --out DIR [--layout folder|ip2p] [--maps depth,hed,seg]
        [--annotator-weights DIR] [--fallback] [--resolution 256] [--batch-size 16] [--device cpu]

Input layouts (`pdiff_core.data.photos`, `docs/dataset-format.md`): `folder` (captioned subfolders,
`metadata.jsonl`, or photos with optional sidecar `.txt` captions; photos sharing a caption form a
group, the others are groups of one) and `ip2p` (the InstructPix2Pix layout the paper used).

Maps: `depth` (MiDaS DPT-Hybrid, `dpt_hybrid-midas-501f0c75.pt`), `hed` (ControlNet HED,
`ControlNetHED.pth`) and `seg` (`--segmenter upernet`: a transformers UperNet ADE20K folder
`upernet-convnext-small/`, painted in the ADE20K palette; or `sam`: `sam_vit_h_4b8939.pth`) load
their weights from `--annotator-weights` only (nothing is downloaded). `--fallback` replaces missing
ones with classical OpenCV maps where one exists (hed: Sobel soft edges, seg: k-means colour
regions) and leaves out, with a warning before any work, a map that has none (depth); `canny`
and `sobel` are always classical. dataset.json records which
annotator made each map. Groups are committed one by one, so an interrupted run resumes where it
stopped when started again with the same arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from pdiff_core.data import FORMAT_NAME, DatasetFormatError, DatasetWriter
from pdiff_core.data.photos import PhotoFolder, SourceGroup, folder_groups, ip2p_groups, load_square
from pdiff_core.defaults import default_device

logger = logging.getLogger(__name__)

SETTINGS_FILE = "annotate.json"
# Learned annotators: (name recorded in dataset.json, file or folder in --annotator-weights).
WEIGHTS = {
    "depth": ("midas-dpt-hybrid", "dpt_hybrid-midas-501f0c75.pt"),
    "hed": ("controlnet-hed", "ControlNetHED.pth"),
}
SEGMENTERS = {
    # ADE20K classes in the ADE20K palette: the colour convention of ControlNet's and the authors'
    # UniFormer seg maps (UniFormer itself is not in controlnet-aux). A transformers folder.
    "upernet": ("upernet-convnext-small-ade20k", "upernet-convnext-small"),
    # Class-free regions, each in a random colour.
    "sam": ("segment-anything-vit-h", "sam_vit_h_4b8939.pth"),
}
SEG_PALETTE = np.array(  # distinct colours for the k-means regions, darkest region first
    [
        [120, 120, 120],
        [180, 120, 120],
        [6, 230, 230],
        [80, 50, 50],
        [4, 200, 3],
        [120, 120, 80],
        [140, 140, 140],
        [204, 5, 255],
        [230, 230, 230],
        [4, 250, 7],
        [224, 5, 255],
        [235, 255, 7],
    ],
    dtype=np.uint8,
)

# One image (uint8 HxWx3 at the output resolution) in, one map (uint8 HxW or HxWx3) out; a batch at a time.
BatchFn = Callable[[List[np.ndarray]], List[np.ndarray]]


class AnnotatorWeightsError(FileNotFoundError):
    """Annotator weights are missing; the message lists the files expected."""


@dataclass
class Annotator:
    map: str
    kind: str  # recorded in dataset.json
    classical: bool
    run: BatchFn


# --------------------------------------------------------------------------- classical maps


def sobel_edges(image: np.ndarray) -> np.ndarray:
    """Soft edges (a classical stand-in for HED): Sobel gradient magnitude of the blurred grey image."""
    gray = cv2.GaussianBlur(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32), (0, 0), 1.0)
    magnitude = cv2.magnitude(cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3))
    return (255.0 * np.sqrt(magnitude / max(float(magnitude.max()), 1e-6))).clip(0, 255).astype(np.uint8)


def canny_edges(image: np.ndarray) -> np.ndarray:
    return cv2.Canny(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), 100, 200)


def kmeans_regions(image: np.ndarray, clusters: int = 6) -> np.ndarray:
    """Colour regions (a classical stand-in for a segmenter): k-means on smoothed colours, each
    cluster painted with a palette colour in order of brightness so the map is deterministic."""
    smooth = cv2.bilateralFilter(image, 5, 50, 50).reshape(-1, 3).astype(np.float32)
    clusters = min(clusters, len(np.unique(smooth, axis=0)))
    cv2.setRNGSeed(0)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 1.0)
    _, labels, centers = cv2.kmeans(smooth, clusters, None, criteria, 3, cv2.KMEANS_PP_CENTERS)
    rank = np.argsort(np.argsort(centers.sum(axis=1)))
    return SEG_PALETTE[rank[labels.ravel()] % len(SEG_PALETTE)].reshape(image.shape)


CLASSICAL: Dict[str, Tuple[str, Callable[[np.ndarray], np.ndarray]]] = {
    "canny": ("opencv-canny", canny_edges),
    "sobel": ("opencv-sobel", sobel_edges),
}
FALLBACKS: Dict[str, Tuple[str, Callable[[np.ndarray], np.ndarray]]] = {
    "hed": ("opencv-sobel (classical fallback for hed)", sobel_edges),
    "seg": ("opencv-kmeans (classical fallback for seg)", kmeans_regions),
}


def _per_image(fn: Callable[[np.ndarray], np.ndarray]) -> BatchFn:
    return lambda images: [fn(image) for image in images]


# --------------------------------------------------------------------------- learned maps, batched


def _square(images: List[np.ndarray], size: int) -> torch.Tensor:
    resized = [
        cv2.resize(im, (size, size), interpolation=cv2.INTER_LANCZOS4 if size > im.shape[0] else cv2.INTER_AREA)
        for im in images
    ]
    return torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).float()


def midas_batch(model: torch.nn.Module, detect_resolution: int, device: str) -> BatchFn:
    """controlnet-aux MidasDetector's depth (min-max normalised, near = bright), on a whole batch."""

    @torch.no_grad()
    def run(images: List[np.ndarray]) -> List[np.ndarray]:
        depth = model(_square(images, detect_resolution).to(device) / 127.5 - 1.0)
        low = depth.flatten(1).min(1).values[:, None, None]
        high = depth.flatten(1).max(1).values[:, None, None]
        depth = ((depth - low) / (high - low).clamp_min(1e-8) * 255.0).clip(0, 255).byte().cpu().numpy()
        return [cv2.resize(d, im.shape[1::-1], interpolation=cv2.INTER_LINEAR) for d, im in zip(depth, images)]

    return run


def hed_batch(network: torch.nn.Module, detect_resolution: int, device: str) -> BatchFn:
    """controlnet-aux HEDdetector's soft edges (mean of the side outputs, sigmoid), on a whole batch."""

    @torch.no_grad()
    def run(images: List[np.ndarray]) -> List[np.ndarray]:
        sides = network(_square(images, detect_resolution).to(device))
        out = []
        for i, image in enumerate(images):
            edges = np.stack(
                [
                    cv2.resize(s[i, 0].float().cpu().numpy(), (detect_resolution,) * 2, interpolation=cv2.INTER_LINEAR)
                    for s in sides
                ],
                axis=2,
            )
            edge = (255.0 / (1.0 + np.exp(-edges.mean(axis=2).astype(np.float64)))).clip(0, 255).astype(np.uint8)
            out.append(cv2.resize(edge, image.shape[1::-1], interpolation=cv2.INTER_LINEAR))
        return out

    return run


def upernet_batch(model: torch.nn.Module, processor: Any, device: str) -> BatchFn:
    """ADE20K semantic classes, each pixel painted with its class's ADE20K palette colour."""
    from controlnet_aux.util import ade_palette

    palette = np.asarray(ade_palette(), dtype=np.uint8)

    @torch.no_grad()
    def run(images: List[np.ndarray]) -> List[np.ndarray]:
        pixels = processor(images=images, return_tensors="pt").pixel_values.to(device)
        logits = torch.nn.functional.interpolate(
            model(pixel_values=pixels).logits, size=images[0].shape[:2], mode="bilinear"
        )
        return [palette[labels] for labels in logits.argmax(1).cpu().numpy()]

    return run


def build_annotators(
    maps: Sequence[str],
    weights_dir: Optional[Path],
    fallback: bool,
    device: str = "cpu",
    detect_resolution: int = 512,
    segmenter: str = "upernet",
) -> List[Annotator]:
    """One annotator per map. With `fallback`, a map without weights gets its classical stand-in,
    or is left out with a warning when it has none (depth); without it (or when no map is left),
    raises AnnotatorWeightsError listing every missing weight file."""
    annotators: List[Annotator] = []
    missing: List[str] = []
    learned = {**WEIGHTS, "seg": SEGMENTERS[segmenter]}
    for name in maps:
        if name in CLASSICAL:
            kind, fn = CLASSICAL[name]
            annotators.append(Annotator(name, kind, True, _per_image(fn)))
            continue
        if name not in learned:
            raise ValueError(
                f"--maps: no annotator for map {name!r}; known maps: {sorted(set(learned) | set(CLASSICAL))}"
            )
        kind, filename = learned[name]
        path = weights_dir / filename if weights_dir is not None else None
        if path is not None and (path.is_file() or (path / "config.json").is_file()):
            annotators.append(Annotator(name, kind, False, _load_learned(name, path, device, detect_resolution)))
        elif fallback and name in FALLBACKS:
            logger.warning("map %s: no %s, using the classical fallback %s", name, path or filename, FALLBACKS[name][0])
            annotators.append(Annotator(name, FALLBACKS[name][0], True, _per_image(FALLBACKS[name][1])))
        else:
            missing.append(
                f"{name}: {path or filename}" + ("" if name in FALLBACKS else " (no classical fallback exists)")
            )
    if fallback and missing and annotators:
        logger.warning(
            "left out, no weights and no classical fallback: %s. The dataset will have the maps %s; to include them, put "
            "the files in --annotator-weights and annotate into a new --out",
            "; ".join(missing),
            [a.map for a in annotators],
        )
        return annotators
    if missing:
        raise AnnotatorWeightsError(
            "missing annotator weights (nothing is downloaded):\n  "
            + "\n  ".join(missing)
            + f"\nPut the files in the folder given to --annotator-weights ({weights_dir or 'not given'}), "
            "pass --fallback to use classical OpenCV maps where they exist, or drop the map from --maps."
        )
    return annotators


def makeable_maps(maps: Sequence[str], weights_dir: Optional[Path], segmenter: str = "upernet") -> List[str]:
    """The maps of `maps` that can be made now: classical, with a fallback, or with their weights present."""
    learned = {**WEIGHTS, "seg": SEGMENTERS[segmenter]}

    def present(name: str) -> bool:
        path = weights_dir / learned[name][1] if weights_dir is not None and name in learned else None
        return path is not None and (path.is_file() or (path / "config.json").is_file())

    return [m for m in maps if m in CLASSICAL or m in FALLBACKS or present(m)]


def _load_learned(name: str, path: Path, device: str, detect_resolution: int) -> BatchFn:
    # Imported here: controlnet-aux is a training extra, and the classical path must not need it.
    from controlnet_aux import HEDdetector, MidasDetector, SamDetector

    if name == "depth":
        detector = MidasDetector.from_pretrained(str(path.parent), filename=path.name).to(device)
        return midas_batch(detector.model, detect_resolution, device)
    if name == "hed":
        detector = HEDdetector.from_pretrained(str(path.parent), filename=path.name).to(device)
        return hed_batch(detector.netNetwork, detect_resolution, device)
    if path.is_dir():
        from transformers import AutoImageProcessor, UperNetForSemanticSegmentation

        model = UperNetForSemanticSegmentation.from_pretrained(path).to(device).eval()
        return upernet_batch(model, AutoImageProcessor.from_pretrained(path), device)
    detector = SamDetector.from_pretrained(str(path.parent), model_type="vit_h", filename=path.name)
    detector.mask_generator.predictor.model.to(device)
    # Segment Anything generates masks one image at a time.
    return _per_image(
        lambda im: np.asarray(
            detector(im, detect_resolution=im.shape[0], image_resolution=im.shape[0], output_type="np")
        )
    )


# --------------------------------------------------------------------------- annotating into a dataset


def _check_settings(out: Path, settings: dict) -> None:
    path = out / SETTINGS_FILE
    if path.is_file():
        previous = json.loads(path.read_text())
        changed = sorted(k for k in settings if previous.get(k) != settings[k])
        if changed:
            raise ValueError(
                f"{path}: this folder was annotated with other settings ({', '.join(f'{k}: {previous.get(k)!r}' for k in changed)}); "
                "use the same arguments to resume, or a new --out"
            )
    elif out.exists() and any(out.iterdir()):
        raise ValueError(f"{out}: folder is not empty and holds no {SETTINGS_FILE}; choose an empty or new --out")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2) + "\n")


def _grey_as_single(array: np.ndarray) -> np.ndarray:
    """A map whose three channels are equal, as one channel: grey maps are stored as L PNGs."""
    if array.ndim == 3 and array.shape[2] == 3 and (array[..., :1] == array).all():
        return array[..., 0]
    return array


def _batches(groups: List[SourceGroup], batch_size: int) -> Iterator[List[SourceGroup]]:
    """Whole groups, about `batch_size` images at a time."""
    batch: List[SourceGroup] = []
    count = 0
    for group in groups:
        batch.append(group)
        count += len(group.images)
        if count >= batch_size:
            yield batch
            batch, count = [], 0
    if batch:
        yield batch


def annotate(
    groups: List[SourceGroup],
    out: Path,
    annotators: List[Annotator],
    resolution: int,
    batch_size: int = 16,
    source: str = "annotate",
    progress: bool = True,
) -> int:
    """Write (or complete) the dataset in `out`; returns the number of groups annotated in this run.
    Groups of one photo are kept: training takes their example pair from another photo."""
    usable = [g for g in groups if g.images]
    if sum(len(g.images) for g in usable) < 2:
        raise DatasetFormatError(
            f"fewer than 2 images to write into {out}: training needs an example and a query photo"
        )
    singles = sum(len(g.images) == 1 for g in usable)
    logger.info(
        "%d group(s) of 2+ images (example and query from the same group), %d single photo(s) (example from "
        "another photo), %d without a caption",
        len(usable) - singles,
        singles,
        sum(not g.caption for g in usable),
    )
    maps = [a.map for a in annotators]
    settings = {
        "format": FORMAT_NAME,
        "maps": maps,
        "resolution": resolution,
        "annotators": {a.map: a.kind for a in annotators},
        "groups": [g.key for g in usable],
    }
    # The settings fix the list of groups, so the groups already written are its first ones.
    _check_settings(out, settings)
    with DatasetWriter(
        out,
        maps,
        resolution,
        source,
        resume=True,
        annotators=settings["annotators"],
        classical_maps=[a.map for a in annotators if a.classical],
    ) as writer:
        todo = usable[writer.n_groups :]
        if writer.n_groups:
            logger.info("resuming: %d of %d groups already done", writer.n_groups, len(usable))
        bar = tqdm(total=sum(len(g.images) for g in todo), unit="image", disable=not progress, desc="annotate")
        for batch in _batches(todo, batch_size):
            images = [load_square(p, resolution) for g in batch for p in g.images]
            results = {a.map: a.run(images) for a in annotators}
            k = 0
            for group in batch:
                items = [
                    (images[j], {name: _grey_as_single(results[name][j]) for name in maps})
                    for j in range(k, k + len(group.images))
                ]
                writer.add_group(group.caption, items, source=group.key)
                k += len(group.images)
            bar.update(k)
        bar.close()
    logger.info(
        "%s: %d groups (%d annotated now, %d already done)", out, len(usable), len(todo), len(usable) - len(todo)
    )
    return len(todo)


def working_command(args: argparse.Namespace) -> str:
    """The command line of this run with --maps reduced to what can be made now and --fallback on."""
    maps = makeable_maps([m for m in args.maps.split(",") if m], args.annotator_weights, args.segmenter)
    command = [
        "python -m training.annotate",
        f"--input {args.input}",
        f"--out {args.out}",
        f"--layout {args.layout}",
        f"--maps {','.join(maps)}",
        "--fallback",
        f"--resolution {args.resolution}",
    ]
    if args.annotator_weights is not None:
        command.append(f"--annotator-weights {args.annotator_weights}")
    return " ".join(command)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.annotate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, type=Path, help="folder of photos (see --layout)")
    parser.add_argument("--out", required=True, type=Path, help="dataset folder to write or resume")
    parser.add_argument("--layout", choices=("folder", "ip2p"), default="folder")
    parser.add_argument("--maps", default="depth,hed,seg", help="comma-separated: depth, hed, seg, canny, sobel")
    parser.add_argument(
        "--annotator-weights",
        type=Path,
        help="folder with " + ", ".join(f for _, f in [*WEIGHTS.values(), *SEGMENTERS.values()]),
    )
    parser.add_argument("--segmenter", choices=sorted(SEGMENTERS), default="upernet", help="the seg map's annotator")
    parser.add_argument(
        "--fallback",
        action="store_true",
        help="classical OpenCV maps where learned weights are missing; maps without one (depth) are left out",
    )
    parser.add_argument("--resolution", type=int, default=256, help="square output size in pixels")
    parser.add_argument("--detect-resolution", type=int, default=512, help="size the learned annotators run at")
    parser.add_argument("--batch-size", type=int, default=16, help="images per annotator batch")
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        maps = [m for m in args.maps.split(",") if m]
        try:
            annotators = build_annotators(
                maps, args.annotator_weights, args.fallback, args.device, args.detect_resolution, args.segmenter
            )
        except AnnotatorWeightsError as err:
            if makeable_maps(maps, args.annotator_weights, args.segmenter):
                raise AnnotatorWeightsError(
                    f"{err}\nA command that works with what is here now:\n  {working_command(args)}"
                ) from None
            raise
        found: PhotoFolder = folder_groups(args.input) if args.layout == "folder" else ip2p_groups(args.input)
        for path, reason in found.skipped:
            logger.warning("skipped %s: %s", path, reason)
        annotate(found.groups, args.out, annotators, args.resolution, args.batch_size, progress=not args.no_progress)
    except (AnnotatorWeightsError, DatasetFormatError, ValueError) as err:
        logger.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
