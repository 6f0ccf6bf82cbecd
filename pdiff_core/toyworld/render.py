"""Vectorised numpy ray caster for `pdiff_core.toyworld` scenes.

Every pixel's primary ray goes through the pixel centre; the exact maps (depth,
normals, seg, albedo, edges) come from those rays. The shaded image is
anti-aliased adaptively: pixels on edges and colour steps are re-shaded with
`supersample` x `supersample` rays; that does not change the maps.

Conventions:
- world: y up, the floor is the plane y=0;
- `Render.depth` is z-depth (distance along the camera's forward axis), inf on sky;
- the depth map is inverse depth normalised per image to [0, 255], near = bright,
  sky = 0 (like MiDaS/ControlNet depth maps);
- the normal map is camera space, x right → R, y up → G, towards the camera → B,
  encoded as (n + 1) / 2 * 255; sky = 0;
- `object_id`: -1 sky, 0 floor, k + 1 for `scene.objects[k]`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

from .scene import SEG_CLASSES, Ground, Primitive, Scene

# The first six are the original family; the rest widen the family of trained tasks so that a model
# has to read the example pair to know which one is asked (see the embedded model's card).
ALL_MAPS = (
    "depth",
    "hed",
    "seg",
    "normal",
    "albedo",
    "gray",
    "shading",
    "instance",
    "far",
    "edges",
    "quant",
    "invert",
    "bgr",
)
# Object colours of the instance map, in the scene's object order (sky black, floor mid grey).
INSTANCE_COLORS = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
)
_INSTANCE_SKY, _INSTANCE_FLOOR = (0, 0, 0), (128, 128, 128)
_QUANT_LEVELS = 3

_EPS = 1e-6
_OFFSET = 1e-3  # shadow-ray start offset along the normal, in world units
_FOG_DISTANCE = 80.0
_AA_CONTRAST = 0.06  # sRGB step between neighbours that triggers supersampling
_HED_NORMAL_COS = math.cos(math.radians(30))
_HED_DISPARITY_CURVE = 0.12

_SRGB_GAMMA = 2.2


@dataclass
class Render:
    """Float buffers of one render; the uint8 maps are built on demand."""

    image: np.ndarray  # HxWx3 uint8, shaded
    depth: np.ndarray  # HxW float64 z-depth, inf on sky
    distance: np.ndarray  # HxW float64 distance along the ray, inf on sky
    object_id: np.ndarray  # HxW int16
    normal: np.ndarray  # HxWx3 float64 world-space unit normals, 0 on sky
    normal_camera: np.ndarray  # HxWx3 float64 camera-space unit normals, 0 on sky
    albedo: np.ndarray  # HxWx3 float64 sRGB base colour in [0, 1]
    seg_classes: Tuple[str, ...]  # seg key per object id + 1 (index 0 = sky)

    def maps(self, names: Sequence[str] = ALL_MAPS) -> Dict[str, np.ndarray]:
        """The requested uint8 maps (HxW for depth/hed/gray, HxWx3 otherwise)."""
        builders: Dict[str, Callable[[], np.ndarray]] = {
            "depth": self.depth_map,
            "hed": self.hed_map,
            "seg": self.seg_map,
            "normal": self.normal_map,
            "albedo": self.albedo_map,
            "gray": self.gray_map,
            "shading": self.shading_map,
            "instance": self.instance_map,
            "far": self.far_map,
            "edges": self.edges_map,
            "quant": self.quant_map,
            "invert": self.invert_map,
            "bgr": self.bgr_map,
        }
        unknown = [n for n in names if n not in builders]
        if unknown:
            raise ValueError(f"unknown toyworld map(s) {unknown}; available: {list(builders)}")
        return {n: builders[n]() for n in names}

    def depth_map(self) -> np.ndarray:
        finite = np.isfinite(self.depth)
        out = np.zeros(self.depth.shape, dtype=np.uint8)
        if not finite.any():
            return out
        disp = 1.0 / self.depth[finite]
        lo, hi = disp.min(), disp.max()
        scaled = (disp - lo) / max(hi - lo, 1e-12)
        out[finite] = np.round(scaled * 255).astype(np.uint8)
        return out

    def normal_map(self) -> np.ndarray:
        out = np.round((self.normal_camera + 1.0) * 127.5).astype(np.uint8)
        out[self.object_id < 0] = 0
        return out

    def seg_map(self) -> np.ndarray:
        palette = np.array([SEG_CLASSES[k][2] for k in self.seg_classes], dtype=np.uint8)
        return palette[self.object_id.astype(np.int64) + 1]

    def albedo_map(self) -> np.ndarray:
        return _to_uint8(self.albedo)

    def gray_map(self) -> np.ndarray:
        rgb = self.image.astype(np.float64)
        # ITU-R BT.601 luma, as PIL's convert("L").
        return np.round(_dot(rgb, np.array([0.299, 0.587, 0.114]))).clip(0, 255).astype(np.uint8)

    def hed_map(self) -> np.ndarray:
        return _hed(self)

    def shading_map(self) -> np.ndarray:
        """Light without colour: the luminance of the shaded image over that of its albedo (linear
        light, halved so that typical lit surfaces (ratio 0.7 to 1.6) stay below white, shown in
        sRGB); the sky is white."""
        lum = np.array([0.2126, 0.7152, 0.0722])
        shaded = _dot(_srgb_to_linear(self.image / 255.0), lum)
        base = _dot(_srgb_to_linear(self.albedo), lum)
        out = _to_uint8(_linear_to_srgb(np.clip(0.5 * shaded / np.maximum(base, 1e-3), 0.0, 1.0)))
        out[self.object_id < 0] = 255
        return out

    def instance_map(self) -> np.ndarray:
        """One flat colour per object, in scene order (INSTANCE_COLORS), whatever its class."""
        n_objects = int(self.object_id.max()) if self.object_id.size else 0
        colors = [INSTANCE_COLORS[k % len(INSTANCE_COLORS)] for k in range(max(n_objects, 0))]
        palette = np.array([_INSTANCE_SKY, _INSTANCE_FLOOR, *colors], dtype=np.uint8)
        return palette[self.object_id.astype(np.int64) + 1]

    def far_map(self) -> np.ndarray:
        """The depth map inverted: far (and the sky) bright, near dark."""
        return 255 - self.depth_map()

    def edges_map(self) -> np.ndarray:
        """Thin, hard object outlines: white where a 4-neighbour belongs to another object."""
        ids = self.object_id
        edge = np.zeros(ids.shape, dtype=bool)
        for axis in (0, 1):
            sa, sb = _shifted(axis, 2)
            step = ids[sa] != ids[sb]
            edge[sa] |= step
            edge[sb] |= step
        return edge.astype(np.uint8) * 255

    def quant_map(self) -> np.ndarray:
        """The image posterised to three levels per channel."""
        step = 255 / (_QUANT_LEVELS - 1)
        return (np.round(self.image / step) * step).round().astype(np.uint8)

    def invert_map(self) -> np.ndarray:
        """The colour negative of the image."""
        return 255 - self.image

    def bgr_map(self) -> np.ndarray:
        """The image with its red and blue channels swapped."""
        return np.ascontiguousarray(self.image[..., ::-1])


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0.0, 1.0) * 255).astype(np.uint8)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dot product over the last axis (broadcasting)."""
    return np.einsum("...i,...i->...", a, b)


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


