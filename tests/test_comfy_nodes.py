"""The node pack inside a real ComfyUI 0.3.64, imported in-process: schemas, loaders, and the control
math against `pdiff_core` for the same weights and inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from comfy_harness import comfyui_copy, import_comfyui, one_torch_thread, pack_module
from pdiff_core.checkpoints import CheckpointError, diffusers_to_ldm, read_controlnet, save_controlnet
from pdiff_core.defaults import DEFAULT_MODEL
from pdiff_core.presets import PRESETS

NODE_IDS = {
    "PDiff_LoadPromptDiffusionControlNet",
    "PDiff_LoadPromptDiffusionModel",
    "PDiff_ApplyPromptDiffusion",
    "PDiff_MakeExamplePair",
    "PDiff_PromptDiffusionPreview",
    "PDiff_Annotate",
    "PDiff_ApplyPromptDiffusionFewShot",
}
# Every model-size preset but SD1.5's (1.1 B parameters), saved with random weights and run here.
CPU_PRESETS = [name for name in PRESETS if name != "sd15"]
# float32 on both sides; the two implementations differ only in operation order (attention kernels, sums).
ATOL = 2e-5


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def comfyui(tmp_path_factory, tiny_pipeline_dir):
    comfy_dir = comfyui_copy(tmp_path_factory.mktemp("comfy"), tiny_pipeline_dir)
    modules = import_comfyui(comfy_dir)
    modules["dir"] = comfy_dir
    return modules


@pytest.fixture(scope="session")
def node_classes(comfyui):
    return comfyui["nodes"].NODE_CLASS_MAPPINGS


@pytest.fixture(scope="session")
def reference(tiny_pipeline_dir):
    """The tiny pipeline's ControlNet as `pdiff_core` builds it."""
    return read_controlnet(tiny_pipeline_dir).build().eval()


@pytest.fixture(scope="session")
def loaded(node_classes):
    """MODEL, CLIP, VAE, CONTROL_NET of the tiny pipeline folder, through the loader node."""
    return node_classes["PDiff_LoadPromptDiffusionModel"].execute("pdiff-toyworld").result


@pytest.fixture(scope="session")
def loaded_v_prediction(comfyui, node_classes, tiny_pipeline_dir, tmp_path_factory):
    """The tiny pipeline's weights as a v-prediction model (as the embedded default is), through the loader.
    Its folder is registered in this process only: the server tests list the copy's own models."""
    models = tmp_path_factory.mktemp("v_models")
    comfyui["folder_paths"].add_model_folder_path("prompt_diffusion", str(models))
    folder = models / "pdiff-tiny-v"
    shutil.copytree(tiny_pipeline_dir, folder)
    config_file = folder / "scheduler" / "scheduler_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "prediction_type": "v_prediction"}))
    return node_classes["PDiff_LoadPromptDiffusionModel"].execute("pdiff-tiny-v").result


@pytest.fixture(scope="session")
def latent8(comfyui, node_classes, tiny_tokenizer_dir, tmp_path_factory):
    """A tiny v-prediction model with 8 latent channels (as the embedded default has): its pipeline
    and its MODEL, CLIP, VAE, CONTROL_NET through the loader (registered in this process only)."""
    import dataclasses

    from diffusers import DDIMScheduler
    from transformers import CLIPTokenizer

    from pdiff_core.pipeline import PromptDiffusionPipeline
    from pdiff_core.presets import build_preset_components

    preset = dataclasses.replace(PRESETS["tiny"], latent_channels=8)
    components = build_preset_components(preset, CLIPTokenizer.from_pretrained(str(tiny_tokenizer_dir)), seed=3)
    from conftest import randomize_zero_parameters

    randomize_zero_parameters(components["controlnet"], 3)
    components["scheduler"] = DDIMScheduler.from_config(components["scheduler"].config, prediction_type="v_prediction")
    pipe = PromptDiffusionPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    models = tmp_path_factory.mktemp("latent8_models")
    comfyui["folder_paths"].add_model_folder_path("prompt_diffusion", str(models))
    pipe.save_pretrained(str(models / "pdiff-tiny-latent8"))
    return pipe, node_classes["PDiff_LoadPromptDiffusionModel"].execute("pdiff-tiny-latent8").result


@pytest.fixture(scope="session")
def preset_model(comfyui, node_classes, tiny_tokenizer_dir, tmp_path_factory):
    """`preset_model(name)`: a random-weight pipeline at the size of `pdiff_core.presets.PRESETS[name]`
    (zero convolutions randomised, so that the control shows), saved as the model folder
    `pdiff-preset-<name>` (registered in this process only), and its MODEL, CLIP, VAE, CONTROL_NET
    through the loader node: `(folder, pipeline, (MODEL, CLIP, VAE, CONTROL_NET))`, made once per preset."""
    from transformers import CLIPTokenizer

    from conftest import randomize_zero_parameters
    from pdiff_core.pipeline import PromptDiffusionPipeline
    from pdiff_core.presets import build_preset_components

    models = tmp_path_factory.mktemp("preset_models")
    comfyui["folder_paths"].add_model_folder_path("prompt_diffusion", str(models))
    made = {}

    def get(name):
        if name not in made:
            components = build_preset_components(name, CLIPTokenizer.from_pretrained(str(tiny_tokenizer_dir)), seed=5)
            randomize_zero_parameters(components["controlnet"], 5)
            pipe = PromptDiffusionPipeline(**components)
            pipe.set_progress_bar_config(disable=True)
            folder = models / f"pdiff-preset-{name}"
            pipe.save_pretrained(str(folder))
            made[name] = folder, pipe, node_classes["PDiff_LoadPromptDiffusionModel"].execute(folder.name).result
        return made[name]

    return get


def control_outputs(control_model, x, timesteps, context, hint):
    with torch.no_grad():
        out = control_model(x=x, hint=hint, timesteps=timesteps, context=context)
    return out["output"], out["middle"][0]


def reference_outputs(reference, x, timesteps, context, pair, query, scale=1.0):
    with torch.no_grad():
        down, mid = reference(
            x,
            timesteps,
            encoder_hidden_states=context,
            controlnet_cond=pair,
            controlnet_query_cond=query,
            conditioning_scale=scale,
            return_dict=False,
        )
    return list(down), mid


