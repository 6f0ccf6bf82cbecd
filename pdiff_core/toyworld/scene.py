"""Scene description and seeded sampling of the procedural world.

A *group* fixes what the caption talks about (objects, their colours and
materials, the floor); each *item* of the group re-samples what the caption is
silent about (camera, light, sky, small moves of the objects).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

SHAPES = ("sphere", "box", "cylinder", "cone")
FLOOR_PATTERNS = ("checkered", "striped", "plain", "noise")

# ADE20K (SceneParse150, mmsegmentation order) classes and palette colours, so
# the seg maps read like those of the ControlNet/UniFormer annotator.
SEG_CLASSES: Dict[str, Tuple[str, int, Tuple[int, int, int]]] = {
    # key: (ADE20K class name, class index, RGB)
    "sky": ("sky", 2, (6, 230, 230)),
    "floor": ("floor", 3, (80, 50, 50)),
    "sphere": ("ball", 119, (255, 0, 163)),
    "box": ("box", 41, (0, 255, 20)),
    "cylinder": ("column", 42, (255, 8, 41)),
    "cone": ("tent", 114, (112, 224, 255)),
}

# sRGB base colours of objects, by the name used in captions.
OBJECT_COLORS: Dict[str, Tuple[float, float, float]] = {
    "red": (0.80, 0.10, 0.09),
    "green": (0.13, 0.62, 0.20),
    "blue": (0.10, 0.27, 0.82),
    "yellow": (0.93, 0.80, 0.12),
    "orange": (0.96, 0.46, 0.08),
    "purple": (0.50, 0.18, 0.72),
    "cyan": (0.10, 0.72, 0.80),
    "pink": (0.96, 0.52, 0.68),
    "white": (0.92, 0.92, 0.90),
    "gray": (0.48, 0.48, 0.50),
    "brown": (0.47, 0.29, 0.14),
}

# Floor colour pairs (light, dark) and the names of plain floors.
FLOOR_PAIRS: Tuple[Tuple[Tuple[float, float, float], Tuple[float, float, float]], ...] = (
    ((0.86, 0.86, 0.83), (0.22, 0.22, 0.24)),
    ((0.84, 0.74, 0.56), (0.46, 0.32, 0.20)),
    ((0.72, 0.79, 0.86), (0.30, 0.38, 0.52)),
    ((0.76, 0.82, 0.66), (0.34, 0.46, 0.30)),
    ((0.90, 0.80, 0.78), (0.55, 0.30, 0.30)),
    ((0.66, 0.66, 0.66), (0.42, 0.42, 0.44)),
)
PLAIN_FLOORS: Dict[str, Tuple[float, float, float]] = {
    "beige": (0.80, 0.72, 0.58),
    "gray": (0.56, 0.56, 0.57),
    "white": (0.88, 0.88, 0.86),
    "green": (0.36, 0.56, 0.32),
    "brown": (0.52, 0.36, 0.22),
    "blue": (0.42, 0.52, 0.68),
}

_COUNT_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}


@dataclass(frozen=True)
class Primitive:
    """An object standing on the floor (its base at y=0), in world units.

    `radius` is the half-width in x (sphere/cylinder/cone radius);
    `aspect` scales a box's z half-width; `height` is the full height.
    """

    shape: str
    position: Tuple[float, float]
    radius: float
    height: float
    color: Tuple[float, float, float]
    color_name: str = ""
    shiny: bool = False
    yaw: float = 0.0
    aspect: float = 1.0

    @property
    def footprint(self) -> float:
        """Radius of the circle covering the object seen from above."""
        if self.shape == "box":
            return self.radius * math.hypot(1.0, self.aspect)
        return self.radius

    @property
    def noun(self) -> str:
        if self.shape == "box":
            cube = abs(self.aspect - 1.0) < 1e-6 and abs(self.height - 2 * self.radius) < 1e-6
            return "cube" if cube else "box"
        return self.shape


@dataclass(frozen=True)
class Ground:
    """The floor plane y=0 and its texture (sRGB colours)."""

    pattern: str
    color_a: Tuple[float, float, float]
    color_b: Tuple[float, float, float]
    scale: float = 1.0
    angle: float = 0.0
    color_name: str = ""
    noise_seed: int = 0


@dataclass(frozen=True)
class Camera:
    """Orbit camera looking at `target`; angles in degrees."""

    elevation: float
    azimuth: float
    distance: float
    fov: float = 40.0
    target: Tuple[float, float, float] = (0.0, 0.4, 0.0)

    @property
    def position(self) -> np.ndarray:
        el, az = math.radians(self.elevation), math.radians(self.azimuth)
        offset = np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
        return np.asarray(self.target, dtype=np.float64) + self.distance * offset

    def basis(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(right, up, forward) unit vectors in world space."""
        forward = np.asarray(self.target, dtype=np.float64) - self.position
        forward /= np.linalg.norm(forward)
        # From the azimuth rather than cross(forward, world up): stays defined looking straight down.
        az = math.radians(self.azimuth)
        right = np.array([math.cos(az), 0.0, -math.sin(az)])
        up = np.cross(right, forward)
        return right, up, forward


