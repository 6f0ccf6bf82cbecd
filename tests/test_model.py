"""PromptDiffusionControlNetModel's call signature: what diffusers passes is accepted, a misspelling is not."""

import inspect

import pytest
import torch
from diffusers.models.controlnets.controlnet import ControlNetModel

from pdiff_core.model import PromptDiffusionControlNetModel


def call_inputs(controlnet, seed=0):
    generator = torch.Generator().manual_seed(seed)
    size = 32
    return dict(
        sample=torch.randn(1, controlnet.config.in_channels, size // 8, size // 8, generator=generator),
        timestep=torch.tensor(10),
        encoder_hidden_states=torch.randn(1, 7, controlnet.config.cross_attention_dim, generator=generator),
        controlnet_cond=torch.rand(1, 6, size, size, generator=generator) * 2 - 1,
        controlnet_query_cond=torch.rand(1, 3, size, size, generator=generator) * 2 - 1,
    )


def test_forward_takes_every_keyword_of_diffusers_controlnet():
    upstream = set(inspect.signature(ControlNetModel.forward).parameters)
    assert upstream <= set(inspect.signature(PromptDiffusionControlNetModel.forward).parameters)


def test_forward_refuses_a_misspelled_or_unsupported_keyword(tiny_pipeline):
    controlnet = tiny_pipeline.controlnet.eval()
    inputs = call_inputs(controlnet)
    with torch.no_grad():
        plain = controlnet(**inputs, return_dict=False)
        explicit_empty = controlnet(
            **inputs, class_labels=None, timestep_cond=None, added_cond_kwargs={}, return_dict=False
        )
        scaled = controlnet(**inputs, conditioning_scale=0.5, return_dict=False)
    assert torch.equal(plain[1], explicit_empty[1])
    assert torch.allclose(scaled[1], plain[1] * 0.5) and plain[1].abs().max() > 0
    with pytest.raises(TypeError, match="conditioning_scal"):
        controlnet(**inputs, conditioning_scal=0.5)
    with pytest.raises(ValueError, match="class_labels"):
        controlnet(**inputs, class_labels=torch.tensor([1]))
