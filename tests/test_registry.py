"""pyproject.toml as the ComfyUI registry reads it: parsed by comfy-cli's own registry parser (what
`comfy node publish` runs; it drops a malformed requires-comfyui), checked against the registry's
specification (docs.comfy.org, registry/specifications)."""

from __future__ import annotations

import re
from urllib.parse import urlparse

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from comfy_harness import ROOT

COMFYUI_VERSION = Version("0.3.64")  # the snapshot the tests run


@pytest.fixture(scope="module")
def config():
    from comfy_cli.registry.config_parser import extract_node_configuration

    return extract_node_configuration(str(ROOT / "pyproject.toml"))


def test_node_id_follows_the_registry_rules(config):
    name = config.project.name
    assert len(name) < 100 and re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]*", name), name
    assert not re.search(r"[._-]{2}", name), "no consecutive special characters"
    assert "comfyui" not in name.lower(), "the specification advises against 'ComfyUI' in the node id"
    assert re.fullmatch(r"\d+\.\d+\.\d+", config.project.version)


def test_comfyui_range_includes_the_tested_version(config):
    assert config.project.supported_comfyui_version, "comfy-cli dropped requires-comfyui as malformed"
    supported = SpecifierSet(config.project.supported_comfyui_version)
    assert COMFYUI_VERSION in supported
    assert Version("0.3.0") not in supported, "older ComfyUI lacks the node API the pack uses"


def test_publisher_display_name_icon_license_and_repository(config):
    comfy = config.tool_comfy
    assert comfy.publisher_id and comfy.display_name
    icon = urlparse(comfy.icon)
    assert icon.scheme == "https" and icon.path.rsplit(".", 1)[-1] in ("svg", "png", "jpg", "gif"), comfy.icon
    repository = config.project.urls.repository
    assert repository.startswith("https://github.com/")
    # the icon is this repository's own file, served raw from its main branch
    owner_repo = urlparse(repository).path.strip("/")
    prefix = f"/{owner_repo}/main/"
    assert icon.netloc == "raw.githubusercontent.com" and icon.path.startswith(prefix), comfy.icon
    icon_file = ROOT / icon.path[len(prefix) :]
    assert icon_file.is_file(), icon_file
    from PIL import Image

    with Image.open(icon_file) as image:
        assert image.width <= 800 and image.height <= 400  # the specification's maximum
    assert (ROOT / config.project.license.file).is_file()
