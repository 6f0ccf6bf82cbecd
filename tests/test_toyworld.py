"""pdiff_core.toyworld and `python -m training.toyworld`: exact maps against independent geometry, captions, determinism."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest
from PIL import Image

from pdiff_core.data import DatasetIndex
from pdiff_core.toyworld import (
    ALL_MAPS,
    INSTANCE_COLORS,
    Camera,
    Ground,
    Light,
    Primitive,
    Scene,
    generate,
    make_caption,
    render,
    render_group,
    sample_group,
)
from training.toyworld import main as cli_main

# ADE20K palette colours, written out here rather than imported from the code under test.
ADE_SKY, ADE_FLOOR, ADE_BALL, ADE_BOX, ADE_COLUMN, ADE_TENT = (
    (6, 230, 230),
    (80, 50, 50),
    (255, 0, 163),
    (0, 255, 20),
    (255, 8, 41),
    (112, 224, 255),
)
PLAIN = Ground("plain", (0.6, 0.6, 0.6), (0.6, 0.6, 0.6), color_name="gray")
SUN_ABOVE = Light(elevation=90, azimuth=0)


def _camera_rays(cam: Camera, res: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Camera position, forward axis and unit ray of every pixel centre (res, res, 3),
    derived from the documented conventions: orbit angles, pinhole, square image."""
    el, az = math.radians(cam.elevation), math.radians(cam.azimuth)
    target = np.array(cam.target)
    pos = target + cam.distance * np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
    f = (target - pos) / np.linalg.norm(target - pos)
    r = np.cross(f, [0.0, 1.0, 0.0])
    if np.linalg.norm(r) < 1e-9:  # looking straight down: "right" follows the azimuth
        r = np.array([math.cos(az), 0.0, -math.sin(az)])
    r /= np.linalg.norm(r)
    u = np.cross(r, f)
    h = math.tan(math.radians(cam.fov) / 2)
    c = (np.arange(res) + 0.5) / res * 2 - 1
    d = f + c[None, :, None] * h * r - c[:, None, None] * h * u
    return pos, f, d / np.linalg.norm(d, axis=-1, keepdims=True)


def _sphere_scene(res: int = 41) -> Tuple[Scene, np.ndarray]:
    centre = np.array([0.3, 0.5, -0.2])
    sphere = Primitive("sphere", (0.3, -0.2), radius=0.5, height=1.0, color=(0.8, 0.1, 0.1), color_name="red")
    cam = Camera(elevation=30, azimuth=40, distance=4.0, fov=40, target=tuple(centre))
    return Scene((sphere,), PLAIN, cam, SUN_ABOVE), centre


def test_sphere_scene_matches_analytic_geometry() -> None:
    res = 41
    scene, centre = _sphere_scene(res)
    r = render(scene, res)
    pos, fwd, d = _camera_rays(scene.camera, res)
    # Independent ray-sphere and ray-floor intersections for every pixel.
    oc = pos - centre
    b = d @ oc
    disc = b * b - (oc @ oc - 0.25)
    t_sphere = np.where(disc > 0, -b - np.sqrt(np.maximum(disc, 0)), np.inf)
    t_floor = np.where(d[..., 1] < 0, -pos[1] / d[..., 1], np.inf)
    on_sphere = t_sphere < t_floor
    t = np.where(on_sphere, t_sphere, t_floor)
    np.testing.assert_array_equal(r.object_id, np.where(on_sphere, 1, 0))
    np.testing.assert_allclose(r.distance, t, rtol=1e-9)
    np.testing.assert_allclose(r.depth, t * (d @ fwd), rtol=1e-9)

    c = res // 2  # the centre pixel looks straight at the sphere centre
    assert r.depth[c, c] == pytest.approx(4.0 - 0.5, abs=1e-9)
    maps = r.maps()
    assert tuple(maps["seg"][c, c]) == ADE_BALL
    assert tuple(maps["seg"][0, 0]) == ADE_FLOOR
    np.testing.assert_allclose(r.normal_camera[c, c], [0, 0, 1], atol=1e-9)
    np.testing.assert_allclose(maps["normal"][c, c], [128, 128, 255], atol=1)
    hit = pos + t_sphere[on_sphere][:, None] * d[on_sphere]
    np.testing.assert_allclose(r.normal[on_sphere], (hit - centre) / 0.5, atol=1e-9)
    np.testing.assert_allclose(maps["albedo"][c, c], [204, 25.5, 25.5], atol=1)  # 255 * (0.8, 0.1, 0.1)

    # Depth map: nearer is brighter, full range used.
    order = np.argsort(r.depth, axis=None)
    assert np.all(np.diff(maps["depth"].reshape(-1)[order].astype(int)) <= 0)
    assert maps["depth"].max() == 255 and maps["depth"].min() == 0

    # Gray is the luma of the image.
    luma = np.round(r.image.astype(float) @ [0.299, 0.587, 0.114])
    np.testing.assert_allclose(maps["gray"], luma, atol=1)