@dataclass(frozen=True)
class Light:
    """A sun (directional light), ambient sky light and the sky gradient."""

    elevation: float
    azimuth: float
    color: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    ambient: float = 0.35
    sky_zenith: Tuple[float, float, float] = (0.35, 0.55, 0.85)
    sky_horizon: Tuple[float, float, float] = (0.78, 0.84, 0.92)

    @property
    def direction(self) -> np.ndarray:
        """Unit vector from a surface point towards the sun."""
        el, az = math.radians(self.elevation), math.radians(self.azimuth)
        return np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])


@dataclass(frozen=True)
class Scene:
    objects: Tuple[Primitive, ...]
    ground: Ground
    camera: Camera
    light: Light


@dataclass(frozen=True)
class GroupSpec:
    """What a group's items share: objects (with a base layout) and floor."""

    objects: Tuple[Primitive, ...]
    ground: Ground

    @property
    def caption(self) -> str:
        return make_caption(self.objects, self.ground)


def _describe(obj: Primitive, large: float, small: float) -> str:
    words = []
    if obj.radius >= large:
        words.append("large")
    elif obj.radius <= small:
        words.append("small")
    if obj.shiny:
        words.append("shiny")
    words.append(obj.color_name)
    return " ".join(w for w in words if w) + " " + obj.noun


def _plural(noun_phrase: str) -> str:
    head, _, noun = noun_phrase.rpartition(" ")
    plural = noun + ("es" if noun.endswith("x") else "s")
    return f"{head} {plural}" if head else plural


def make_caption(objects: Sequence[Primitive], ground: Ground) -> str:
    """E.g. "a red sphere and two blue cubes on a checkered floor"."""
    counts: Dict[str, int] = {}
    for obj in objects:
        d = _describe(obj, large=0.62, small=0.36)
        counts[d] = counts.get(d, 0) + 1
    phrases = []
    for d, n in counts.items():
        if n == 1:
            phrases.append(("an " if d[0] in "aeiou" else "a ") + d)
        else:
            phrases.append(f"{_COUNT_WORDS.get(n, str(n))} {_plural(d)}")
    if len(phrases) == 1:
        subject = phrases[0]
    else:
        subject = ", ".join(phrases[:-1]) + " and " + phrases[-1]
    floor = {
        "checkered": "a checkered floor",
        "striped": "a striped floor",
        "noise": "a mottled floor",
        "plain": f"a plain {ground.color_name} floor" if ground.color_name else "a plain floor",
    }[ground.pattern]
    return f"{subject} on {floor}"


def _sample_primitive(rng: np.random.Generator) -> Primitive:
    shape = SHAPES[rng.integers(len(SHAPES))]
    color_name = list(OBJECT_COLORS)[rng.integers(len(OBJECT_COLORS))]
    radius = float(rng.uniform(0.3, 0.7))
    aspect = 1.0
    if shape == "sphere":
        height = 2 * radius
    elif shape == "box":
        if rng.random() < 0.6:
            height = 2 * radius  # a cube
        else:
            height = float(rng.uniform(0.5, 2.2)) * radius
            aspect = float(rng.uniform(0.6, 1.6))
    elif shape == "cylinder":
        height = float(rng.uniform(1.0, 3.0)) * radius
    else:
        height = float(rng.uniform(1.6, 3.2)) * radius
    return Primitive(
        shape=shape,
        position=(0.0, 0.0),
        radius=radius,
        height=height,
        color=OBJECT_COLORS[color_name],
        color_name=color_name,
        shiny=bool(rng.random() < 0.4),
        yaw=float(rng.uniform(0, 2 * math.pi)),
        aspect=aspect,
    )


