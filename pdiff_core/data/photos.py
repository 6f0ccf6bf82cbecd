"""Folders of photos, before annotation: which images form which group, and which are skipped.

`python -m training.annotate` turns these groups into a `pdiff-groups` dataset and `pdiff data
check` reports them. Layouts (`docs/dataset-format.md`, "Your own photos"):

- `folder`: `metadata.jsonl` lines `{"file_name": ..., "text": ...}` (the Hugging Face imagefolder
  convention); or one subfolder per group holding its images and a `caption.txt`; or images in the
  folder itself, each with an optional sidecar `<name>.txt` caption. Images with the same caption
  form one group; a photo whose caption no other shares, or that has none, is a group of one.
- `ip2p`: the InstructPix2Pix layout the paper used: `seeds.json` (`[[name, [seed, ...]], ...]`)
  and per prompt folder `prompt.json` (its `output` caption) with `<seed>_0.jpg` / `<seed>_1.jpg`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

from .format import DatasetFormatError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Files a photo folder may hold besides its images (captions, metadata); never reported as skipped.
SIDE_FILES = (".txt", ".json", ".jsonl", ".md")


@dataclass
class SourceGroup:
    key: str  # stable name of the group in the input, checked when annotation resumes
    caption: str
    images: List[Path]


@dataclass
class PhotoFolder:
    """The groups found in a photo folder and the files left out, each with the reason."""

    root: Path
    layout: str  # which layout was recognised, in words
    groups: List[SourceGroup] = field(default_factory=list)
    skipped: List[Tuple[Path, str]] = field(default_factory=list)


def _unreadable(path: Path) -> str:
    """Why `path` cannot be used as an image ("" when it can); reads the header only."""
    try:
        with Image.open(path) as im:
            im.size  # noqa: B018 - the header is parsed here
    except (OSError, ValueError, SyntaxError) as err:
        return f"cannot read as an image ({err})"
    return ""


def _scan(folder: Path, found: PhotoFolder) -> List[Path]:
    """Readable images directly in `folder`; other files go to `found.skipped` with the reason."""
    images = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        suffix = path.suffix.lower()
        if suffix in SIDE_FILES:
            continue
        if suffix not in IMAGE_SUFFIXES:
            found.skipped.append(
                (path, f"not an image file ({suffix or 'no suffix'}; expected {', '.join(IMAGE_SUFFIXES)})")
            )
        elif reason := _unreadable(path):
            found.skipped.append((path, reason))
        else:
            images.append(path)
    return images


def _by_caption(pairs: Sequence[Tuple[Path, str]], root: Path) -> List[SourceGroup]:
    """Same caption, one group; uncaptioned photos are groups of one each (nothing says they belong together)."""
    groups: Dict[str, List[Path]] = {}
    alone = []
    for path, caption in pairs:
        caption = caption.strip()
        if caption:
            groups.setdefault(caption, []).append(path)
        else:
            alone.append(path)
    return [SourceGroup(caption, caption, sorted(paths)) for caption, paths in sorted(groups.items())] + [
        SourceGroup(f"file:{p.relative_to(root)}", "", [p]) for p in sorted(alone)
    ]


def folder_groups(root: Path) -> PhotoFolder:
    """Groups of the `folder` layout (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetFormatError(f"{root}: not a folder of photos")
    metadata = root / "metadata.jsonl"
    if metadata.is_file():
        found = PhotoFolder(root, "metadata.jsonl (one caption per image)")
        pairs = []
        for n, line in enumerate(metadata.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                path, text = root / record["file_name"], str(record["text"])
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise DatasetFormatError(
                    f'{metadata}:{n}: expected {{"file_name": ..., "text": ...}} ({err})'
                ) from None
            reason = "listed in metadata.jsonl but not found" if not path.is_file() else _unreadable(path)
            if reason:
                found.skipped.append((path, reason))
            else:
                pairs.append((path, text))
        found.groups = _by_caption(pairs, root)
        return found
    subfolders = sorted(p for p in root.iterdir() if p.is_dir())
    captioned = [p for p in subfolders if (p / "caption.txt").is_file()]
    if captioned:
        found = PhotoFolder(root, "one subfolder per group with caption.txt")
        for folder in subfolders:
            images = _scan(folder, found)
            if folder not in captioned:
                found.skipped.extend((p, f"its folder {folder.name}/ has no caption.txt") for p in images)
            elif images:
                found.groups.append(
                    SourceGroup(folder.name, (folder / "caption.txt").read_text(encoding="utf-8").strip(), images)
                )
        found.skipped.extend((p, "beside the group subfolders, in no group") for p in _scan(root, found))
        return found
    found = PhotoFolder(root, "images with optional sidecar .txt captions")
    images = _scan(root, found)
    found.groups = _by_caption(
        [
            (p, p.with_suffix(".txt").read_text(encoding="utf-8") if p.with_suffix(".txt").is_file() else "")
            for p in images
        ],
        root,
    )
    return found


def ip2p_groups(root: Path) -> PhotoFolder:
    """Groups of the InstructPix2Pix layout: one per prompt folder, captioned with its output prompt."""
    root = Path(root)
    seeds_file = root / "seeds.json"
    if not seeds_file.is_file():
        raise DatasetFormatError(f"{seeds_file}: not found; the ip2p layout needs seeds.json")
    found = PhotoFolder(root, "InstructPix2Pix (seeds.json, prompt folders)")
    for name, seeds in json.loads(seeds_file.read_text()):
        folder = root / name
        prompt_file = folder / "prompt.json"
        try:
            caption = json.loads(prompt_file.read_text(encoding="utf-8"))["output"]
        except (OSError, json.JSONDecodeError, KeyError) as err:
            raise DatasetFormatError(f'{prompt_file}: cannot read its "output" caption ({err})') from None
        # The authors draw the example from the `_0` images and the query from the `_1` ones; both join the group.
        images = [folder / f"{seed}_{k}.jpg" for seed in seeds for k in (0, 1)]
        found.groups.append(SourceGroup(name, caption, images))
    return found


def load_square(path: Path, resolution: int) -> np.ndarray:
    """Centre square crop resized to `resolution`, uint8 RGB; names the file when it cannot be read."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            side = min(im.size)
            left, top = (im.width - side) // 2, (im.height - side) // 2
            im = im.crop((left, top, left + side, top + side)).resize(
                (resolution, resolution), Image.Resampling.LANCZOS
            )
            return np.asarray(im)
    except (OSError, ValueError, SyntaxError) as err:
        raise DatasetFormatError(f"{path}: cannot read as an image ({err})") from None