def test_derived_maps_of_the_sphere_scene() -> None:
    """The maps that widen the task family, each against its definition computed here."""
    res = 41
    scene, _ = _sphere_scene(res)
    r = render(scene, res)
    maps = r.maps()
    image = r.image.astype(int)
    np.testing.assert_array_equal(maps["far"], 255 - maps["depth"].astype(int))
    np.testing.assert_array_equal(maps["invert"], 255 - image)
    np.testing.assert_array_equal(maps["bgr"], image[..., [2, 1, 0]])
    assert set(np.unique(maps["quant"])) <= {0, 128, 255}
    assert np.abs(maps["quant"].astype(int) - image).max() <= 64
    sphere = r.object_id == 1
    assert (maps["instance"][sphere] == INSTANCE_COLORS[0]).all()
    assert (maps["instance"][r.object_id == 0] == 128).all()
    # Edges: exactly the pixels with a 4-neighbour on the other side of the sphere's outline.
    padded = np.pad(sphere, 1, mode="edge")
    neighbours = [padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]]
    outline = np.any([n != sphere for n in neighbours], axis=0)
    np.testing.assert_array_equal(maps["edges"], outline.astype(np.uint8) * 255)
    # Shading: twice its linear luminance times the albedo's gives back the image's (lit pixels,
    # away from the anti-aliased outline and below the white clip).
    lum = np.array([0.2126, 0.7152, 0.0722])
    linear = lambda x: (x / 255.0) ** 2.2  # noqa: E731
    shade = linear(maps["shading"].astype(float))
    inner = ~outline & (r.object_id >= 0) & (maps["shading"] < 250) & (maps["shading"] > 20)
    predicted = 2 * shade * (linear(maps["albedo"].astype(float)) @ lum)
    np.testing.assert_allclose(predicted[inner], linear(image.astype(float))[inner] @ lum, rtol=0.1, atol=0.01)