def _place(
    rng: np.random.Generator, objs: Sequence[Primitive], area: float, tries: int = 200
) -> Optional[List[Tuple[float, float]]]:
    """Non-overlapping floor positions in a disc of radius `area`, or None."""
    placed: List[Tuple[float, float, float]] = []
    for obj in objs:
        for _ in range(tries):
            r = area * math.sqrt(rng.random())
            a = rng.uniform(0, 2 * math.pi)
            x, z = r * math.cos(a), r * math.sin(a)
            if all(math.hypot(x - px, z - pz) > obj.footprint + pr + 0.08 for px, pz, pr in placed):
                placed.append((x, z, obj.footprint))
                break
        else:
            return None
    return [(x, z) for x, z, _ in placed]


def sample_group(rng: np.random.Generator, max_objects: int = 4) -> GroupSpec:
    """Draw the shared part of a group: objects, base layout, floor."""
    n = int(rng.choice(np.arange(1, max_objects + 1), p=_count_weights(max_objects)))
    while True:
        objs = [_sample_primitive(rng) for _ in range(n)]
        pos = _place(rng, objs, area=0.8 + 0.3 * n)
        if pos is not None:
            break
    objs = [replace(o, position=p) for o, p in zip(objs, pos)]
    pattern = FLOOR_PATTERNS[rng.integers(len(FLOOR_PATTERNS))]
    light, dark = FLOOR_PAIRS[rng.integers(len(FLOOR_PAIRS))]
    name = ""
    if pattern == "plain":
        name = list(PLAIN_FLOORS)[rng.integers(len(PLAIN_FLOORS))]
        light = dark = PLAIN_FLOORS[name]
    ground = Ground(
        pattern=pattern,
        color_a=light,
        color_b=dark,
        scale=float(rng.uniform(0.5, 1.2)),
        angle=float(rng.uniform(0, math.pi)),
        color_name=name,
        noise_seed=int(rng.integers(2**31)),
    )
    return GroupSpec(objects=tuple(objs), ground=ground)


def _count_weights(max_objects: int) -> np.ndarray:
    w = np.array([1.0, 1.6, 1.4, 0.9, 0.6, 0.4][:max_objects])
    return w / w.sum()


def sample_item(rng: np.random.Generator, spec: GroupSpec, jitter: float = 0.25) -> Scene:
    """One view of a group: jittered layout, new camera, light and sky."""
    objs = list(spec.objects)
    for _ in range(50):
        moved = [
            replace(
                o,
                position=(o.position[0] + rng.uniform(-jitter, jitter), o.position[1] + rng.uniform(-jitter, jitter)),
                yaw=o.yaw + float(rng.uniform(-0.4, 0.4)),
            )
            for o in spec.objects
        ]
        if all(
            math.hypot(a.position[0] - b.position[0], a.position[1] - b.position[1]) > a.footprint + b.footprint + 0.02
            for i, a in enumerate(moved)
            for b in moved[i + 1 :]
        ):
            objs = moved
            break
    extent = max(math.hypot(*o.position) + o.footprint for o in objs)
    fov = float(rng.uniform(36, 48))
    # Frame the layout: its extent fills about the view, at times cut at the border.
    fill = float(rng.uniform(0.85, 1.2))
    distance = max(2.5, extent / (fill * math.tan(math.radians(fov / 2))))
    camera = Camera(
        elevation=float(rng.uniform(8, 60)),
        azimuth=float(rng.uniform(0, 360)),
        distance=distance,
        fov=fov,
        target=(float(rng.uniform(-0.2, 0.2)), float(rng.uniform(0.2, 0.6)), float(rng.uniform(-0.2, 0.2))),
    )
    warmth = float(rng.uniform(-1, 1))
    tint = np.array([1.0 + 0.12 * warmth, 1.0, 1.0 - 0.18 * warmth])
    intensity = float(rng.uniform(0.95, 1.35))
    overcast = float(rng.uniform(0, 0.6))
    zenith = (1 - overcast) * np.array([0.30, 0.52, 0.88]) + overcast * np.array([0.62, 0.64, 0.68])
    horizon = (1 - overcast) * np.array([0.80, 0.86, 0.94]) + overcast * np.array([0.82, 0.82, 0.82])
    light = Light(
        elevation=float(rng.uniform(25, 75)),
        azimuth=float(rng.uniform(0, 360)),
        color=tuple(float(c) for c in intensity * tint),
        ambient=float(rng.uniform(0.25, 0.45)),
        sky_zenith=tuple(float(c) for c in np.clip(zenith * (0.9 + 0.1 * tint), 0, 1)),
        sky_horizon=tuple(float(c) for c in np.clip(horizon * (0.92 + 0.08 * tint), 0, 1)),
    )
    return Scene(objects=tuple(objs), ground=spec.ground, camera=camera, light=light)