# --- ray/primitive intersections, in the object's local frame (base at origin, y up)


def _hit_sphere(o: np.ndarray, d: np.ndarray, obj: Primitive) -> Tuple[np.ndarray, np.ndarray]:
    r = obj.radius
    oc = o - np.array([0.0, r, 0.0])
    b = _dot(oc, d)
    c = _dot(oc, oc) - r * r
    disc = b * b - c
    sq = np.sqrt(np.maximum(disc, 0.0))
    t0, t1 = -b - sq, -b + sq
    t = np.where(t0 > _EPS, t0, np.where(t1 > _EPS, t1, np.inf))
    t[disc < 0] = np.inf
    n = (oc + np.where(np.isfinite(t), t, 0.0)[:, None] * d) / r
    return t, n


def _hit_box(o: np.ndarray, d: np.ndarray, obj: Primitive) -> Tuple[np.ndarray, np.ndarray]:
    half = np.array([obj.radius, obj.height / 2, obj.radius * obj.aspect])
    lo, hi = np.array([-half[0], 0.0, -half[2]]), np.array([half[0], obj.height, half[2]])
    safe = np.where(np.abs(d) < 1e-12, 1e-12, d)
    t1, t2 = (lo - o) / safe, (hi - o) / safe
    tmin, tmax = np.minimum(t1, t2), np.maximum(t1, t2)
    axis = np.argmax(tmin, axis=1)
    rows = np.arange(len(d))
    tn, tf = tmin[rows, axis], tmax.min(axis=1)
    t = np.where((tn <= tf) & (tn > _EPS), tn, np.inf)
    n = np.zeros_like(d)
    n[rows, axis] = -np.sign(d[rows, axis])
    return t, n


