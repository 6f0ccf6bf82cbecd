"""Reader, writer and task names for the `pdiff-groups` dataset format.

The on-disk layout is described in `docs/dataset-format.md`. This module only
needs numpy and Pillow so that data tools run without torch.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Type, Union

import numpy as np
from PIL import Image

from ..image_io import to_rgb8
from ..jsonl import JsonLinesError, read_jsonl

logger = logging.getLogger(__name__)

FORMAT_NAME = "pdiff-groups"
FORMAT_VERSION = 1
DATASET_FILE = "dataset.json"
GROUPS_FILE = "groups.jsonl"
IMAGE_KEY = "image"
INVERSE_PREFIX = "inv_"
STANDARD_TASKS = ("depth", "hed", "seg", "inv_depth", "inv_hed", "inv_seg")

# Map names become file-name suffixes and task names, so keep them plain.
_MAP_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# Group folders the writer owns; only these are removed by `overwrite=True`.
_GROUP_DIR = re.compile(r"^\d{6,}$")

PathLike = Union[str, Path]
ArrayLike = Union[np.ndarray, Image.Image]


class DatasetFormatError(ValueError):
    """A dataset on disk (or about to be written) does not follow the format."""


@dataclass(frozen=True)
class GroupItem:
    """One image of a group and its maps, as absolute paths."""

    image: Path
    maps: Dict[str, Path]

    def path(self, name: str) -> Path:
        """Path of `"image"` or of a map name."""
        if name == IMAGE_KEY:
            return self.image
        try:
            return self.maps[name]
        except KeyError:
            raise KeyError(f"item {self.image} has no map {name!r}; it has {sorted(self.maps)}") from None


@dataclass(frozen=True)
class Group:
    """Images sharing one caption (the paper's prompt folder), or a single photo."""

    id: str
    caption: str
    items: List[GroupItem]


@dataclass
class DatasetIndex:
    """A loaded, validated dataset: its metadata and its groups."""

    root: Path
    meta: Dict[str, Any]
    groups: List[Group] = field(default_factory=list)

    @property
    def maps(self) -> List[str]:
        return list(self.meta["maps"])

    def __len__(self) -> int:
        return len(self.groups)

    @classmethod
    def load(cls, root: PathLike, check_files: bool = True) -> "DatasetIndex":
        """Read and validate `root`; raises `DatasetFormatError` on any problem.

        `check_files=False` skips the existence check of every PNG (slow on
        network disks for big datasets); the structure is still validated.
        """
        root = Path(root)
        meta = _load_meta(root / DATASET_FILE)
        maps = meta["maps"]
        groups_path = root / GROUPS_FILE
        if not groups_path.is_file():
            raise DatasetFormatError(f"{groups_path}: file not found; expected one JSON group per line")
        groups: List[Group] = []
        seen: Set[str] = set()
        with groups_path.open("r", encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{groups_path}:{lineno}"
                group = _parse_group(line, where, root, maps, check_files)
                if group.id in seen:
                    raise DatasetFormatError(f"{where}: duplicate group id {group.id!r}")
                seen.add(group.id)
                groups.append(group)
        if not groups:
            raise DatasetFormatError(f"{groups_path}: no groups; expected at least one")
        return cls(root=root, meta=meta, groups=groups)


def _load_meta(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise DatasetFormatError(f"{path}: file not found; expected a {FORMAT_NAME} dataset.json")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetFormatError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise DatasetFormatError(f"{path}: expected a JSON object")
    if meta.get("format") != FORMAT_NAME:
        raise DatasetFormatError(f'{path}: expected "format": {FORMAT_NAME!r}, found {meta.get("format")!r}')
    if meta.get("version") != FORMAT_VERSION:
        raise DatasetFormatError(f'{path}: expected "version": {FORMAT_VERSION}, found {meta.get("version")!r}')
    maps = meta.get("maps")
    if not isinstance(maps, list):
        raise DatasetFormatError(f'{path}: expected "maps" to be a list of map names, found {maps!r}')
    _check_map_names(maps, str(path))
    res = meta.get("resolution")
    if not isinstance(res, int) or res <= 0:
        raise DatasetFormatError(f'{path}: expected "resolution" to be a positive integer, found {res!r}')
    return meta


def _check_map_names(maps: List[Any], where: str) -> None:
    for m in maps:
        # "inv_" is reserved so every task name parses one way only.
        if not isinstance(m, str) or not _MAP_NAME.match(m) or m == IMAGE_KEY or m.startswith(INVERSE_PREFIX):
            raise DatasetFormatError(
                f"{where}: map name {m!r}: expected lowercase letters, digits and '_', "
                f"not {IMAGE_KEY!r} and not starting with {INVERSE_PREFIX!r}"
            )
    if len(set(maps)) != len(maps):
        raise DatasetFormatError(f"{where}: map names must be unique, found {maps}")


def _resolve(root: Path, rel: Any, where: str, what: str, check_files: bool) -> Path:
    if not isinstance(rel, str) or not rel:
        raise DatasetFormatError(f"{where}: {what}: expected a relative file path, found {rel!r}")
    p = Path(rel)
    # Paths stay inside the dataset so an index can never point at arbitrary files.
    if p.is_absolute() or ".." in p.parts:
        raise DatasetFormatError(f"{where}: {what}: path {rel!r} must be relative to the dataset root")
    full = root / p
    if check_files and not full.is_file():
        raise DatasetFormatError(f"{where}: {what}: file not found: {full}")
    return full


def _parse_group(line: str, where: str, root: Path, maps: List[str], check_files: bool) -> Group:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{where}: not valid JSON ({e})") from e
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"{where}: expected a JSON object")
    gid, caption, items = obj.get("id"), obj.get("caption"), obj.get("items")
    if not isinstance(gid, str) or not gid:
        raise DatasetFormatError(f'{where}: expected a string "id", found {gid!r}')
    where = f"{where} (group {gid})"
    if not isinstance(caption, str):
        raise DatasetFormatError(f'{where}: expected a string "caption", found {caption!r}')
    if not isinstance(items, list) or not items:
        n = len(items) if isinstance(items, list) else items
        raise DatasetFormatError(f'{where}: expected "items" to list at least 1 item, found {n!r}')
    parsed: List[GroupItem] = []
    for k, item in enumerate(items):
        iw = f"{where} item {k}"
        if not isinstance(item, dict) or not isinstance(item.get("maps"), dict):
            raise DatasetFormatError(f'{iw}: expected {{"image": ..., "maps": {{...}}}}')
        image = _resolve(root, item.get(IMAGE_KEY), iw, IMAGE_KEY, check_files)
        missing = [m for m in maps if m not in item["maps"]]
        if missing:
            raise DatasetFormatError(f"{iw}: missing map(s) {missing}; dataset.json declares maps {maps}")
        item_maps = {m: _resolve(root, item["maps"][m], iw, f"map {m!r}", check_files) for m in maps}
        parsed.append(GroupItem(image=image, maps=item_maps))
    return Group(id=gid, caption=caption, items=parsed)


def load_rgb(path: PathLike) -> np.ndarray:
    """Read an image file as uint8 HxWx3; single-channel files are repeated to RGB."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb8(im)  # 16-bit maps scaled, not clipped white
    except (OSError, ValueError, SyntaxError) as e:
        # PIL raises any of these for missing, truncated or non-image files.
        raise DatasetFormatError(f"{path}: cannot read as an image ({e})") from e


def _to_uint8(arr: ArrayLike, what: str) -> np.ndarray:
    if isinstance(arr, Image.Image):
        arr = np.asarray(arr.convert("RGB") if arr.mode not in ("L", "RGB") else arr)
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        # Refuse rather than guess a scale (0..1 floats vs 0..255).
        raise DatasetFormatError(f"{what}: expected a uint8 array, got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise DatasetFormatError(f"{what}: expected HxW or HxWx3, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


class DatasetWriter:
    """Write a `pdiff-groups` dataset one group at a time.

    Use as a context manager; `dataset.json` is written on a clean exit only,
    so an interrupted run leaves a folder that `DatasetIndex.load` rejects.
    Single-channel maps are saved as L PNGs, 3-channel maps and images as RGB.

    `resume=True` continues a dataset an interrupted writer began in `root`
    (the caller vouches that the folder is meant for it): the groups already in
    `groups.jsonl` are kept, a last line torn by a kill is cut off, numbering
    goes on from there, and each group's line reaches the disk only after its
    files, so a kill loses at most the group being written.
    """

    def __init__(
        self,
        root: PathLike,
        maps: Sequence[str],
        resolution: int,
        source: str,
        overwrite: bool = False,
        resume: bool = False,
        **meta: Any,
    ) -> None:
        self.root = Path(root)
        self.maps = list(maps)
        _check_map_names(self.maps, f"{self.root}: maps")
        reserved = {"format", "version", "maps", "resolution", "source", "groups"} & set(meta)
        if reserved:
            raise DatasetFormatError(f"metadata keys {sorted(reserved)} are set by the writer")
        self.meta: Dict[str, Any] = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "maps": self.maps,
            "resolution": int(resolution),
            "source": source,
            **meta,
        }
        if overwrite and resume:
            raise ValueError("DatasetWriter: overwrite=True replaces a dataset, resume=True continues one; pass one")
        self.overwrite = overwrite
        self.resume = resume
        self.n_groups = 0
        self._groups_file: Any = None

    def __enter__(self) -> "DatasetWriter":
        if self.resume:
            self.n_groups = self._resume_root()
        else:
            self._prepare_root()
        self._groups_file = (self.root / GROUPS_FILE).open("a" if self.resume else "w", encoding="utf-8", newline="\n")
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if self._groups_file is not None:
            self._groups_file.close()
            self._groups_file = None
        if exc_type is not None:
            logger.warning("dataset %s left incomplete (no %s) after %s", self.root, DATASET_FILE, exc_type.__name__)
            return
        self.meta["groups"] = self.n_groups
        text = json.dumps(self.meta, indent=2, sort_keys=False) + "\n"
        (self.root / DATASET_FILE).write_text(text, encoding="utf-8")
        logger.info("wrote %d groups to %s", self.n_groups, self.root)

    def _prepare_root(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise DatasetFormatError(f"{self.root}: exists and is not a folder")
        self.root.mkdir(parents=True, exist_ok=True)
        entries = list(self.root.iterdir())
        if not entries:
            return
        if not self.overwrite:
            raise DatasetFormatError(f"{self.root}: folder is not empty; choose an empty folder or pass overwrite=True")
        names = {e.name for e in entries}
        if not names & {DATASET_FILE, GROUPS_FILE}:
            # overwrite=True replaces a dataset; it never empties an arbitrary folder.
            raise DatasetFormatError(
                f"{self.root}: folder is not empty and holds no {DATASET_FILE} or {GROUPS_FILE}; "
                "refusing to overwrite what does not look like a dataset"
            )
        for e in entries:
            if e.name in (DATASET_FILE, GROUPS_FILE):
                e.unlink()
            elif e.is_dir() and _GROUP_DIR.match(e.name):
                shutil.rmtree(e)
        logger.info("overwriting dataset in %s", self.root)

    def _resume_root(self) -> int:
        """Keep the whole groups of an interrupted run in `root`; returns how many there are."""
        if self.root.exists() and not self.root.is_dir():
            raise DatasetFormatError(f"{self.root}: exists and is not a folder")
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / GROUPS_FILE
        records = self._read_records(path) if path.is_file() else []
        # A dataset being written has no dataset.json; this writer's clean exit writes it anew.
        (self.root / DATASET_FILE).unlink(missing_ok=True)
        if records:
            logger.info("resuming the dataset in %s after its %d groups", self.root, len(records))
        return len(records)

    def _read_records(self, path: Path) -> List[Any]:
        """The groups in `path`, each checked to be the next group of a dataset with these maps."""
        ids = (f"{n:06d}" for n in itertools.count())

        def check(record: Any) -> None:
            gid = next(ids)
            items = record.get("items") if isinstance(record, dict) else None
            if not isinstance(record, dict) or record.get("id") != gid:
                raise ValueError(f"expected group {gid!r} of a dataset this writer began")
            if not isinstance(items, list) or any(
                not isinstance(i, dict) or set(i.get("maps", ())) != set(self.maps) for i in items
            ):
                raise ValueError(f"expected items with the maps {self.maps}")

        try:
            return read_jsonl(path, check, repair=True)
        except JsonLinesError as err:
            raise DatasetFormatError(f"{self.root}: cannot resume this dataset: {err}") from None

    def add_group(
        self,
        caption: str,
        items: Iterable[Tuple[ArrayLike, Mapping[str, ArrayLike]]],
        source: Optional[str] = None,
    ) -> str:
        """Write one group of (image, {map: array}) items; returns its id. `source`, where the
        group came from (a photo folder's group), is kept in its line."""
        if self._groups_file is None:
            raise RuntimeError("DatasetWriter.add_group called outside its `with` block")
        items = list(items)
        gid = f"{self.n_groups:06d}"
        if not items:
            raise DatasetFormatError(f"group {gid}: expected at least 1 item, got none")
        prepared = []
        for k, (image, maps) in enumerate(items):
            img = _to_uint8(image, f"group {gid} item {k} image")
            if img.ndim != 3:
                raise DatasetFormatError(f"group {gid} item {k} image: expected HxWx3, got shape {img.shape}")
            if set(maps) != set(self.maps):
                raise DatasetFormatError(f"group {gid} item {k}: expected maps {sorted(self.maps)}, got {sorted(maps)}")
            arrs = {m: _to_uint8(maps[m], f"group {gid} item {k} map {m!r}") for m in self.maps}
            for m, a in arrs.items():
                if a.shape[:2] != img.shape[:2]:
                    raise DatasetFormatError(
                        f"group {gid} item {k} map {m!r}: size {a.shape[:2]} differs from image {img.shape[:2]}"
                    )
            prepared.append((img, arrs))
        # Validate everything before touching the disk so a bad group leaves no files. A resumed
        # writer rewrites the files a killed run left of a group it had not recorded.
        (self.root / gid).mkdir(exist_ok=self.resume)
        record_items = []
        for k, (img, arrs) in enumerate(prepared):
            rel_img = f"{gid}/{k}.png"
            _save_png(img, self.root / rel_img)
            rel_maps = {}
            for m in self.maps:
                rel = f"{gid}/{k}_{m}.png"
                _save_png(arrs[m], self.root / rel)
                rel_maps[m] = rel
            record_items.append({IMAGE_KEY: rel_img, "maps": rel_maps})
        record = {"id": gid, "caption": caption, "items": record_items}
        if source is not None:
            record["source"] = source
        self._groups_file.write(json.dumps(record) + "\n")
        if self.resume:
            # The line, written after the group's files, marks the group done: flushed and synced at
            # once, so a kill (or a crash) after it never costs that group again.
            self._groups_file.flush()
            os.fsync(self._groups_file.fileno())
        self.n_groups += 1
        return gid


def _save_png(arr: np.ndarray, path: Path) -> None:
    mode = "L" if arr.ndim == 2 else "RGB"
    # Fixed settings and no metadata chunks keep the bytes reproducible.
    Image.fromarray(arr, mode=mode).save(path, format="PNG", compress_level=3)


@dataclass(frozen=True)
class Task:
    """A translation task: `map` forward (image → map) or inverse (map → image)."""

    name: str
    map: str
    inverse: bool

    @property
    def source(self) -> str:
        """`"image"` or the map name the task reads."""
        return self.map if self.inverse else IMAGE_KEY

    @property
    def target(self) -> str:
        """`"image"` or the map name the task produces."""
        return IMAGE_KEY if self.inverse else self.map

    def paths(self, item: GroupItem) -> Tuple[Path, Path]:
        """(source, target) files of `item` for this task."""
        return item.path(self.source), item.path(self.target)


def dataset_tasks(maps: Iterable[str]) -> List[str]:
    """Every task the maps make: each map forward, then each inverse."""
    maps = list(maps)
    return maps + [INVERSE_PREFIX + m for m in maps]


def parse_task(name: str, available_maps: Iterable[str]) -> Task:
    """`"depth"` → image→depth; `"inv_depth"` → depth→image."""
    available = list(available_maps)
    inverse = name.startswith(INVERSE_PREFIX)
    map_name = name[len(INVERSE_PREFIX) :] if inverse else name
    if map_name not in available:
        tasks = dataset_tasks(available)
        raise DatasetFormatError(
            f"unknown task {name!r}: map {map_name!r} is not among the available maps {available}; "
            f"valid tasks are {tasks}"
        )
    return Task(name=name, map=map_name, inverse=inverse)
