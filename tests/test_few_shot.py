"""Few-shot: several example pairs for one query (`example_pairs=`), checked against per-pair
computations done here with the model's own submodules."""

import numpy as np
import PIL.Image
import pytest
import torch

from pdiff_core.shots import normalise_weights, parse_shot_weights

STEPS = 3


def images(seed, size=64, n=1):
    rng = np.random.default_rng(seed)
    return [PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def pairs(*seeds):
    return [(images(s)[0], images(s + 50)[0]) for s in seeds]


def run(pipe, **kwargs):
    defaults = dict(
        prompt="a red sphere",
        example_pair=pairs(1)[0],
        query=images(3)[0],
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    return pipe(**{**defaults, **kwargs}).images


def few_shot(pipe, example_pairs, **kwargs):
    return run(pipe, example_pair=None, example_pairs=example_pairs, **kwargs)


class CallCounter:
    """How often a module runs, and the batch of its first input each time."""

    def __init__(self, module):
        self.calls, self.batches = 0, []
        module.register_forward_hook(self.hook)

    def hook(self, module, args, output):
        self.calls += 1
        self.batches.append(args[0].shape[0])


def hint_tensor(image):
    return torch.from_numpy(np.asarray(image)).permute(2, 0, 1)[None].float() / 127.5 - 1


class FirstStep:
    """What the pipeline gave the ControlNet and the UNet at the first step."""

    def __init__(self, pipe):
        self.control, self.unet = None, None
        control_forward, unet_forward = pipe.controlnet.forward, pipe.unet.forward

        def control_spy(*args, **kwargs):
            self.control = self.control or (args, kwargs)
            return control_forward(*args, **kwargs)

        def unet_spy(*args, **kwargs):
            self.unet = self.unet or (args, kwargs)
            return unet_forward(*args, **kwargs)

        pipe.controlnet.forward, pipe.unet.forward = control_spy, unet_spy


@pytest.mark.parametrize("combine", ["residuals", "embedding"])
def test_copies_of_one_pair_give_the_one_pair_image(tiny_pipeline, combine):
    ((source, target),) = pairs(1)
    one = run(tiny_pipeline, example_pair=(source, target), output_type="latent")
    three = few_shot(tiny_pipeline, [(source, target)] * 3, shot_combine=combine, output_type="latent")
    torch.testing.assert_close(three, one, atol=1e-4, rtol=1e-5)  # float rounding of batch-3 vs batch-1 convs


@pytest.mark.parametrize("combine", ["residuals", "embedding"])
def test_a_zero_weight_drops_that_pair(tiny_pipeline, combine):
    first, second = pairs(1, 2)
    alone = few_shot(tiny_pipeline, [first], shot_combine=combine, output_type="latent")
    weighted = few_shot(
        tiny_pipeline, [first, second], shot_weights=[3.0, 0.0], shot_combine=combine, output_type="latent"
    )
    both = few_shot(tiny_pipeline, [first, second], shot_combine=combine, output_type="latent")
    torch.testing.assert_close(weighted, alone, atol=1e-4, rtol=1e-5)
    # The tiny model moves its latents by about 1e-3 for another pair (0.9e-3 with transformers 5):
    # five times the tolerance above, so a weight that were ignored would fail it.
    assert (alone - both).abs().max() > 5e-4, "the second pair changed nothing: the test would not see a bug"


def test_residuals_are_the_weighted_mean_of_one_pass_per_pair(tiny_pipeline):
    example_pairs, weights = pairs(1, 2, 3), [1.0, 2.0, 5.0]
    query = images(3)[0]
    control = CallCounter(tiny_pipeline.controlnet)
    pair_encoder = CallCounter(tiny_pipeline.controlnet.controlnet_cond_embedding)
    seen = FirstStep(tiny_pipeline)
    few_shot(tiny_pipeline, example_pairs, shot_weights=weights, guidance_scale=4.0)
    # one control call per step, all pairs in one batch (3 pairs x cond/uncond); encoders once
    assert control.calls == STEPS and set(control.batches) == {6}
    assert pair_encoder.calls == 1

    (latents, t), kwargs = seen.unet[0][:2], seen.unet[1]
    text = kwargs["encoder_hidden_states"]
    expected_down, expected_mid = None, 0
    with torch.no_grad():
        for (source, target), w in zip(example_pairs, weights):
            pair = torch.cat([hint_tensor(source), hint_tensor(target)], dim=1).expand(2, -1, -1, -1)
            down, mid = tiny_pipeline.controlnet(
                latents,
                t,
                encoder_hidden_states=text,
                controlnet_cond=pair,
                controlnet_query_cond=hint_tensor(query).expand(2, -1, -1, -1),
                return_dict=False,
            )
            scaled = [d * w / sum(weights) for d in down]
            expected_down = scaled if expected_down is None else [a + b for a, b in zip(expected_down, scaled)]
            expected_mid = expected_mid + mid * w / sum(weights)
    got_down = kwargs["down_block_additional_residuals"]
    assert len(got_down) == len(expected_down)
    for got, expected in zip(got_down, expected_down):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(kwargs["mid_block_additional_residual"], expected_mid, atol=1e-5, rtol=1e-4)
    assert max(float(d.abs().max()) for d in expected_down) > 1e-3


def test_embedding_mode_averages_the_hint_embeddings_in_one_pass(tiny_pipeline):
    example_pairs, weights = pairs(1, 2), [1.0, 3.0]
    query = images(3)[0]
    control = CallCounter(tiny_pipeline.controlnet)
    seen = FirstStep(tiny_pipeline)
    few_shot(tiny_pipeline, example_pairs, shot_weights=weights, shot_combine="embedding", guidance_scale=4.0)
    assert control.calls == STEPS and set(control.batches) == {2}  # as cheap as one pair

    cn = tiny_pipeline.controlnet
    with torch.no_grad():
        pair_embeddings = [
            cn.controlnet_cond_embedding(torch.cat([hint_tensor(s), hint_tensor(t)], dim=1)) for s, t in example_pairs
        ]
        expected = (
            0.25 * pair_embeddings[0]
            + 0.75 * pair_embeddings[1]
            + cn.controlnet_query_cond_embedding(hint_tensor(query))
        )
    hint = seen.control[1]["hint_embedding"]
    assert hint.shape[0] == 2
    for half in hint.chunk(2):  # cond and uncond see the same pairs
        torch.testing.assert_close(half, expected, atol=1e-5, rtol=1e-4)


def test_shots_broadcast_over_a_batch_of_queries_and_may_differ_per_query(tiny_pipeline):
    queries = images(4, n=3)
    out = few_shot(tiny_pipeline, pairs(1, 2), query=queries)
    assert out.shape == (3, 64, 64, 3)
    per_query = [(images(5, n=3), images(6, n=3)), pairs(2)[0]]  # shot 0: one pair per query; shot 1: shared
    assert few_shot(tiny_pipeline, per_query, query=queries).shape == (3, 64, 64, 3)


def test_two_different_pairs_differ_from_either_alone(tiny_pipeline):
    first, second = pairs(1, 2)
    both = few_shot(tiny_pipeline, [first, second], output_type="latent")
    for one in (first, second):
        assert (both - few_shot(tiny_pipeline, [one], output_type="latent")).abs().max() > 1e-4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(example_pairs=[]), "non-empty list"),
        (dict(example_pairs=pairs(1) + [(images(2)[0],)]), r"example_pairs\[1\] must be a \(source, target\)"),
        (dict(example_pairs=pairs(1, 2), shot_weights=[1.0]), "1 weights for 2 example pairs"),
        (dict(example_pairs=pairs(1, 2), shot_weights=[1.0, -1.0]), "non-negative"),
        (dict(example_pairs=pairs(1, 2), shot_weights=[0.0, 0.0]), "not all zero"),
        (dict(example_pairs=pairs(1, 2), shot_combine="median"), "shot_combine 'median'"),
        (dict(example_pairs=[(images(1)[0], images(2, size=128)[0])]), "must have one size"),
        (
            dict(example_pairs=[pairs(1)[0], (images(5, n=2), images(6, n=2))], query=images(4, n=3)),
            "batch of 2 but the batch is 3",
        ),
    ],
)
def test_bad_few_shot_inputs_are_named(tiny_pipeline, kwargs, message):
    with pytest.raises(ValueError, match=message):
        run(tiny_pipeline, example_pair=None, **kwargs)