def _hit_cylinder(o: np.ndarray, d: np.ndarray, obj: Primitive) -> Tuple[np.ndarray, np.ndarray]:
    r, h = obj.radius, obj.height
    ox, oy, oz = o[:, 0], o[:, 1], o[:, 2]
    dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]
    a = dx * dx + dz * dz
    b = ox * dx + oz * dz
    c = ox * ox + oz * oz - r * r
    disc = b * b - a * c
    with np.errstate(divide="ignore", invalid="ignore"):
        ts = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
        ys = oy + ts * dy
        side_ok = (disc >= 0) & (a > 1e-12) & (ts > _EPS) & (ys >= 0) & (ys <= h)
        ts = np.where(side_ok, ts, np.inf)
        tc = (h - oy) / np.where(np.abs(dy) < 1e-12, 1e-12, dy)
    cx, cz = ox + tc * dx, oz + tc * dz
    tc = np.where((tc > _EPS) & (cx * cx + cz * cz <= r * r), tc, np.inf)
    cap = tc < ts
    t = np.minimum(ts, tc)
    p = o + np.where(np.isfinite(t), t, 0.0)[:, None] * d
    side_n = np.stack([p[:, 0] / r, np.zeros_like(t), p[:, 2] / r], axis=1)
    n = np.where(cap[:, None], np.array([0.0, 1.0, 0.0]), side_n)
    return t, n


def _hit_cone(o: np.ndarray, d: np.ndarray, obj: Primitive) -> Tuple[np.ndarray, np.ndarray]:
    # Base (radius r) on the floor, apex at y=h: x² + z² = k²(h - y)², 0 <= y <= h.
    r, h = obj.radius, obj.height
    k2 = (r / h) ** 2
    ox, oy, oz = o[:, 0], o[:, 1], o[:, 2]
    dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]
    a = dx * dx + dz * dz - k2 * dy * dy
    b = ox * dx + oz * dz + k2 * (h - oy) * dy
    c = ox * ox + oz * oz - k2 * (h - oy) ** 2
    disc = b * b - a * c
    sq = np.sqrt(np.maximum(disc, 0.0))
    safe_a = np.where(np.abs(a) < 1e-12, 1e-12, a)
    t = np.full(len(d), np.inf)
    for root in ((-b - sq) / safe_a, (-b + sq) / safe_a):
        y = oy + root * dy
        ok = (disc >= 0) & (root > _EPS) & (y >= 0) & (y <= h) & (root < t)
        t = np.where(ok, root, t)
    p = o + np.where(np.isfinite(t), t, 0.0)[:, None] * d
    n = _normalize(np.stack([p[:, 0], np.sqrt(k2) * np.hypot(p[:, 0], p[:, 2]), p[:, 2]], axis=1))
    return t, n


