"""The fast GPU path (`enable_fast_gpu`, `pdiff_core.fast_gpu`): its logic on the CPU with a stand-in for
CUDA graphs that has their semantics (fixed buffers, replay without calling Python), and the real
capture where a GPU exists."""

import logging

import numpy as np
import pytest
import torch

from pdiff_core.fast_gpu import (
    CudaGraphs,
    StaticStep,
    fuse_attention_projections,
    model_fingerprint,
    unfuse_attention_projections,
)
from test_pipeline import STEPS, images, run


class ReplayOnCpu:
    """CUDA-graph semantics on a CPU: `capture` runs the step once and `replay` recomputes it from the
    tensors bound at capture, writing into the same output tensor. A step that rebinds its buffers
    instead of copying into them would replay stale inputs here, as it would on a GPU."""

    def __init__(self, fail: bool = False):
        self.fail = fail

    def supports(self, device: torch.device) -> bool:
        return True

    def capture(self, fn):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        output = fn()
        return output, lambda: output.copy_(fn())


def with_replay(pipe, backend=None) -> StaticStep:
    step = StaticStep(backend or ReplayOnCpu())
    pipe._fast_step = step
    return step


@pytest.fixture
def pipe(tiny_pipeline):
    yield tiny_pipeline
    tiny_pipeline._fast_step = None


def test_replayed_step_equals_the_eager_loop_and_reuses_one_capture(pipe):
    inputs = [dict(seed=0), dict(seed=1, prompt="a green cone", src=images(7)[0], query=images(8)[0])]
    eager = [run(pipe, **dict(kw)) for kw in inputs]
    step = with_replay(pipe)
    fast = [run(pipe, **dict(kw)) for kw in inputs]
    # The second call has another prompt, pair and query: it must reach the graph through the buffers.
    assert np.array_equal(eager[0], fast[0]) and np.array_equal(eager[1], fast[1])
    assert not np.array_equal(fast[0], fast[1])
    assert step.captures == 1 and step.replays == 2 * STEPS


def test_another_guidance_or_batch_captures_anew(pipe):
    step = with_replay(pipe)
    run(pipe, guidance_scale=9.0)
    for kwargs in (
        dict(guidance_scale=4.0),
        dict(guidance_scale=1.0),
        dict(guidance_scale=4.0, num_images_per_prompt=2),
    ):
        fast = run(pipe, **kwargs)
        pipe._fast_step = None
        assert np.array_equal(fast, run(pipe, **kwargs)), kwargs
        pipe._fast_step = step
    assert step.captures == 4


def test_a_failed_capture_runs_the_step_eagerly_and_says_why(pipe, caplog):
    eager = run(pipe)
    step = with_replay(pipe, ReplayOnCpu(fail=True))
    with caplog.at_level(logging.WARNING, logger="pdiff_core.fast_gpu"):
        fast = run(pipe)
    assert np.array_equal(eager, fast)
    assert step.captures == 0 and "graph capture failed" in step.fallback_reason
    assert "operation not permitted" in caplog.text


def test_static_step_refuses_a_non_tensor_input():
    with pytest.raises(TypeError, match="'t' must be a tensor"):
        StaticStep(ReplayOnCpu())(lambda t: t, None, t=3)


def test_cuda_graphs_need_a_warmup_run():
    with pytest.raises(ValueError, match="warmup must be at least 1"):
        CudaGraphs(warmup=0)


def test_fingerprint_changes_when_a_model_is_cast_or_replaced(pipe):
    before = model_fingerprint(pipe.unet, pipe.controlnet)
    assert model_fingerprint(pipe.unet, pipe.controlnet) == before
    pipe.unet.to(torch.float64)
    try:
        assert model_fingerprint(pipe.unet, pipe.controlnet) != before
    finally:
        pipe.unet.to(torch.float32)
    assert model_fingerprint(pipe.controlnet, pipe.unet) != model_fingerprint(pipe.unet, pipe.controlnet)


def test_enable_fast_gpu_off_cuda_logs_and_changes_nothing(pipe, caplog):
    processors = {k: type(v) for k, v in pipe.unet.attn_processors.items()}
    with caplog.at_level(logging.WARNING, logger="pdiff_core.pipeline"):
        assert pipe.enable_fast_gpu() is False
    assert "not CUDA" in caplog.text and "eager loop" in caplog.text
    assert pipe.fast_gpu_step is None
    assert {k: type(v) for k, v in pipe.unet.attn_processors.items()} == processors