def test_one_pair_and_a_list_of_pairs_are_exclusive(tiny_pipeline):
    with pytest.raises(ValueError, match="not both"):
        run(tiny_pipeline, example_pairs=pairs(1))


def test_weights_are_normalised_and_parsed():
    assert normalise_weights(None, 4) == [0.25] * 4
    assert normalise_weights([2, 6], 2) == [0.25, 0.75]
    assert parse_shot_weights(" 1, 1 ,2") == [1.0, 1.0, 2.0]
    assert parse_shot_weights("") is None
    with pytest.raises(ValueError, match="comma-separated numbers"):
        parse_shot_weights("1, a")
    with pytest.raises(ValueError, match="finite"):
        normalise_weights([float("nan"), 1.0], 2)


def test_residual_shots_replay_on_the_fast_path_and_weights_capture_anew(tiny_pipeline):
    from pdiff_core.fast_gpu import StaticStep
    from test_fast_gpu import ReplayOnCpu

    example_pairs = pairs(1, 2)
    eager = [few_shot(tiny_pipeline, example_pairs, shot_weights=w, output_type="latent") for w in ([1, 1], [1, 3])]
    step = StaticStep(ReplayOnCpu())
    tiny_pipeline._fast_step = step
    try:
        fast = [few_shot(tiny_pipeline, example_pairs, shot_weights=w, output_type="latent") for w in ([1, 1], [1, 3])]
    finally:
        tiny_pipeline._fast_step = None
    assert all(torch.equal(a, b) for a, b in zip(eager, fast))
    assert not torch.equal(fast[0], fast[1]) and step.captures == 2  # other weights are baked into another graph