_HIT = {"sphere": _hit_sphere, "box": _hit_box, "cylinder": _hit_cylinder, "cone": _hit_cone}


def _intersect_objects(
    objects: Sequence[Primitive], o: np.ndarray, d: np.ndarray, want_normals: bool = True
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest object hit of each ray: (t, object index or -1, world normal)."""
    n_rays = len(d)
    t = np.full(n_rays, np.inf)
    ids = np.full(n_rays, -1, dtype=np.int16)
    normals = np.zeros((n_rays, 3)) if want_normals else np.empty((0, 3))
    o = np.broadcast_to(o, d.shape)
    for k, obj in enumerate(objects):
        px, pz = obj.position
        # Bounding-sphere test first: objects cover a small part of the view.
        half_h = obj.height / 2
        centre = np.array([px, half_h, pz])
        bound = math.hypot(obj.footprint, half_h) * 1.001
        oc = o - centre
        b = _dot(oc, d)
        disc = b * b - (_dot(oc, oc) - bound * bound)
        idx = np.nonzero((disc > 0) & (-b + np.sqrt(np.maximum(disc, 0.0)) > _EPS))[0]
        if idx.size == 0:
            continue
        cos_y, sin_y = math.cos(obj.yaw), math.sin(obj.yaw)
        # World → local: translate, then rotate by -yaw about y.
        ol = oc[idx] + np.array([0.0, half_h, 0.0])
        dl = d[idx]
        ol = np.stack([cos_y * ol[:, 0] - sin_y * ol[:, 2], ol[:, 1], sin_y * ol[:, 0] + cos_y * ol[:, 2]], axis=1)
        dl = np.stack([cos_y * dl[:, 0] - sin_y * dl[:, 2], dl[:, 1], sin_y * dl[:, 0] + cos_y * dl[:, 2]], axis=1)
        tk, nk = _HIT[obj.shape](ol, dl, obj)
        better = tk < t[idx]
        win = idx[better]
        t[win] = tk[better]
        ids[win] = k
        if want_normals:
            nb = nk[better]
            normals[win] = np.stack(
                [cos_y * nb[:, 0] + sin_y * nb[:, 2], nb[:, 1], -sin_y * nb[:, 0] + cos_y * nb[:, 2]], axis=1
            )
    return t, ids, normals


# --- floor texture and sky


def _smooth_noise(x: np.ndarray, z: np.ndarray, seed: int) -> np.ndarray:
    """Two-octave value noise in [0, 1], tiling every 16 lattice cells."""
    table = np.random.default_rng(seed).random((2, 16, 16))
    out = np.zeros_like(x)
    for octave, (freq, amp) in enumerate(((1.0, 0.65), (2.7, 0.35))):
        u, v = x * freq, z * freq
        iu, iv = np.floor(u), np.floor(v)
        fu, fv = u - iu, v - iv
        fu, fv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)
        i0, j0 = iu.astype(np.int64) % 16, iv.astype(np.int64) % 16
        i1, j1 = (i0 + 1) % 16, (j0 + 1) % 16
        tab = table[octave]
        top = tab[i0, j0] * (1 - fu) + tab[i1, j0] * fu
        bot = tab[i0, j1] * (1 - fu) + tab[i1, j1] * fu
        out += amp * (top * (1 - fv) + bot * fv)
    return out


def _floor_albedo(ground: Ground, p: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Linear floor colour at points `p`. Patterns fade to their mean where a
    pixel covers about a stripe or more, which prevents moiré near the horizon."""
    a, b = _srgb_to_linear(np.array(ground.color_a)), _srgb_to_linear(np.array(ground.color_b))
    x, z = p[:, 0] / ground.scale, p[:, 2] / ground.scale
    if ground.pattern == "plain":
        return np.broadcast_to(a, p.shape).copy()
    if ground.pattern == "noise":
        mix = _smooth_noise(x, z, ground.noise_seed)
    else:
        if ground.pattern == "checkered":
            parity = (np.floor(x) + np.floor(z)) % 2
        else:
            u = x * math.cos(ground.angle) + z * math.sin(ground.angle)
            parity = np.floor(u * 2) % 2  # stripes half as wide as checks
        contrast = np.clip(1.5 - footprint / (0.5 * ground.scale), 0.0, 1.0)
        mix = 0.5 + (parity - 0.5) * contrast
    return a + (b - a) * mix[:, None]


def _sky(scene: Scene, d: np.ndarray) -> np.ndarray:
    """Linear sky colour along directions `d`."""
    zen = _srgb_to_linear(np.array(scene.light.sky_zenith))
    hor = _srgb_to_linear(np.array(scene.light.sky_horizon))
    w = np.sqrt(np.clip(d[:, 1], 0.0, 1.0))[:, None]
    return hor + (zen - hor) * w


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.power(np.clip(c, 0.0, 1.0), _SRGB_GAMMA)


def _linear_to_srgb(c: np.ndarray) -> np.ndarray:
    return np.power(np.clip(c, 0.0, 1.0), 1.0 / _SRGB_GAMMA)


# --- rendering


def _ray_dirs(scene: Scene, resolution: int, py: np.ndarray, px: np.ndarray) -> np.ndarray:
    """Unit world directions through image coordinates (py, px), in pixels from
    the top-left corner; any matching shapes, flattened to (N, 3)."""
    right, up, forward = scene.camera.basis()
    half = math.tan(math.radians(scene.camera.fov) / 2)
    u = ((px / resolution) * 2 - 1).reshape(-1, 1) * half
    v = (1 - (py / resolution) * 2).reshape(-1, 1) * half
    return _normalize(forward + u * right + v * up)


@dataclass
class _Hits:
    t: np.ndarray
    ids: np.ndarray  # -1 sky, 0 floor, k + 1 object k
    normal: np.ndarray
    point: np.ndarray


def _trace(scene: Scene, origin: np.ndarray, d: np.ndarray) -> _Hits:
    t, ids, normal = _intersect_objects(scene.objects, origin, d)
    ids = ids + 1
    with np.errstate(divide="ignore"):
        tg = np.where(d[:, 1] < -1e-9, -origin[1] / d[:, 1], np.inf)
    floor = (tg < t) & (tg > _EPS)
    t = np.where(floor, tg, t)
    ids[floor] = 0
    normal[floor] = (0.0, 1.0, 0.0)
    ids[~np.isfinite(t)] = -1
    point = origin + np.where(np.isfinite(t), t, 0.0)[:, None] * d
    return _Hits(t=t, ids=ids, normal=normal, point=point)


def _albedo(scene: Scene, hits: _Hits, d: np.ndarray, pixel_angle: float) -> np.ndarray:
    """Linear base colour per ray (the sky counts as its own colour)."""
    albedo = np.empty((len(d), 3))
    sky = hits.ids < 0
    if sky.any():
        albedo[sky] = _sky(scene, d[sky])
    floor = hits.ids == 0
    if floor.any():
        footprint = hits.t[floor] * pixel_angle / np.maximum(-d[floor, 1], 0.05)
        albedo[floor] = _floor_albedo(scene.ground, hits.point[floor], footprint)
    for k, obj in enumerate(scene.objects):
        albedo[hits.ids == k + 1] = _srgb_to_linear(np.array(obj.color))
    return albedo


def _shade(scene: Scene, hits: _Hits, d: np.ndarray, albedo: np.ndarray) -> np.ndarray:
    """Linear colour: Lambert + Blinn-Phong (shiny objects), hard shadows,
    hemispheric sky ambient and distance fog."""
    light = scene.light
    ldir = light.direction
    lcol = np.array(light.color)
    out = albedo.copy()  # the sky is its albedo
    surf = np.nonzero(hits.ids >= 0)[0]
    if surf.size == 0:
        return out
    n = hits.normal[surf]
    ndl = np.maximum(_dot(n, ldir), 0.0)
    lit = np.nonzero(ndl > 0)[0]
    if scene.objects and lit.size:
        origins = hits.point[surf[lit]] + _OFFSET * n[lit]
        ts, _, _ = _intersect_objects(scene.objects, origins, np.broadcast_to(ldir, origins.shape), want_normals=False)
        ndl[lit[np.isfinite(ts)]] = 0.0
    sky_amb = _srgb_to_linear(np.array(light.sky_zenith))
    bounce = _srgb_to_linear(np.array(scene.ground.color_a))
    # Hemispheric ambient: sky colour from above, floor bounce from below.
    up = 0.5 + 0.5 * n[:, 1:2]
    ambient = light.ambient * (sky_amb / max(sky_amb.mean(), 1e-3) * up + bounce * 0.5 * (1 - up))
    color = albedo[surf] * (lcol * ndl[:, None] + ambient)
    shiny = np.array([False] + [o.shiny for o in scene.objects])[hits.ids[surf]]
    if shiny.any():
        half = _normalize(ldir - d[surf[shiny]])
        spec = np.maximum(_dot(n[shiny], half), 0.0) ** 48 * (ndl[shiny] > 0)
        color[shiny] += 0.6 * spec[:, None] * lcol
    fog = 1.0 - np.exp(-hits.t[surf] / _FOG_DISTANCE)
    horizon = _srgb_to_linear(np.array(light.sky_horizon))
    out[surf] = color + (horizon - color) * fog[:, None]
    return out


def _shifted(axis: int, n: int) -> List[Tuple[slice, ...]]:
    """Index tuples for the k-th of `n` consecutive pixels along `axis` (k = 0..n-1)."""
    out = []
    for k in range(n):
        sl = [slice(None), slice(None)]
        sl[axis] = slice(k, k - n + 1 or None)
        out.append(tuple(sl))
    return out


def _needs_supersampling(ids: np.ndarray, srgb: np.ndarray) -> np.ndarray:
    """Pixels on an object boundary or next to a visible colour step."""
    mask = np.zeros(ids.shape, dtype=bool)
    for axis in (0, 1):
        sa, sb = _shifted(axis, 2)
        step = (ids[sa] != ids[sb]) | (np.abs(srgb[sa] - srgb[sb]).max(axis=-1) > _AA_CONTRAST)
        mask[sa] |= step
        mask[sb] |= step
    return mask


def render(scene: Scene, resolution: int = 64, supersample: int = 2) -> Render:
    """Ray-cast `scene` into a square image and its exact per-pixel buffers.

    Pixels on edges and colour steps of the centre-ray image are re-shaded with
    `supersample` x `supersample` rays (adaptive anti-aliasing); the other
    buffers always come from the pixel-centre rays.
    """
    if resolution < 1 or supersample < 1:
        raise ValueError(f"resolution and supersample must be >= 1, got {resolution}, {supersample}")
    cam = scene.camera
    origin = cam.position
    pixel_angle = math.radians(cam.fov) / resolution
    shape = (resolution, resolution)
    centre = np.arange(resolution) + 0.5
    d = _ray_dirs(scene, resolution, *np.meshgrid(centre, centre, indexing="ij"))
    hits = _trace(scene, origin, d)
    albedo = _albedo(scene, hits, d, pixel_angle)
    linear = _shade(scene, hits, d, albedo)
    if supersample > 1:
        ids = hits.ids.reshape(shape)
        idx = np.nonzero(_needs_supersampling(ids, _linear_to_srgb(linear).reshape(*shape, 3)).reshape(-1))[0]
        if idx.size:
            offs = (np.arange(supersample) + 0.5) / supersample
            py = (idx // resolution)[:, None, None] + offs[None, :, None]
            px = (idx % resolution)[:, None, None] + offs[None, None, :]
            py, px = np.broadcast_arrays(py, px)
            ds = _ray_dirs(scene, resolution, py, px)
            hs = _trace(scene, origin, ds)
            sub = _shade(scene, hs, ds, _albedo(scene, hs, ds, pixel_angle / supersample))
            linear[idx] = sub.reshape(idx.size, supersample * supersample, 3).mean(axis=1)
    image = _to_uint8(_linear_to_srgb(linear)).reshape(*shape, 3)

    right, up, forward = cam.basis()
    depth = (hits.t * _dot(d, forward)).reshape(shape)
    normal = hits.normal.reshape(*shape, 3)
    normal_cam = np.stack([_dot(normal, right), _dot(normal, up), -_dot(normal, forward)], axis=-1)
    normal_cam[hits.ids.reshape(shape) < 0] = 0.0
    return Render(
        image=image,
        depth=depth,
        distance=hits.t.reshape(shape),
        object_id=hits.ids.reshape(shape),
        normal=normal,
        normal_camera=normal_cam,
        albedo=_linear_to_srgb(albedo).reshape(*shape, 3),
        seg_classes=("sky", "floor") + tuple(o.shape for o in scene.objects),
    )


# --- HED-like edges


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = np.arange(-radius, radius + 1)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _blur(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    r = len(kernel) // 2
    h, w = img.shape
    pad = np.pad(img, r, mode="edge")
    rows = sum(kernel[i] * pad[:, i : i + w] for i in range(len(kernel)))
    return sum(kernel[i] * rows[i : i + h, :] for i in range(len(kernel)))


def _hed(r: Render) -> np.ndarray:
    """Soft white-on-black edges from object-id, normal-crease, depth and albedo
    discontinuities, blurred like HED's output."""
    ids = r.object_id
    depth = np.where(np.isfinite(r.depth), r.depth, 1e9)
    disp = 1.0 / depth
    edge = np.zeros(ids.shape)
    for axis in (0, 1):
        sa, sb = _shifted(axis, 2)
        same = ids[sa] == ids[sb]
        crease = same & (ids[sa] >= 0) & (_dot(r.normal[sa], r.normal[sb]) < _HED_NORMAL_COS)
        # The horizon is a faint edge: fog makes far floor and sky alike.
        horizon = ((ids[sa] == -1) & (ids[sb] == 0)) | ((ids[sa] == 0) & (ids[sb] == -1))
        geometric = np.where(horizon, 0.5, (~same | crease).astype(np.float64))
        # Texture edges are weaker, ignore gentle gradients (noise floor) and the sky.
        tex = np.abs(r.albedo[sa] - r.albedo[sb]).max(axis=-1) * ((ids[sa] >= 0) & (ids[sb] >= 0))
        strength = np.maximum(geometric, 0.3 * np.clip((tex - 0.03) * 5.0, 0.0, 1.0))
        # Mark the nearer side, so silhouettes sit on the occluding object.
        a_near = depth[sa] <= depth[sb]
        edge[sa] = np.maximum(edge[sa], np.where(a_near, strength, 0.0))
        edge[sb] = np.maximum(edge[sb], np.where(a_near, 0.0, strength))
        # Depth steps inside one object: inverse depth is affine on a plane, so its
        # second difference only fires at self-occlusions.
        s0, s1, s2 = _shifted(axis, 3)
        curve = np.abs(disp[s0] - 2 * disp[s1] + disp[s2]) / np.maximum(disp[s1], 1e-12)
        same3 = (ids[s0] == ids[s1]) & (ids[s2] == ids[s1])
        edge[s1] = np.maximum(edge[s1], (same3 & (curve > _HED_DISPARITY_CURVE)).astype(np.float64))
    kernel = _gaussian_kernel(0.55 * max(1.0, ids.shape[0] / 64))
    soft = _blur(edge, kernel)
    # Scale so a one-pixel line keeps a peak near 1 after the blur.
    return _to_uint8(soft / kernel[len(kernel) // 2])