def test_fused_projections_match_and_unfuse_restores_exactly(pipe):
    g = torch.Generator().manual_seed(0)
    sample, text = (
        torch.randn(2, 4, 8, 8, generator=g),
        torch.randn(2, 7, pipe.unet.config.cross_attention_dim, generator=g),
    )
    t = torch.tensor(500)
    with torch.no_grad():
        before = pipe.unet(sample, t, text).sample
        processors = {k: type(v) for k, v in pipe.unet.attn_processors.items()}
        assert fuse_attention_projections(pipe.unet)
        assert {type(v).__name__ for v in pipe.unet.attn_processors.values()} == {"FusedAttnProcessor2_0"}
        fused = pipe.unet(sample, t, text).sample
        unfuse_attention_projections(pipe.unet)
        after = pipe.unet(sample, t, text).sample
    # One matmul over concatenated weights: same sums in another order.
    assert (fused - before).abs().max() < 1e-5 * before.abs().max()
    assert torch.equal(before, after)
    assert {k: type(v) for k, v in pipe.unet.attn_processors.items()} == processors
    assert not any(hasattr(m, "to_qkv") or hasattr(m, "to_kv") for m in pipe.unet.modules())


def test_enable_then_disable_on_a_pretend_gpu_restores_the_pipeline(pipe, monkeypatch, caplog):
    """The CUDA-only branches of enable/disable, run on the CPU: fusing and channels_last applied,
    the call falls back to the eager loop (the real backend refuses a CPU), and disabling undoes all."""
    eager = run(pipe)
    monkeypatch.setattr(type(pipe), "_execution_device", property(lambda self: torch.device("cuda")))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pipe.enable_fast_gpu(fuse_qkv=True, channels_last=True) is True
    monkeypatch.undo()
    assert isinstance(pipe.fast_gpu_step.backend, CudaGraphs)
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert hasattr(pipe.controlnet.down_blocks[0].attentions[0].transformer_blocks[0].attn1, "to_qkv")
    with caplog.at_level(logging.WARNING, logger="pdiff_core.pipeline"):
        fused = run(pipe)
    assert "runs on cpu; using the eager loop" in caplog.text
    assert np.abs(fused - eager).max() < 1e-4
    pipe.fast_gpu_step.backend = ReplayOnCpu()  # the same settings, replayed
    replayed = run(pipe)
    assert np.array_equal(replayed, fused) and pipe.fast_gpu_step.captures == 1
    pipe.disable_fast_gpu()
    assert pipe.fast_gpu_step is None and pipe.unet.conv_in.weight.is_contiguous()
    assert not any(hasattr(m, "to_qkv") for m in pipe.controlnet.modules())
    assert np.array_equal(run(pipe), eager)
    pipe.disable_fast_gpu()  # twice: nothing left to undo


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_replay_equals_eager_on_the_gpu(tiny_pipeline_dir):
    from pdiff_core.pipeline import PromptDiffusionPipeline

    gpu = PromptDiffusionPipeline.from_pretrained(str(tiny_pipeline_dir), torch_dtype=torch.float16).to("cuda")
    gpu.set_progress_bar_config(disable=True)
    eager = run(gpu)
    assert gpu.enable_fast_gpu(fuse_qkv=False)
    graphed = [run(gpu), run(gpu, seed=1)]
    assert gpu.fast_gpu_step.captures == 1 and gpu.fast_gpu_step.fallback_reason is None
    assert np.array_equal(graphed[0], eager) and not np.array_equal(graphed[0], graphed[1])
    gpu.enable_fast_gpu(fuse_qkv=True)
    assert np.abs(run(gpu) - eager).max() <= 2 / 255


def test_enable_fast_gpu_refuses_model_offload(pipe, monkeypatch, caplog):
    monkeypatch.setattr(type(pipe), "_execution_device", property(lambda self: torch.device("cuda")))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    pipe.unet._hf_hook = object()  # what accelerate's offload hooks leave on a module
    with caplog.at_level(logging.WARNING, logger="pdiff_core.pipeline"):
        assert pipe.enable_fast_gpu() is False
    del pipe.unet._hf_hook
    assert "offload" in caplog.text and pipe.fast_gpu_step is None
