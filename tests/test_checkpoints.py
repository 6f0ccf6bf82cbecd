import pytest
import torch
from diffusers import ControlNetModel
from safetensors.torch import save_file

from pdiff_core.checkpoints import (
    CheckpointError,
    describe_state_dict,
    read_controlnet,
    read_state_dict,
    save_controlnet,
)
from pdiff_core.ldm_config import ldm_unet_config
from pdiff_core.presets import get_preset
from reference_cldm import control_outputs, ldm_control_shapes

TINY = dict(
    model_channels=32,
    channel_mult=[1, 2],
    num_res_blocks=1,
    attention_levels=[True, False],
    context_dim=32,
    hint_channels=[8, 8, 16, 16],
)
HEADS = 2  # not readable from weights: passed as the config's attention_head_dim


def ldm_checkpoint(seed: int = 0) -> dict:
    """An authors'-format full checkpoint: control_model.* with random values, plus stand-ins for
    the UNet, VAE and text encoder parts."""
    generator = torch.Generator().manual_seed(seed)
    control = {
        f"control_model.{k}": torch.randn(shape, generator=generator) * 0.1
        for k, shape in ldm_control_shapes(**TINY).items()
    }
    others = {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3),
        "first_stage_model.encoder.conv_in.weight": torch.zeros(8, 3, 3, 3),
        "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.zeros(1, 77),
    }
    return {**control, **others}


@pytest.fixture
def ldm_file(tmp_path):
    path = tmp_path / "network-step=04999.safetensors"
    save_file(ldm_checkpoint(), str(path))
    return path


def test_converted_ldm_checkpoint_matches_the_published_architecture(ldm_file):
    model = read_controlnet(ldm_file, config={"attention_head_dim": HEADS}).build().eval()
    weights = {
        k[len("control_model.") :]: v for k, v in read_state_dict(ldm_file).items() if k.startswith("control_model.")
    }
    gen = torch.Generator().manual_seed(1)
    x, context = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 5, 32, generator=gen)
    pair, query = torch.rand(2, 6, 64, 64, generator=gen) * 2 - 1, torch.rand(2, 3, 64, 64, generator=gen) * 2 - 1
    t = torch.tensor([10, 700])
    expected = control_outputs(weights, x, t, context, pair, query, model_channels=32, heads=HEADS, groups=32)
    with torch.no_grad():
        out = model(x, t, context, controlnet_cond=pair, controlnet_query_cond=query)
    got = list(out.down_block_res_samples) + [out.mid_block_res_sample]
    assert len(got) == len(expected) == 5  # conv_in, 2 res blocks, 1 downsampler, middle
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        assert (g - e).abs().max().item() < 1e-5
    assert max(e.abs().max().item() for e in expected) > 1e-2  # the check compares non-trivial values


def test_ldm_to_ours_to_ldm_is_bit_identical(ldm_file, tmp_path):
    original = {k: v for k, v in read_state_dict(ldm_file).items() if k.startswith("control_model.")}
    model = read_controlnet(ldm_file, config={"attention_head_dim": HEADS}).build()
    out = save_controlnet(model, tmp_path / "back.safetensors", layout="ldm")
    back = read_state_dict(out)
    assert set(back) == set(original)
    assert all(torch.equal(back[k], original[k]) for k in original)