def test_shadow_and_edges_of_the_sphere() -> None:
    res = 41
    scene, centre = _sphere_scene(res)
    r = render(scene, res)
    maps = r.maps(["hed"])
    pos, _, d = _camera_rays(scene.camera, res)
    floor = r.object_id == 0
    t_floor = -pos[1] / d[..., 1]
    p = pos + t_floor[..., None] * d
    radial = np.hypot(p[..., 0] - centre[0], p[..., 2] - centre[2])
    lum = r.image.astype(float).mean(axis=-1)
    # Sun straight above: the shadow is the disc under the sphere.
    shadow, lit = floor & (radial < 0.4), floor & (radial > 0.7) & (radial < 1.2)
    assert shadow.sum() >= 3 and lit.sum() >= 3
    assert lum[shadow].max() < 0.7 * lum[lit].min()

    ids = r.object_id
    silhouette = np.zeros_like(ids, dtype=bool)
    silhouette[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    silhouette[:-1] |= ids[:-1] != ids[1:]
    near = silhouette.copy()
    for _ in range(3):  # grow by 3 px: beyond the blur radius
        near[1:] |= near[:-1]
        near[:-1] |= near[1:]
        near[:, 1:] |= near[:, :-1]
        near[:, :-1] |= near[:, 1:]
    hed = maps["hed"]
    assert hed[silhouette & (ids == 1)].min() > 128
    assert hed[~near].max() == 0


@pytest.mark.parametrize(
    "obj, cam, distance, normal, seg",
    [
        # Straight down on a box's top face, rotated: the top is flat and faces up.
        (
            Primitive("box", (0.0, 0.0), 0.5, 0.6, (0.1, 0.3, 0.8), yaw=0.7),
            Camera(90, 15, 4.0, target=(0, 0.6, 0)),
            4.0,
            (0, 1, 0),
            ADE_BOX,
        ),
        # Side view of a cylinder at mid height.
        (
            Primitive("cylinder", (0.0, 0.0), 0.4, 1.2, (0.9, 0.8, 0.1)),
            Camera(0, 0, 5.0, target=(0, 0.6, 0)),
            5.0 - 0.4,
            (0, 0, 1),
            ADE_COLUMN,
        ),
        # Side view of a cone at mid height, where its radius is half the base radius.
        (
            Primitive("cone", (0.0, 0.0), 0.5, 1.0, (0.1, 0.6, 0.2)),
            Camera(0, 0, 5.0, target=(0, 0.5, 0)),
            5.0 - 0.25,
            (0, 0.5, 1) / np.hypot(0.5, 1),
            ADE_TENT,
        ),
    ],
)
def test_centre_pixel_of_each_shape(obj: Primitive, cam: Camera, distance: float, normal: tuple, seg: tuple) -> None:
    r = render(Scene((obj,), PLAIN, cam, SUN_ABOVE), 33)
    assert r.object_id[16, 16] == 1
    assert r.distance[16, 16] == pytest.approx(distance, abs=1e-9)
    np.testing.assert_allclose(r.normal[16, 16], normal, atol=1e-9)
    assert tuple(r.seg_map()[16, 16]) == seg


def test_rotated_box_footprint() -> None:
    # Top view of a unit-wide box turned by 45 degrees: a diamond.
    box = Primitive("box", (0.0, 0.0), 0.5, 0.6, (0.8, 0.8, 0.8), yaw=math.pi / 4)
    cam = Camera(90, 0, 6.0, target=(0, 0.6, 0))
    res = 65
    r = render(Scene((box,), PLAIN, cam, SUN_ABOVE), res)
    pos, _, d = _camera_rays(cam, res)
    p = pos + ((0.6 - pos[1]) / d[..., 1])[..., None] * d  # where each ray crosses the top plane
    inside = np.abs(p[..., 0]) + np.abs(p[..., 2]) < 0.5 * math.sqrt(2) - 0.02
    outside = np.abs(p[..., 0]) + np.abs(p[..., 2]) > 0.5 * math.sqrt(2) + 0.02
    assert (r.object_id[inside] == 1).all()
    assert (r.object_id[outside & (np.hypot(p[..., 0], p[..., 2]) > 0.75)] == 0).all()


def test_sky_above_the_horizon() -> None:
    r = render(Scene((), PLAIN, Camera(2, 0, 6.0, fov=40), SUN_ABOVE), 32)
    assert (r.object_id[0] == -1).all() and (r.object_id[-1] == 0).all()
    assert tuple(r.seg_map()[0, 0]) == ADE_SKY
    assert r.depth_map()[0, 0] == 0 and not np.isfinite(r.depth[0, 0])
    sky_rows = np.nonzero((r.object_id == -1).all(axis=1))[0]
    assert len(sky_rows) > 4 and (r.hed_map()[sky_rows[:-3]] == 0).all()  # no edges inside the sky


def test_captions() -> None:
    def obj(shape: str, color: str, **kw) -> Primitive:
        height = kw.pop("height", 1.0)
        return Primitive(shape, (0, 0), 0.5, height, (0.5, 0.5, 0.5), color_name=color, **kw)

    checkered = Ground("checkered", (1, 1, 1), (0, 0, 0))
    beige = Ground("plain", (0.8, 0.7, 0.6), (0.8, 0.7, 0.6), color_name="beige")
    assert make_caption([obj("sphere", "red"), obj("box", "blue")], checkered) == (
        "a red sphere and a blue cube on a checkered floor"
    )
    assert (
        make_caption(
            [
                obj("sphere", "red"),
                obj("cone", "orange"),
                obj("sphere", "red"),
                obj("box", "gray", shiny=True, height=0.4),
            ],
            beige,
        )
        == "two red spheres, an orange cone and a shiny gray box on a plain beige floor"
    )

    nouns = {"sphere": "sphere", "cylinder": "cylinder", "cone": "cone"}
    for seed in range(40):
        spec = sample_group(np.random.default_rng(seed))
        assert 1 <= len(spec.objects) <= 4
        for o in spec.objects:
            assert o.color_name in spec.caption
            assert nouns.get(o.shape, "cube" if o.noun == "cube" else "box") in spec.caption


def test_group_items_share_the_scene_but_differ_in_view() -> None:
    caption, items = render_group(5, seed=1, items_per_group=3, resolution=24)
    assert caption == sample_group(np.random.default_rng(np.random.SeedSequence([1, 5]))).caption
    assert len(items) == 3
    assert not np.array_equal(items[0][0], items[1][0])
    for image, maps in items:
        assert image.shape == (24, 24, 3) and image.dtype == np.uint8
        assert set(maps) == set(ALL_MAPS)
        assert maps["depth"].shape == maps["hed"].shape == maps["gray"].shape == (24, 24)
        assert maps["seg"].shape == maps["normal"].shape == maps["albedo"].shape == (24, 24, 3)


def _tree_bytes(root: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generate_is_deterministic_and_loadable(tmp_path: Path) -> None:
    kw = dict(n_groups=3, items_per_group=2, resolution=20, progress=False)
    generate(tmp_path / "a", seed=7, workers=1, **kw)
    generate(tmp_path / "b", seed=7, workers=2, **kw)
    generate(tmp_path / "c", seed=8, workers=1, **kw)
    a, b, c = (_tree_bytes(tmp_path / n) for n in "abc")
    assert a == b
    assert a.keys() == c.keys() and a != c

    index = DatasetIndex.load(tmp_path / "a")
    assert index.maps == list(ALL_MAPS) and index.meta["source"] == "toyworld" and len(index) == 3
    assert index.groups[0].caption == render_group(0, seed=7, items_per_group=2, resolution=20)[0]
    item = index.groups[0].items[0]
    assert Image.open(item.maps["depth"]).mode == "L" and Image.open(item.maps["normal"]).mode == "RGB"

    with pytest.raises(ValueError, match="unknown toyworld map"):
        generate(tmp_path / "d", 1, maps=("depth", "canny"), progress=False)


def test_cli(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    args = ["--out", str(out), "--groups", "2", "--resolution", "16", "--seed", "3", "--workers", "1", "--no-progress"]
    assert cli_main(args + ["--maps", "depth,seg"]) == 0
    assert DatasetIndex.load(out).maps == ["depth", "seg"]
    assert cli_main(args) == 2  # the folder is no longer empty
    assert cli_main(args + ["--overwrite"]) == 0
    assert DatasetIndex.load(out).maps == list(ALL_MAPS)
