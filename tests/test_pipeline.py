import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

from pdiff_core.defaults import DEFAULT_MODEL

STEPS = 4


def images(seed: int = 0, size: int = 64, n: int = 1):
    rng = np.random.default_rng(seed)
    return [PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def run(pipe, seed=0, **kwargs):
    src, tgt, query = kwargs.pop("src", None), kwargs.pop("tgt", None), kwargs.pop("query", None)
    src = images(1)[0] if src is None else src
    tgt = images(2)[0] if tgt is None else tgt
    query = images(3)[0] if query is None else query
    defaults = dict(
        prompt="a red sphere",
        example_pair=(src, tgt),
        query=query,
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    )
    defaults.update(kwargs)
    return pipe(**defaults).images


class CallCounter:
    def __init__(self, module):
        self.calls, self.batches, self.inputs = 0, [], []
        module.register_forward_hook(self.hook)

    def hook(self, module, args, output):
        self.calls += 1
        self.inputs.append(args[0].detach().clone() if args else None)
        self.batches.append(args[0].shape[0] if args else None)


def test_same_seed_same_image_different_seed_different(tiny_pipeline):
    a, b, c = run(tiny_pipeline, 0), run(tiny_pipeline, 0), run(tiny_pipeline, 1)
    assert a.shape == (1, 64, 64, 3)
    assert np.array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_guidance_one_skips_the_unconditional_pass(tiny_pipeline):
    unet = CallCounter(tiny_pipeline.unet)
    run(tiny_pipeline, guidance_scale=1.0)
    assert unet.calls == STEPS and set(unet.batches) == {1}
    unet2 = CallCounter(tiny_pipeline.unet)
    run(tiny_pipeline, guidance_scale=9.0)
    # cond and uncond go through the UNet as one batch of two
    assert unet2.calls == STEPS and set(unet2.batches) == {2}


def test_hint_encoders_run_once_per_generation(tiny_pipeline):
    pair_enc = CallCounter(tiny_pipeline.controlnet.controlnet_cond_embedding)
    query_enc = CallCounter(tiny_pipeline.controlnet.controlnet_query_cond_embedding)
    run(tiny_pipeline, num_inference_steps=6)
    assert pair_enc.calls == 1 and query_enc.calls == 1


def test_hints_enter_in_minus_one_to_one(tiny_pipeline):
    """The published weights were trained on 2*x/255-1; the diffusers research port feeds [0, 1]."""
    pair_enc = CallCounter(tiny_pipeline.controlnet.controlnet_cond_embedding)
    query_enc = CallCounter(tiny_pipeline.controlnet.controlnet_query_cond_embedding)
    black = PIL.Image.new("RGB", (64, 64), (0, 0, 0))
    white = PIL.Image.new("RGB", (64, 64), (255, 255, 255))
    mid = PIL.Image.new("RGB", (64, 64), (51, 102, 204))
    run(tiny_pipeline, src=black, tgt=white, query=mid)
    pair = pair_enc.inputs[0]
    assert torch.all(pair[:, :3] == -1.0) and torch.all(pair[:, 3:] == 1.0)
    expected = torch.tensor([51, 102, 204]) * 2 / 255 - 1
    assert torch.allclose(query_enc.inputs[0][0, :, 0, 0], expected, atol=1e-6)


def test_unconditional_branch_keeps_pair_and_query(tiny_pipeline):
    seen = []
    original = tiny_pipeline.controlnet.forward

    def spy(*args, **kwargs):
        seen.append((kwargs["hint_embedding"], kwargs["encoder_hidden_states"]))
        return original(*args, **kwargs)

    tiny_pipeline.controlnet.forward = spy
    run(tiny_pipeline, guidance_scale=5.0, negative_prompt="blurry")
    hint, text = seen[0]
    uncond_hint, cond_hint = hint.chunk(2)
    uncond_text, cond_text = text.chunk(2)
    assert torch.equal(uncond_hint, cond_hint) and uncond_hint.abs().max() > 0
    assert not torch.equal(uncond_text, cond_text)


def test_research_port_argument_names_give_the_same_image(tiny_pipeline):
    src, tgt, query = images(1)[0], images(2)[0], images(3)[0]
    ours = run(tiny_pipeline, src=src, tgt=tgt, query=query)
    port = tiny_pipeline(
        "a red sphere",
        image_pair=[src, tgt],
        image=query,
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert np.array_equal(ours, port)


def test_pil_numpy_and_tensor_inputs_agree(tiny_pipeline):
    src, tgt, query = images(1)[0], images(2)[0], images(3)[0]
    as_np = lambda im: np.asarray(im)  # noqa: E731
    as_pt = lambda im: torch.from_numpy(np.asarray(im)).permute(2, 0, 1).float() / 255  # noqa: E731
    a = run(tiny_pipeline, src=src, tgt=tgt, query=query)
    b = run(tiny_pipeline, src=as_np(src), tgt=as_np(tgt), query=as_np(query))
    c = run(tiny_pipeline, src=as_pt(src), tgt=as_pt(tgt), query=as_pt(query))
    assert np.abs(a - b).max() < 1e-6 and np.abs(a - c).max() < 1e-5


def test_the_example_pair_changes_the_result(tiny_pipeline):
    a = run(tiny_pipeline, src=images(1)[0], output_type="latent")
    b = run(tiny_pipeline, src=images(7)[0], output_type="latent")
    assert (a - b).abs().max() > 1e-3


def test_batches_broadcast_and_images_per_prompt(tiny_pipeline):
    queries = images(4, n=3)
    out = run(tiny_pipeline, query=queries, num_images_per_prompt=2)
    assert out.shape == (6, 64, 64, 3)
    out = run(tiny_pipeline, prompt=["a", "b"], src=images(5, n=2), tgt=images(6, n=2))
    assert out.shape == (2, 64, 64, 3)
    with pytest.raises(ValueError, match="batch of 2 but the batch is 3"):
        run(tiny_pipeline, query=queries, src=images(5, n=2))
    with pytest.raises(ValueError, match="2 prompts for a batch of 3"):
        run(tiny_pipeline, prompt=["a", "b"], query=queries)


@pytest.mark.parametrize("scheduler_cls", [UniPCMultistepScheduler, DPMSolverMultistepScheduler])
def test_other_schedulers(tiny_pipeline, scheduler_cls):
    tiny_pipeline.scheduler = scheduler_cls.from_config(tiny_pipeline.scheduler.config)
    out = run(tiny_pipeline)
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()


def test_bfloat16_runs(tiny_pipeline):
    tiny_pipeline.to(torch_dtype=torch.bfloat16)
    out = run(tiny_pipeline, output_type="pt")
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out.float()).all()


def test_conditioning_scale_zero_ignores_the_control(tiny_pipeline):
    a = run(tiny_pipeline, controlnet_conditioning_scale=0.0, src=images(1)[0])
    b = run(tiny_pipeline, controlnet_conditioning_scale=0.0, src=images(7)[0])
    assert np.array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(query=images(3, size=60)[0], src=images(1, size=60)[0], tgt=images(2, size=60)[0]),
            "not a multiple of 8",
        ),
        (dict(query=images(3, size=128)[0]), "must have one size"),
        (dict(query=np.zeros((64, 64, 4), np.uint8)), "HxWx3"),
        (dict(query=torch.zeros(1, 1, 64, 64)), "Bx3xHxW"),
        (dict(query=torch.full((3, 64, 64), 2.0)), r"must be in \[0, 1\]"),
        (dict(prompt=[]), "prompt is an empty list"),
        (dict(query=[]), "query is an empty list"),
        (dict(example_pair=(images(1)[0],)), r"\(source, target\) pair"),
        (dict(query="an image path"), "expected PIL images"),
    ],
)
def test_bad_inputs_are_named(tiny_pipeline, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        run(tiny_pipeline, **kwargs)


def test_aliases_conflict_is_refused(tiny_pipeline):
    with pytest.raises(ValueError, match="not both"):
        run(tiny_pipeline, image=images(3)[0])


def test_check_inputs_resolves_the_arguments_without_running_a_model(tiny_pipeline):
    counters = [CallCounter(m) for m in (tiny_pipeline.text_encoder, tiny_pipeline.controlnet, tiny_pipeline.unet)]
    source, target, query = images(1)[0], images(2)[0], images(3)[0]
    pairs, resolved, weights, batch = tiny_pipeline.check_inputs(
        ["a", "b"], None, None, image_pair=[source, target], image=query
    )
    assert pairs == [(source, target)] and resolved is query and weights == [1.0] and batch == 2
    _, _, weights, _ = tiny_pipeline.check_inputs(
        "a", None, query, example_pairs=[(source, target)] * 2, shot_weights=[3, 1]
    )
    assert weights == [0.75, 0.25]
    with pytest.raises(ValueError, match="num_images_per_prompt must be at least 1"):
        tiny_pipeline.check_inputs("a", (source, target), query, num_images_per_prompt=0)
    assert [c.calls for c in counters] == [0, 0, 0]


def test_height_width_resize_all_inputs(tiny_pipeline):
    out = run(tiny_pipeline, query=images(3, size=128)[0], height=64, width=64)
    assert out.shape == (1, 64, 64, 3)


def test_the_embedded_model_starts_sampling_at_the_noise_level_of_pure_noise():
    """Sampling starts from pure noise, so its first step is the last training timestep (trailing
    spacing), not t = 951 of 20 leading steps, where the model saw some of the image left."""
    scheduler = DDIMScheduler.from_pretrained(str(DEFAULT_MODEL / "scheduler"))
    for steps in (4, 20, 50):
        scheduler.set_timesteps(steps)
        assert int(scheduler.timesteps[0]) == scheduler.config.num_train_timesteps - 1, steps