def test_ckpt_is_read_with_weights_only(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": ldm_checkpoint(), "global_step": 4999}, str(path))
    model = read_controlnet(path, config={"attention_head_dim": HEADS}).build()
    assert model.config.block_out_channels == (32, 64) or list(model.config.block_out_channels) == [32, 64]


class Payload:
    pass


def test_pickle_with_objects_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": ldm_checkpoint(), "extra": Payload()}, str(path))
    with pytest.raises(CheckpointError, match="weights_only=True"):
        read_state_dict(path)


def test_unsupported_suffix_is_refused(tmp_path):
    path = tmp_path / "model.pkl"
    path.write_bytes(b"\x80\x04N.")
    with pytest.raises(CheckpointError, match=r"unsupported weights file type \.pkl"):
        read_state_dict(path)


def test_diffusers_folder_and_pipeline_folder_load(tiny_pipeline_dir, tmp_path):
    from_pipeline = read_controlnet(tiny_pipeline_dir)
    from_folder = read_controlnet(tiny_pipeline_dir / "controlnet")
    assert from_pipeline.layout == from_folder.layout == "diffusers"
    model = from_folder.build()
    single = save_controlnet(model, tmp_path / "pdiff.safetensors")
    again = read_controlnet(single).build()
    assert dict(again.config) == dict(model.config)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


def test_save_refuses_to_overwrite(tiny_pipeline_dir, tmp_path):
    model = read_controlnet(tiny_pipeline_dir).build()
    path = save_controlnet(model, tmp_path / "a.safetensors")
    with pytest.raises(FileExistsError, match="overwrite"):
        save_controlnet(model, path)


def test_plain_controlnet_is_refused_with_what_it_is(tmp_path):
    plain = ControlNetModel(
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        layers_per_block=1,
        cross_attention_dim=32,
        conditioning_embedding_out_channels=(8, 8, 16, 16),
    )
    path = tmp_path / "control_v11p_sd15_canny.safetensors"
    save_file(plain.state_dict(), str(path))
    with pytest.raises(CheckpointError, match="plain ControlNet"):
        read_controlnet(path)
    ldm_plain = {k: v for k, v in ldm_checkpoint().items() if "input_cond_block" not in k}
    save_file(ldm_plain, str(tmp_path / "plain_ldm.safetensors"))
    with pytest.raises(CheckpointError, match="plain ControlNet"):
        read_controlnet(tmp_path / "plain_ldm.safetensors")


def test_sd_checkpoint_without_control_model_is_refused(tmp_path):
    sd = {k: v for k, v in ldm_checkpoint().items() if not k.startswith("control_model.")}
    save_file(sd, str(tmp_path / "v1-5-pruned.safetensors"))
    with pytest.raises(CheckpointError, match="without a control model"):
        read_controlnet(tmp_path / "v1-5-pruned.safetensors")
    assert "Stable Diffusion" in describe_state_dict(sd)


def test_missing_and_unexpected_keys_are_named(tmp_path):
    broken = ldm_checkpoint()
    del broken["control_model.zero_convs.2.0.bias"]
    save_file(broken, str(tmp_path / "missing.safetensors"))
    with pytest.raises(CheckpointError, match=r"controlnet_down_blocks\.2\.bias"):
        read_controlnet(tmp_path / "missing.safetensors", config={"attention_head_dim": HEADS}).build()
    extra = ldm_checkpoint()
    extra["control_model.input_blocks.1.9.weight"] = torch.zeros(1)
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(CheckpointError, match=r"input_blocks\.1\.9\.weight"):
        read_controlnet(tmp_path / "extra.safetensors")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        read_controlnet(tmp_path / "nothing.safetensors")


@pytest.mark.parametrize(
    "name, content, described",
    [
        ("garbage.safetensors", b"\xff" * 64, "starting b'\\xff"),
        ("pointer.safetensors", b"version https://git-lfs.github.com/spec/v1\noid sha256:0\n", "Git LFS pointer"),
        ("login.ckpt", b"<!DOCTYPE html><html><body>sign in</body></html>", "an HTML page"),
        ("empty.safetensors", b"", "the file is empty"),
    ],
)
def test_a_file_that_is_not_weights_is_named_with_what_it_looks_like(tmp_path, name, content, described):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        read_controlnet(path)
    assert str(path) in str(err.value) and described in str(err.value)


def test_the_ldm_arguments_of_sd15_are_its_published_ldm_config():
    # SD1.5's v1-inference.yaml (model_channels 320, channel_mult 1, 2, 4, 4, 2 res blocks, 8 heads, context
    # 768, attention_resolutions 4, 2, 1: transformers at the first three levels), per block as ComfyUI takes it.
    unet = ldm_unet_config(get_preset("sd15").unet_config())
    assert (unet["model_channels"], unet["channel_mult"], unet["num_res_blocks"]) == (320, [1, 2, 4, 4], [2] * 4)
    assert (unet["num_heads"], unet["context_dim"], unet["in_channels"], unet["out_channels"]) == (8, 768, 4, 4)
    assert unet["transformer_depth"] == [1] * 6 + [0] * 2 and unet["transformer_depth_middle"] == 1
    assert unet["transformer_depth_output"] == [1] * 9 + [0] * 3
    assert not unet["use_linear_in_transformer"] and unet["attn_precision"] is None
    # A ControlNet has no output half.
    control = ldm_unet_config(get_preset("sd15").unet_config(), controlnet=True)
    assert control == {k: v for k, v in unet.items() if k not in ("transformer_depth_output", "out_channels")}


def test_ldm_arguments_refuse_what_the_ldm_classes_cannot_build():
    config = {**get_preset("tiny").unet_config(), "resnet_time_scale_shift": "scale_shift"}
    with pytest.raises(CheckpointError, match="unsupported config: resnet_time_scale_shift='scale_shift'"):
        ldm_unet_config(config)
    with pytest.raises(CheckpointError, match="per-level attention head counts"):
        ldm_unet_config({**get_preset("tiny").unet_config(), "attention_head_dim": (2, 4)})