def assert_residuals_close(got, expected, atol=ATOL):
    got_down, got_mid = got
    expected_down, expected_mid = expected
    assert len(got_down) == len(expected_down)
    for index, (a, b) in enumerate(zip(got_down, expected_down)):
        assert a.shape == b.shape, f"residual {index}: {tuple(a.shape)} vs {tuple(b.shape)}"
        torch.testing.assert_close(a, b, atol=atol, rtol=1e-4, msg=lambda m: f"down residual {index}: {m}")
    torch.testing.assert_close(got_mid, expected_mid, atol=atol, rtol=1e-4, msg=lambda m: f"mid residual: {m}")
    assert max(float(t.abs().max()) for t in expected_down) > 1e-3, (
        "the reference control is ~0: the test would not see a bug"
    )


def random_inputs(reference, batch=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    latent = size // 8
    x = torch.randn(batch, reference.config.in_channels, latent, latent, generator=g)
    context = torch.randn(batch, 77, reference.config.cross_attention_dim, generator=g)
    images = torch.rand(batch, 3 * 3, size, size, generator=g) * 2 - 1
    return x, torch.tensor([900.0, 35.0][:batch]), context, images


# ----------------------------------------------------------------------------- registration and schemas


def test_pack_registers_its_nodes_with_stable_ids(node_classes):
    assert NODE_IDS <= set(node_classes)
    apply_inputs = node_classes["PDiff_ApplyPromptDiffusion"].INPUT_TYPES()
    assert list(apply_inputs["required"]) == [
        "positive",
        "negative",
        "control_net",
        "example_source",
        "example_target",
        "query",
        "strength",
        "start_percent",
        "end_percent",
    ]
    assert set(apply_inputs["optional"]) == {"vae", "mask"}
    assert list(node_classes["PDiff_ApplyPromptDiffusion"].RETURN_TYPES) == ["CONDITIONING", "CONDITIONING"]
    assert list(node_classes["PDiff_LoadPromptDiffusionModel"].RETURN_TYPES) == ["MODEL", "CLIP", "VAE", "CONTROL_NET"]
    assert (
        node_classes["PDiff_LoadPromptDiffusionModel"].INPUT_TYPES()["required"]["model_name"][1]["options"][0]
        == "pdiff-toyworld"
    )


def test_validation_rejects_an_unknown_model_folder(comfyui):
    prompt = {
        "1": {"class_type": "PDiff_LoadPromptDiffusionModel", "inputs": {"model_name": "no-such-model"}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }
    import asyncio

    valid, error, _, node_errors = asyncio.run(comfyui["execution"].validate_prompt("v", prompt, None))
    assert not valid
    messages = json.dumps(node_errors)
    assert "no-such-model" in messages and "model_name" in messages


# ----------------------------------------------------------------------------- control weights and math


@pytest.fixture(scope="session")
def authors_like(reference):
    """A small ControlNet with SD1.5's 8 attention heads and 32 norm groups: the authors' LDM checkpoint
    stores no config, and these are what its weights cannot tell, so the loader assumes SD1.5's."""
    from conftest import randomize_zero_parameters
    from pdiff_core.model import PromptDiffusionControlNetModel

    config = {k: v for k, v in reference.config.items() if not k.startswith("_")}
    torch.manual_seed(5)
    model = PromptDiffusionControlNetModel(**{**config, "attention_head_dim": 8, "norm_num_groups": 32})
    randomize_zero_parameters(model, seed=5)
    return model.eval()


def write_control_files(comfy_dir: Path, reference, authors_like) -> dict:
    folder = comfy_dir / "models" / "controlnet"
    save_controlnet(reference, folder / "pd_single.safetensors", overwrite=True)
    save_controlnet(reference, folder / "pd_single_ldm_layout.safetensors", layout="ldm", overwrite=True)
    save_controlnet(reference, folder / "pd_diffusers", overwrite=True)
    ldm = diffusers_to_ldm(authors_like.state_dict(), authors_like.config.layers_per_block)
    ldm["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(1)  # a full checkpoint's other parts
    ldm["first_stage_model.decoder.conv_in.weight"] = torch.zeros(1)
    torch.save({"state_dict": ldm}, folder / "pd_authors.ckpt")
    return {
        "pd_single.safetensors": reference,
        "pd_single_ldm_layout.safetensors": reference,
        "pd_diffusers/diffusion_pytorch_model.safetensors": reference,
        "pd_authors.ckpt": authors_like,
    }


def test_control_loader_reads_every_layout_and_matches_pdiff_core(comfyui, node_classes, reference, authors_like):
    files = write_control_files(comfyui["dir"], reference, authors_like)
    loader = node_classes["PDiff_LoadPromptDiffusionControlNet"]
    comfyui["folder_paths"].filename_list_cache.clear()
    listed = loader.INPUT_TYPES()["required"]["control_net_name"][1]["options"]
    x, t, context, images = random_inputs(reference)
    for name, model in files.items():
        assert name in listed
        control = loader.execute(name).result[0]
        assert isinstance(control, pack_module(comfyui["nodes"], "control").PromptDiffusionControl), name
        expected = reference_outputs(model, x, t, context, images[:, :6], images[:, 6:])
        assert_residuals_close(control_outputs(control.control_model, x, t, context, images), expected)


def test_control_loader_errors_name_the_problem(comfyui, node_classes):
    from diffusers import ControlNetModel

    folder = comfyui["dir"] / "models" / "controlnet"
    plain = ControlNetModel(
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=2,
        norm_num_groups=8,
        conditioning_embedding_out_channels=(8, 16),
    )
    save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, str(folder / "plain_controlnet.safetensors"))
    save_file(
        {
            "model.diffusion_model.out.2.weight": torch.zeros(4, 4, 3, 3),
            "first_stage_model.decoder.conv_in.weight": torch.zeros(4, 4, 3, 3),
        },
        str(folder / "sd15_checkpoint.safetensors"),
    )
    comfyui["folder_paths"].filename_list_cache.clear()
    loader = node_classes["PDiff_LoadPromptDiffusionControlNet"]
    with pytest.raises(CheckpointError, match="plain ControlNet"):
        loader.execute("plain_controlnet.safetensors")
    with pytest.raises(CheckpointError, match="Stable Diffusion checkpoint"):
        loader.execute("sd15_checkpoint.safetensors")
    with pytest.raises(FileNotFoundError, match="'controlnet'.*'missing.safetensors'"):
        loader.execute("missing.safetensors")


def test_loaded_control_runs_in_fp16_through_comfy_ops(comfyui, reference):
    control_module = pack_module(comfyui["nodes"], "control")
    control = control_module.build_control(
        read_controlnet(comfyui["dir"] / "models" / "prompt_diffusion" / "pdiff-toyworld"), dtype=torch.bfloat16
    )
    assert control.control_model.dtype == torch.bfloat16
    x, t, context, images = random_inputs(reference)
    got = control_outputs(control.control_model, x.bfloat16(), t.bfloat16(), context.bfloat16(), images.bfloat16())
    expected = reference_outputs(reference, x, t, context, images[:, :6], images[:, 6:])
    for a, b in zip(got[0], expected[0]):
        torch.testing.assert_close(a.float(), b, atol=0.05, rtol=0.05)


# ----------------------------------------------------------------------------- applying to conditioning


def conditioning(context):
    return [[context, {"pooled_output": None}]]


def prompts_or_defaults(positive, negative):
    """The apply helpers' conditioning where a test passes none: zeros for positive, ones for negative."""
    return (
        positive if positive is not None else conditioning(torch.zeros(1, 77, 32)),
        negative if negative is not None else conditioning(torch.ones(1, 77, 32)),
    )


def apply(
    node_classes,
    control,
    source,
    target,
    query,
    positive=None,
    negative=None,
    strength=1.0,
    mask=None,
    start=0.0,
    end=1.0,
):
    positive, negative = prompts_or_defaults(positive, negative)
    node = node_classes["PDiff_ApplyPromptDiffusion"]
    return node.execute(positive, negative, control, source, target, query, strength, start, end, mask=mask).result


def prepared(control, model):
    control.pre_run(model.model, model.model.model_sampling.percent_to_sigma)
    return control


def comfy_control(control, model, x_noisy, sigma, context, batched_number):
    with torch.no_grad():
        out = control.get_control(x_noisy, sigma, {"c_crossattn": context}, batched_number, {})
    return out["output"], out["middle"][0]


def expected_via_pdiff_core(reference, model, x_noisy, sigma, context, source, target, query, scale=1.0):
    """What the control must be, computed independently: ComfyUI's sampler space to the model's
    (x / sqrt(sigma^2 + 1), sigma -> timestep), images resized nearest-exact to latent x 8, in [-1, 1]."""
    sampling = model.model.model_sampling
    size = (x_noisy.shape[-2] * 8, x_noisy.shape[-1] * 8)
    prep = lambda image: F.interpolate(image.movedim(-1, 1), size=size, mode="nearest-exact") * 2 - 1  # noqa: E731
    pair = torch.cat([prep(source), prep(target)], dim=1)
    x_in = x_noisy / torch.sqrt(sigma[:, None, None, None] ** 2 + 1)
    return reference_outputs(reference, x_in, sampling.timestep(sigma), context, pair, prep(query), scale)


def test_apply_matches_pdiff_core_with_resizing_batches_and_low_memory_chunks(node_classes, loaded, reference):
    model, _, _, control = loaded
    g = torch.Generator().manual_seed(1)
    source, target = torch.rand(1, 40, 40, 3, generator=g), torch.rand(1, 40, 40, 3, generator=g)
    queries = torch.rand(2, 40, 40, 3, generator=g)  # one example pair over a batch of two queries
    positive, negative = apply(node_classes, control, source, target, queries, strength=0.7)
    c = prepared(positive[0][1]["control"], model)
    assert negative[0][1]["control"] is c  # one control for cond and uncond, like ControlNetApplyAdvanced

    sigma = model.model.model_sampling.sigma(torch.tensor([400.0] * 4))
    x = torch.randn(4, 4, 8, 8, generator=g)
    context = torch.randn(4, 77, 32, generator=g)
    # cond and uncond in one batch: [cond q0, cond q1, uncond q0, uncond q1]
    both = comfy_control(c, model, x, sigma, context, batched_number=2)
    q = torch.cat([queries, queries])
    assert_residuals_close(both, expected_via_pdiff_core(reference, model, x, sigma, context, source, target, q, 0.7))
    # low memory: cond and uncond evaluated in separate chunks
    for half in (slice(0, 2), slice(2, 4)):
        alone = comfy_control(c, model, x[half], sigma[half], context[half], batched_number=1)
        assert_residuals_close(alone, ([d[half] for d in both[0]], both[1][half]))


def test_a_batch_of_pairs_over_one_query(node_classes, loaded, reference):
    model, _, _, control = loaded
    g = torch.Generator().manual_seed(2)
    sources, targets = torch.rand(2, 32, 32, 3, generator=g), torch.rand(2, 32, 32, 3, generator=g)
    query = torch.rand(1, 32, 32, 3, generator=g)
    positive, _ = apply(node_classes, control, sources, targets, query)
    c = prepared(positive[0][1]["control"], model)
    sigma = model.model.model_sampling.sigma(torch.tensor([700.0, 700.0]))
    x, context = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 77, 32, generator=g)
    got = comfy_control(c, model, x, sigma, context, batched_number=1)
    assert_residuals_close(
        got, expected_via_pdiff_core(reference, model, x, sigma, context, sources, targets, query.expand(2, -1, -1, -1))
    )


def test_apply_chains_with_a_previous_controlnet_and_mutates_nothing(node_classes, loaded):
    model, _, _, control = loaded
    g = torch.Generator().manual_seed(3)
    images = [torch.rand(1, 32, 32, 3, generator=g) for _ in range(6)]
    positive = conditioning(torch.zeros(1, 77, 32))
    first_pos, first_neg = apply(node_classes, control, *images[:3], positive=positive)
    second_pos, _ = apply(node_classes, control, *images[3:], positive=first_pos, negative=first_neg)
    assert (
        "control" not in positive[0][1] and control.cond_hint_original is None and control.previous_controlnet is None
    )
    first, second = first_pos[0][1]["control"], second_pos[0][1]["control"]
    assert (
        second.previous_controlnet is first and second is not control and second.control_model is control.control_model
    )

    sigma = model.model.model_sampling.sigma(torch.tensor([300.0]))
    x, context = torch.randn(1, 4, 4, 4, generator=g), torch.randn(1, 77, 32, generator=g)
    chained = comfy_control(prepared(second, model), model, x, sigma, context, 1)
    alone_first = comfy_control(
        prepared(apply(node_classes, control, *images[:3])[0][0][1]["control"], model), model, x, sigma, context, 1
    )
    alone_second = comfy_control(
        prepared(apply(node_classes, control, *images[3:])[0][0][1]["control"], model), model, x, sigma, context, 1
    )
    for a, b, c in zip(chained[0], alone_first[0], alone_second[0]):
        torch.testing.assert_close(a, b + c, atol=ATOL, rtol=1e-4)


def test_start_and_end_percent_limit_when_the_control_applies(node_classes, loaded):
    model, _, _, control = loaded
    images = [torch.rand(1, 32, 32, 3) for _ in range(3)]
    c = prepared(apply(node_classes, control, *images, start=0.5, end=0.8)[0][0][1]["control"], model)
    sampling = model.model.model_sampling
    x, context = torch.randn(1, 4, 4, 4), torch.randn(1, 77, 32)
    for percent, active in ((0.1, False), (0.6, True), (0.95, False)):
        sigma = torch.tensor([sampling.percent_to_sigma(percent)])
        with torch.no_grad():
            out = c.get_control(x, sigma, {"c_crossattn": context}, 1, {})
        assert (out is not None) == active, percent


def test_mask_limits_where_the_control_applies(node_classes, loaded):
    model, _, _, control = loaded
    g = torch.Generator().manual_seed(4)
    images = [torch.rand(1, 32, 32, 3, generator=g) for _ in range(3)]
    sigma = model.model.model_sampling.sigma(torch.tensor([500.0]))
    x, context = torch.randn(1, 4, 4, 4, generator=g), torch.randn(1, 77, 32, generator=g)

    def run(mask):
        c = prepared(apply(node_classes, control, *images, mask=mask)[0][0][1]["control"], model)
        return comfy_control(c, model, x, sigma, context, 1)

    unmasked, ones = run(None), run(torch.ones(1, 32, 32))
    left = torch.zeros(1, 32, 32)
    left[..., :16] = 1.0
    half = run(left)
    for a, b, h in zip(unmasked[0], ones[0], half[0]):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-4)
        width = h.shape[-1]
        if width >= 2:  # coarser residuals average the mask's edge
            torch.testing.assert_close(h[..., : width // 2], a[..., : width // 2], atol=ATOL, rtol=1e-4)
            assert float(h[..., width // 2 :].abs().max()) == 0.0


def test_apply_refuses_a_plain_controlnet_and_stock_apply_refuses_prompt_diffusion(comfyui, node_classes, loaded):
    from comfy.controlnet import ControlNet as PlainControlNet

    model, _, _, control = loaded
    images = [torch.rand(1, 32, 32, 3) for _ in range(3)]
    with pytest.raises(ValueError, match="not a Prompt Diffusion ControlNet"):
        apply(node_classes, PlainControlNet(), *images)
    positive, _ = (
        comfyui["nodes"]
        .ControlNetApplyAdvanced()
        .apply_controlnet(
            conditioning(torch.zeros(1, 77, 32)),
            conditioning(torch.zeros(1, 77, 32)),
            control,
            images[2],
            1.0,
            0.0,
            1.0,
        )
    )
    c = prepared(positive[0][1]["control"], model)
    with pytest.raises(ValueError, match="Apply Prompt Diffusion"):
        comfy_control(c, model, torch.randn(1, 4, 4, 4), torch.tensor([1.0]), torch.randn(1, 77, 32), 1)


def test_settings_that_would_silently_give_no_control_are_errors(node_classes, loaded):
    _, _, _, control = loaded
    images = [torch.rand(1, 32, 32, 3) for _ in range(3)]
    with pytest.raises(ValueError, match="start_percent 0.8 is after end_percent 0.2"):
        apply(node_classes, control, *images, start=0.8, end=0.2)
    apply(node_classes, control, *images, start=0.5, end=0.5)  # an empty range is the user's explicit choice
    # LoadImage's MASK for an opaque image: zeros everywhere
    with pytest.raises(ValueError, match="mask is 0 everywhere.*without an alpha channel"):
        apply(node_classes, control, *images, mask=torch.zeros(1, 64, 64))


def test_more_queries_than_latents_is_an_error_not_a_silent_broadcast(node_classes, loaded):
    model, _, _, control = loaded
    pair = [torch.rand(1, 32, 32, 3) for _ in range(2)]
    c = prepared(apply(node_classes, control, *pair, torch.rand(2, 32, 32, 3))[0][0][1]["control"], model)
    sigma = model.model.model_sampling.sigma(torch.tensor([500.0, 500.0]))
    x, context = torch.randn(2, 4, 4, 4), torch.randn(2, 77, 32)
    # a latent batch of 1: cond and uncond in one batch (ComfyUI would feed query 2 nowhere) or alone
    for batch, batched_number in ((2, 2), (1, 1)):
        with pytest.raises(ValueError, match="batch of 2 .* but the latent batch is 1"):
            comfy_control(c, model, x[:batch], sigma[:batch], context[:batch], batched_number)
    comfy_control(c, model, x, sigma, context, batched_number=1)  # a latent batch of 2 is what it needs


def test_a_pair_of_another_aspect_ratio_is_cropped_with_a_warning(node_classes, loaded, caplog):
    _, _, _, control = loaded
    query = torch.rand(1, 32, 32, 3)
    apply(node_classes, control, torch.rand(1, 64, 65, 3), torch.rand(1, 64, 64, 3), query)  # within 2 %: quiet
    assert "centre-cropped" not in caplog.text
    apply(node_classes, control, torch.rand(1, 32, 64, 3), torch.rand(1, 64, 64, 3), query)
    warnings = [r.getMessage() for r in caplog.records if "centre-cropped" in r.getMessage()]
    assert len(warnings) == 1 and "example_source is 64x32 and the query 32x32" in warnings[0]


def test_every_input_and_output_has_a_tooltip_and_one_category(node_classes):
    for node_id in sorted(NODE_IDS):
        node = node_classes[node_id]
        inputs = {**node.INPUT_TYPES()["required"], **node.INPUT_TYPES().get("optional", {})}
        missing = [name for name, spec in inputs.items() if not (len(spec) > 1 and spec[1].get("tooltip"))]
        assert not missing, f"{node_id}: no tooltip on {missing}"
        assert all(node.OUTPUT_TOOLTIPS), f"{node_id}: outputs {node.OUTPUT_TOOLTIPS}"
        assert node.CATEGORY.split("/")[0] == "Prompt Diffusion", (node_id, node.CATEGORY)


def test_batch_mismatch_is_a_clear_error(node_classes, loaded):
    _, _, _, control = loaded
    with pytest.raises(ValueError, match="example_source 2, example_target 2, query 3"):
        apply(node_classes, control, torch.rand(2, 32, 32, 3), torch.rand(2, 32, 32, 3), torch.rand(3, 32, 32, 3))


# ----------------------------------------------------------------------------- pipeline-folder loader


@pytest.mark.parametrize(
    "which",
    [
        "tiny test model",
        "tiny, tokenizer.json only",
        "embedded pdiff-toyworld",
        *(f"preset {name}" for name in CPU_PRESETS),
    ],
)
def test_pipeline_folder_loader_builds_comfy_objects_that_match_diffusers(comfyui, tiny_pipeline_dir, which, request):
    from pdiff_core.pipeline import PromptDiffusionPipeline

    folders = {"tiny test model": tiny_pipeline_dir, "embedded pdiff-toyworld": DEFAULT_MODEL}
    if which.startswith("preset "):
        folders[which] = request.getfixturevalue("preset_model")(which.split()[1])[0]
    folder = folders.get(which) or request.getfixturevalue("json_tokenizer_pipeline_dir")
    if not (folder / "model_index.json").is_file():
        pytest.skip(f"{folder} is not in this checkout")
    model, clip, vae, control = pack_module(comfyui["nodes"], "pipeline_folder").load_pipeline_folder(folder)
    # The tokenizer.json-only folder is checked against diffusers on the original files.
    pipe = PromptDiffusionPipeline.from_pretrained(str(folders.get(which, tiny_pipeline_dir)))
    text = "a red sphere and a blue cube"
    ids = pipe.tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    g = torch.Generator().manual_seed(7)
    width = pipe.unet.config.cross_attention_dim
    with torch.no_grad():
        torch.testing.assert_close(
            clip.encode_from_tokens(clip.tokenize(text)), pipe.text_encoder(ids)[0], atol=1e-5, rtol=1e-4
        )
        channels = pipe.unet.config.in_channels
        z = torch.randn(1, channels, 8, 8, generator=g)
        decoded = (pipe.vae.decode(z).sample / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)
        torch.testing.assert_close(vae.decode(z), decoded, atol=1e-5, rtol=1e-4)
        x, t, context = (
            torch.randn(2, channels, 8, 8, generator=g),
            torch.tensor([500.0, 20.0]),
            torch.randn(2, 77, width, generator=g),
        )
        torch.testing.assert_close(
            model.model.diffusion_model(x, t, context=context),
            pipe.unet(x, t, encoder_hidden_states=context).sample,
            atol=1e-5,
            rtol=1e-4,
        )
        images = torch.rand(2, 9, 64, 64, generator=g) * 2 - 1
        assert_residuals_close(
            control_outputs(control.control_model, x, t, context, images),
            reference_outputs(pipe.controlnet, x, t, context, images[:, :6], images[:, 6:]),
        )


def shapes(state_dict):
    return {k: tuple(v.shape) for k, v in state_dict.items()}


@pytest.mark.parametrize("name", list(PRESETS))
def test_comfyui_builds_every_presets_unet_control_and_vae_from_the_loaders_configs(comfyui, name):
    """Every preset, SD1.5's too, on the meta device (no memory, no weights): ComfyUI's UNet, the pack's
    control model and ComfyUI's VAE, built from the loader's translation of the preset's diffusers
    configs, have exactly the diffusers models' parameters, by name (through the weight-name maps) and shape."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    import comfy.diffusers_convert
    import comfy.ldm.models.autoencoder
    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
    import comfy.ops
    import comfy.utils

    from pdiff_core.ldm_config import ldm_unet_config
    from pdiff_core.model import PromptDiffusionControlNetModel

    preset = PRESETS[name]
    group_norm = pack_module(comfyui["nodes"], "group_norm")
    pipeline_folder = pack_module(comfyui["nodes"], "pipeline_folder")
    with torch.device("meta"):
        unet = UNet2DConditionModel(**preset.unet_config())
        controlnet = PromptDiffusionControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=preset.hint_channels
        )
        vae = AutoencoderKL(**preset.vae_config())

        config = dict(unet.config)
        ldm = ldm_unet_config(config)
        operations = group_norm.group_norm_operations(comfy.ops.disable_weight_init, config)
        comfy_unet = openaimodel.UNetModel(**ldm, operations=operations)
        names = comfy.utils.unet_to_diffusers(ldm)
        assert shapes(comfy_unet.state_dict()) == {names[k]: v for k, v in shapes(unet.state_dict()).items()}

        config = dict(controlnet.config)
        control = pack_module(comfyui["nodes"], "control").PromptDiffusionControlModel(
            list(config["conditioning_embedding_out_channels"]),
            operations=group_norm.group_norm_operations(comfy.ops.disable_weight_init, config),
            **ldm_unet_config(config, controlnet=True),
        )
        expected = diffusers_to_ldm(controlnet.state_dict(), preset.layers_per_block, prefix="")
        assert shapes(control.state_dict()) == shapes(expected)

        config = dict(vae.config)
        with pipeline_folder.vae_norm_groups(config):
            comfy_vae = comfy.ldm.models.autoencoder.AutoencoderKL(
                **pipeline_folder.vae_params(config, Path(f"{name}/vae/config.json"))
            )
        expected = comfy.diffusers_convert.convert_vae_state_dict(vae.state_dict())
        assert shapes(comfy_vae.state_dict()) == shapes(expected)
    assert {m.num_groups for m in comfy_vae.modules() if isinstance(m, torch.nn.GroupNorm)} == {preset.vae_norm_groups}
    assert {m.num_groups for m in comfy_unet.modules() if isinstance(m, torch.nn.GroupNorm)} == {preset.norm_groups}


def test_pipeline_folder_errors_name_the_missing_file(comfyui, tiny_pipeline_dir, tmp_path):
    pipeline_folder = pack_module(comfyui["nodes"], "pipeline_folder")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_pipeline_dir, broken)
    (broken / "tokenizer" / "merges.txt").unlink()
    (broken / "tokenizer" / "tokenizer.json").unlink(missing_ok=True)
    with pytest.raises(pipeline_folder.PipelineFolderError, match="merges.txt .* or tokenizer.json"):
        pipeline_folder.load_pipeline_folder(broken)
    shutil.copytree(tiny_pipeline_dir / "tokenizer", broken / "tokenizer", dirs_exist_ok=True)
    unet_config = broken / "unet" / "config.json"
    config = json.loads(unet_config.read_text())
    unet_config.write_text(json.dumps({**config, "block_out_channels": [32, 48]}))
    with pytest.raises(pipeline_folder.PipelineFolderError, match=r"unet/config.json: block_out_channels \[32, 48\]"):
        pipeline_folder.load_pipeline_folder(broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(pipeline_folder.PipelineFolderError, match="unet/config.json"):
        pipeline_folder.load_pipeline_folder(broken)


def test_pipeline_folder_loader_refuses_code_in_the_folder(comfyui, tiny_pipeline_dir, tmp_path):
    from payloads import plant_module
    from pdiff_core.model_folder import ModelFolderError

    hostile = tmp_path / "hostile"
    shutil.copytree(tiny_pipeline_dir, hostile)
    marker = tmp_path / "marker"
    module = plant_module(hostile, "unet", marker)
    with pytest.raises(ModelFolderError) as info:
        pack_module(comfyui["nodes"], "pipeline_folder").load_pipeline_folder(hostile)
    assert not marker.exists() and str(module) in str(info.value)


# ----------------------------------------------------------------------------- image helpers


def test_example_pair_and_side_by_side_preview(comfyui, node_classes):
    source, target, query = torch.rand(1, 40, 60, 3), torch.rand(2, 20, 20, 3), torch.rand(1, 32, 32, 3)
    pair = node_classes["PDiff_MakeExamplePair"].execute(source, target, size_like=query).result
    assert [tuple(p.shape) for p in pair] == [(2, 32, 32, 3), (2, 32, 32, 3)]
    torch.testing.assert_close(pair[0][0], pair[0][1])
    result = torch.rand(2, 32, 32, 3)
    preview = pack_module(comfyui["nodes"], "apply").side_by_side(*pair, query, result)
    assert preview.shape[:2] == (2, 32) and preview.shape[2] > 4 * 32
    torch.testing.assert_close(preview[:, :, -32:], result)


# ----------------------------------------------------------------------------- the same numbers both ways


@pytest.mark.parametrize(
    "variant",
    [
        "epsilon",
        "v_prediction",
        "v_prediction, 8 latent channels",
        *(f"epsilon, preset {name}" for name in CPU_PRESETS),
    ],
)
def test_stock_nodes_and_the_pdiff_core_pipeline_give_the_same_image(
    comfyui, node_classes, tiny_pipeline, request, variant
):
    """Same weights, sampler, seed and inputs (one example pair, two queries): loader -> CLIPTextEncode ->
    Apply Prompt Diffusion -> KSampler (ddim) -> VAEDecode against `PromptDiffusionPipeline` with DDIM.

    ComfyUI's "ddim" is Euler in sigma space, which is DDIM (eta 0) exactly when both use the same
    timesteps (its "ddim_uniform" scheduler = diffusers' "leading" spacing with steps_offset 1, SD1.5's;
    "simple" = "trailing", the small presets' and the shipped workflows') and DDIM's last step goes
    to sigma 0 (set_alpha_to_one=True). ComfyUI starts from noise * sigma_0 in its variance-exploding
    space, i.e. noise * sigma_0 / sqrt(1 + sigma_0^2) in the pipeline's, except where sigma_0 is the
    schedule's largest ("simple"): there from noise * sqrt(1 + sigma_0^2), the pipeline's plain noise. Left: float32 rounding in two
    implementations (attention kernels, sigma <-> timestep interpolation): measured 1e-6 on [0, 1] pixels
    with the tiny random-weight model (8 steps, guidance 4), asserted at 1e-5.
    """
    from diffusers import DDIMScheduler

    import comfy.sample
    import comfy.samplers

    nodes = comfyui["nodes"]
    prediction_type = variant.split(",")[0]
    if variant == "epsilon":
        model, clip, vae, control = request.getfixturevalue("loaded")
    elif variant == "v_prediction":
        model, clip, vae, control = request.getfixturevalue("loaded_v_prediction")
    elif "preset" in variant:  # the embedded preset's 8 latent channels too
        _, tiny_pipeline, (model, clip, vae, control) = request.getfixturevalue("preset_model")(variant.split()[-1])
    else:  # KSampler widens EmptyLatentImage's 4 channels to the model's 8
        tiny_pipeline, (model, clip, vae, control) = request.getfixturevalue("latent8")
    g = torch.Generator().manual_seed(6)
    source, target = (torch.rand(1, 64, 64, 3, generator=g) for _ in range(2))
    query = torch.rand(2, 64, 64, 3, generator=g)  # one example pair over a batch of two queries
    text, steps, cfg, seed = "a red sphere and a blue cube", 8, 4.0, 42
    # The first variant samples as SD1.5 (leading), the others as their presets say (trailing).
    spacing = "leading" if variant == "epsilon" else tiny_pipeline.scheduler.config.timestep_spacing
    scheduler = {"leading": "ddim_uniform", "trailing": "simple"}[spacing]

    with torch.inference_mode():  # as ComfyUI's executor runs nodes
        positive = nodes.CLIPTextEncode().encode(clip, text)[0]
        negative = nodes.CLIPTextEncode().encode(clip, "")[0]
        positive, negative = apply(node_classes, control, source, target, query, positive=positive, negative=negative)
        latent = nodes.EmptyLatentImage().generate(64, 64, 2)[0]
        samples = nodes.KSampler().sample(model, seed, steps, cfg, "ddim", scheduler, positive, negative, latent)[0]
        comfy_image = nodes.VAEDecode().decode(vae, samples)[0]
        other = nodes.KSampler().sample(model, seed + 1, steps, cfg, "ddim", scheduler, positive, negative, latent)[0]
        other_image = nodes.VAEDecode().decode(vae, other)[0]

    sigma0 = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps)[0]
    noise = comfy.sample.prepare_noise(comfy.sample.fix_empty_latent_channels(model, latent["samples"]), seed)
    tiny_pipeline.scheduler = DDIMScheduler.from_config(
        tiny_pipeline.scheduler.config,
        set_alpha_to_one=True,
        prediction_type=prediction_type,
        timestep_spacing=spacing,
    )
    pipe_image = tiny_pipeline(
        text,
        example_pair=(source.movedim(-1, 1), target.movedim(-1, 1)),
        query=query.movedim(-1, 1),
        num_inference_steps=steps,
        guidance_scale=cfg,
        latents=noise if spacing == "trailing" else noise * sigma0 / torch.sqrt(1 + sigma0**2),
        output_type="pt",
    ).images.movedim(1, -1)

    assert comfy_image.shape == pipe_image.shape == (2, 64, 64, 3)
    assert float(comfy_image.std()) > 0.01 and float((comfy_image[0] - comfy_image[1]).abs().max()) > 1e-2
    torch.testing.assert_close(comfy_image, pipe_image, atol=1e-5, rtol=0)
    assert float((other_image - comfy_image).abs().max()) > 1e-2


# ----------------------------------------------------------------------------- few-shot: K example pairs per query


def apply_few_shot(
    node_classes,
    control,
    sources,
    targets,
    query,
    combine="residuals",
    weights="",
    positive=None,
    negative=None,
    strength=1.0,
    mask=None,
    start=0.0,
    end=1.0,
):
    positive, negative = prompts_or_defaults(positive, negative)
    node = node_classes["PDiff_ApplyPromptDiffusionFewShot"]
    return node.execute(
        positive, negative, control, sources, targets, query, combine, weights, strength, start, end, mask=mask
    ).result


def test_few_shot_apply_refuses_what_would_silently_give_no_control(node_classes, loaded):
    _, _, _, control = loaded
    images = [torch.rand(2, 32, 32, 3), torch.rand(2, 32, 32, 3), torch.rand(1, 32, 32, 3)]
    with pytest.raises(ValueError, match="start_percent 0.8 is after end_percent 0.2"):
        apply_few_shot(node_classes, control, *images, start=0.8, end=0.2)
    with pytest.raises(ValueError, match="mask is 0 everywhere"):
        apply_few_shot(node_classes, control, *images, mask=torch.zeros(1, 64, 64))
    with pytest.raises(ValueError, match="not a Prompt Diffusion ControlNet"):
        apply_few_shot(node_classes, object(), *images)


@pytest.mark.parametrize("combine, queries", [("residuals", 2), ("embedding", 2), ("residuals", 1)])
def test_few_shot_apply_matches_per_pair_pdiff_core_computations(node_classes, loaded, reference, combine, queries):
    """Three pairs, weights 1:2:1, over one or two queries (ComfyUI broadcasts a batch of 1 only inside the
    model) with cond and uncond in one batch and in separate chunks, against the reference ControlNet run
    here pair by pair (residuals) or on the averaged pair embedding."""
    model, _, _, control = loaded
    g = torch.Generator().manual_seed(7)
    sources, targets = torch.rand(3, 40, 40, 3, generator=g), torch.rand(3, 40, 40, 3, generator=g)
    queries = torch.rand(queries, 40, 40, 3, generator=g)
    positive, negative = apply_few_shot(
        node_classes, control, sources, targets, queries, combine, "1, 2, 1", strength=0.7
    )
    c = prepared(positive[0][1]["control"], model)
    assert (
        negative[0][1]["control"] is c and "shot_weights" not in control.extra_args
    )  # the loaded control is untouched

    sampling = model.model.model_sampling
    sigma = sampling.sigma(torch.tensor([400.0] * 4))
    x, context = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 77, 32, generator=g)
    both = comfy_control(c, model, x, sigma, context, batched_number=2)

    weights = [0.25, 0.5, 0.25]
    q = queries.repeat(4 // queries.shape[0], 1, 1, 1)  # [cond q0, cond q1, uncond q0, uncond q1] or q0 x 4
    size = (64, 64)
    prep = lambda image: F.interpolate(image.movedim(-1, 1), size=size, mode="nearest-exact") * 2 - 1  # noqa: E731
    x_in, timesteps = x / torch.sqrt(sigma[:, None, None, None] ** 2 + 1), sampling.timestep(sigma)
    pairs = [
        torch.cat([prep(sources[k : k + 1]), prep(targets[k : k + 1])], dim=1).expand(4, -1, -1, -1) for k in range(3)
    ]
    if combine == "residuals":
        per_pair = [reference_outputs(reference, x_in, timesteps, context, pair, prep(q), 0.7) for pair in pairs]
        expected = (
            [sum(w * out[0][i] for w, out in zip(weights, per_pair)) for i in range(len(per_pair[0][0]))],
            sum(w * out[1] for w, out in zip(weights, per_pair)),
        )
    else:
        with torch.no_grad():
            hint = sum(
                w * reference.controlnet_cond_embedding(pair) for w, pair in zip(weights, pairs)
            ) + reference.controlnet_query_cond_embedding(prep(q))
            down, mid = reference(
                x_in,
                timesteps,
                encoder_hidden_states=context,
                hint_embedding=hint,
                conditioning_scale=0.7,
                return_dict=False,
            )
        expected = (list(down), mid)
    assert_residuals_close(both, expected)
    one_pair = reference_outputs(reference, x_in, timesteps, context, pairs[0], prep(q), 0.7)
    assert max(float((a - b).abs().max()) for a, b in zip(expected[0], one_pair[0])) > 1e-3  # the other pairs count
    for half in (slice(0, 2), slice(2, 4)):  # low memory: cond and uncond in separate chunks
        alone = comfy_control(c, model, x[half], sigma[half], context[half], batched_number=1)
        assert_residuals_close(alone, ([d[half] for d in both[0]], both[1][half]))


def test_one_shot_through_the_few_shot_node_equals_apply(node_classes, loaded):
    model, _, _, control = loaded
    g = torch.Generator().manual_seed(8)
    source, target, query = (torch.rand(1, 32, 32, 3, generator=g) for _ in range(3))
    mask = torch.zeros(1, 32, 32)
    mask[..., :16] = 1.0
    sigma = model.model.model_sampling.sigma(torch.tensor([500.0]))
    x, context = torch.randn(1, 4, 4, 4, generator=g), torch.randn(1, 77, 32, generator=g)
    few = prepared(apply_few_shot(node_classes, control, source, target, query, mask=mask)[0][0][1]["control"], model)
    one = prepared(apply(node_classes, control, source, target, query, mask=mask)[0][0][1]["control"], model)
    assert_residuals_close(
        comfy_control(few, model, x, sigma, context, 1), comfy_control(one, model, x, sigma, context, 1)
    )


def test_few_shot_node_errors_name_the_input(node_classes, loaded):
    _, _, _, control = loaded
    images = torch.rand(2, 32, 32, 3)
    with pytest.raises(ValueError, match="2 weights for 2 example pairs|1 weights for 2 example pairs"):
        apply_few_shot(node_classes, control, images, images, images[:1], weights="1")
    with pytest.raises(ValueError, match="comma-separated numbers"):
        apply_few_shot(node_classes, control, images, images, images[:1], weights="1, x")
    with pytest.raises(ValueError, match="one length"):
        apply_few_shot(node_classes, control, images, images[:1], images[:1])


@pytest.mark.parametrize("combine", ["residuals", "embedding"])
def test_few_shot_stock_nodes_and_the_pipeline_give_the_same_image(
    comfyui, node_classes, loaded, tiny_pipeline, combine
):
    """As the one-pair test above, with three example pairs (weights 1:1:2) over two queries."""
    from diffusers import DDIMScheduler

    import comfy.sample
    import comfy.samplers

    nodes = comfyui["nodes"]
    model, clip, vae, control = loaded
    g = torch.Generator().manual_seed(9)
    sources, targets = torch.rand(3, 64, 64, 3, generator=g), torch.rand(3, 64, 64, 3, generator=g)
    query = torch.rand(2, 64, 64, 3, generator=g)
    text, steps, cfg, seed = "a red sphere and a blue cube", 8, 4.0, 42  # 8: ddim_uniform = leading spacing

    def comfy_image(sources, targets, weights):
        with torch.inference_mode():
            positive = nodes.CLIPTextEncode().encode(clip, text)[0]
            negative = nodes.CLIPTextEncode().encode(clip, "")[0]
            positive, negative = apply_few_shot(
                node_classes, control, sources, targets, query, combine, weights, positive=positive, negative=negative
            )
            latent = nodes.EmptyLatentImage().generate(64, 64, 2)[0]
            samples = nodes.KSampler().sample(
                model, seed, steps, cfg, "ddim", "ddim_uniform", positive, negative, latent
            )[0]
            return nodes.VAEDecode().decode(vae, samples)[0], latent

    image, latent = comfy_image(sources, targets, "1, 1, 2")
    sigma0 = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "ddim_uniform", steps)[0]
    noise = comfy.sample.prepare_noise(latent["samples"], seed)
    tiny_pipeline.scheduler = DDIMScheduler.from_config(
        tiny_pipeline.scheduler.config, set_alpha_to_one=True, timestep_spacing="leading"
    )
    pipe_image = tiny_pipeline(
        text,
        example_pairs=[(sources[k].movedim(-1, 0), targets[k].movedim(-1, 0)) for k in range(3)],
        shot_weights=[1, 1, 2],
        shot_combine=combine,
        query=query.movedim(-1, 1),
        num_inference_steps=steps,
        guidance_scale=cfg,
        latents=noise * sigma0 / torch.sqrt(1 + sigma0**2),
        output_type="pt",
    ).images.movedim(1, -1)
    assert image.shape == pipe_image.shape == (2, 64, 64, 3)
    torch.testing.assert_close(image, pipe_image, atol=1e-5, rtol=0)
    first_only, _ = comfy_image(sources[:1], targets[:1], "")
    assert float((first_only - image).abs().max()) > 1e-4, (
        "the other pairs changed nothing: the test would not see a bug"
    )


# ----------------------------------------------------------------------------- annotators


def test_annotator_runs_from_local_weights_and_names_missing_ones(comfyui, node_classes, tmp_path):
    from controlnet_aux.hed import ControlNetHED_Apache2

    annotate = node_classes["PDiff_Annotate"]
    weights = tmp_path / "annotators"
    weights.mkdir()
    comfyui["folder_paths"].add_model_folder_path("annotators", str(weights))
    with pytest.raises(FileNotFoundError, match=r"'table5_pidinet.pth' not found in .*annotators"):
        annotate.execute(torch.rand(1, 32, 32, 3), "soft edge (PiDiNet)")
    torch.manual_seed(0)
    torch.save(ControlNetHED_Apache2().state_dict(), weights / "ControlNetHED.pth")  # random weights: wiring only
    images = torch.rand(2, 40, 48, 3)
    edges = annotate.execute(images, "soft edge (HED)", resolution=64).result[0]
    assert edges.shape == (2, 40, 48, 3)
    assert 0.0 <= float(edges.min()) and float(edges.max()) <= 1.0 and float(edges.std()) > 0
    finer = annotate.execute(images, "soft edge (HED)", resolution=128).result[0]
    assert finer.shape == edges.shape and float((finer - edges).abs().max()) > 0.01  # the resolution is used
