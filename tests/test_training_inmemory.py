"""training.inmemory: draws as the loader's, cached latents, prompts, budgets, end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from pdiff_core.data import DatasetFormatError
from pdiff_core.model_info import read_model_info
from pdiff_core.pipeline import PromptDiffusionPipeline
from pdiff_core.toyworld import generate
from test_training_support import make_dataset
from training.config import ConfigError, load_config
from training.inmemory import (
    REPORT_FILE,
    CosineWithWarmup,
    DiffusionBatches,
    GroupTensors,
    PromptTable,
    TaskDraws,
    encode_all,
    load_folder,
    pair_effect,
    render_toyworld,
    run,
)

KINDS = ["image", "depth", "hed", "seg"]


@pytest.fixture(scope="module")
def dataset_folder(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "ds", groups=3, items=2, resolution=32)


def labelled_data(group_sizes=(2, 3, 4), size: int = 8) -> GroupTensors:
    """Item i's kind k is filled with the value 10 * i + k, and its left column with 255, so a
    gathered image says which item and kind it came from and whether it was mirrored."""
    groups, i = [], 0
    for g, n in enumerate(group_sizes):
        items = []
        for _ in range(n):
            item = np.stack([np.full((size, size, 3), 10 * i + k, dtype=np.uint8) for k in range(len(KINDS))])
            item[:, :, 0] = 255
            items.append(item)
            i += 1
        groups.append((f"caption {g}", items))
    return GroupTensors.from_groups(groups, KINDS)


def decode(image: torch.Tensor):
    """(item, kind, mirrored) of a gathered [-1, 1] image of `labelled_data`."""
    pixels = torch.round((image + 1) * 127.5).long()
    value = int(pixels[0, 0, -1] if pixels[0, 0, 0] == 255 else pixels[0, 0, 0])
    return value // 10, value % 10, bool(pixels[0, 0, -1] == 255)


def test_draws_pair_one_item_and_query_another_of_the_same_group():
    data = labelled_data()
    draws = TaskDraws(data, ["depth", "inv_seg"], flip_prob=0.5, generator=torch.Generator().manual_seed(0))
    draw = draws.draw(400)
    batch = draws.images(draw)
    starts, sizes = data.group_start.tolist(), data.group_size.tolist()
    flips = set()
    for b in range(400):
        task = draws.tasks[int(draw["task"][b])]
        source, target = KINDS.index(task.source), KINDS.index(task.target)
        ex_src, ex_tgt = decode(batch["example_pair"][b, :3]), decode(batch["example_pair"][b, 3:])
        query, truth = decode(batch["query"][b]), decode(batch["target"][b])
        group = int(draw["group"][b])
        members = range(starts[group], starts[group] + sizes[group])
        assert ex_src[0] == ex_tgt[0] in members and query[0] == truth[0] in members
        assert ex_src[0] != query[0]
        assert (ex_src[1], ex_tgt[1], query[1], truth[1]) == (source, target, source, target)
        assert ex_src[2] == ex_tgt[2] and query[2] == truth[2]  # one flip per pair
        flips.add((ex_src[2], query[2]))
    assert flips == {(False, False), (False, True), (True, False), (True, True)}


def test_draws_refuse_a_task_whose_map_is_missing():
    with pytest.raises(ValueError, match="data.tasks.*normal"):
        TaskDraws(labelled_data(), ["normal"], 0.5, torch.Generator())


def test_a_diffusion_run_keeps_only_the_maps_its_tasks_use():
    data = labelled_data()
    kept = data.for_tasks(["inv_seg", "depth"])
    assert kept.kinds == ["image", "depth", "seg"]
    assert torch.equal(kept.pixels, data.pixels[:, [0, 1, 3]])
    assert data.for_tasks(None) is data
    with pytest.raises(DatasetFormatError, match="normal"):
        data.for_tasks(["normal"])


def test_mixed_prompts_hide_the_task_often_and_never_name_an_inverse_one(tiny_tokenizer_dir):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    data = labelled_data()
    draws = TaskDraws(data, ["depth", "inv_depth"], 0.0, torch.Generator().manual_seed(0))
    table = PromptTable(tokenizer, data.captions, data.kinds[1:], "mixed", torch.device("cpu"))
    draw = draws.draw(3000)
    ids = table.ids(draw, draws, torch.rand(3000, generator=torch.Generator().manual_seed(1)))
    texts = [tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]
    inverse = draws.inverse[draw["task"]].tolist()
    forward_texts = [t for t, inv in zip(texts, inverse) if not inv]
    inverse_texts = [t for t, inv in zip(texts, inverse) if inv]
    assert "depth map" not in inverse_texts
    for texts_of_kind, choices in ((forward_texts, 3), (inverse_texts, 2)):
        shares = [texts_of_kind.count("") / len(texts_of_kind)]
        assert abs(shares[0] - 1 / choices) < 0.05
    assert abs(forward_texts.count("depth map") / len(forward_texts) - 1 / 3) < 0.05


class ReadsOnly(torch.nn.Module):
    """A stand-in epsilon model that reads only the example pair (a prediction from its mean) or only the
    query: with `labelled_data` (pixel value 10 * item + kind) and every clean latent set to its item,
    the query's item gives the clean latent, hence the noise, exactly."""

    def __init__(self, what: str, scheduler) -> None:
        super().__init__()
        self.what, self.scheduler = what, scheduler

    def forward(self, noisy, timesteps, input_ids, example_pair, query):
        if self.what == "pair":
            return noisy * 0 + 10 * example_pair.mean(dim=(1, 2, 3)).view(-1, 1, 1, 1)
        item = (torch.round((query[:, 0, 0, 3] + 1) * 127.5) // 10).view(-1, 1, 1, 1)
        abar = self.scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        return (noisy - abar.sqrt() * item) / (1 - abar).sqrt()


def test_the_probe_moves_only_with_what_a_model_reads(tiny_tokenizer_dir):
    from diffusers import DDPMScheduler
    from transformers import CLIPTokenizer

    data = labelled_data()
    config = load_config(None, ["data.root=labelled", "data.tasks=[depth,inv_depth,seg]", "model.preset=tiny"])
    items = torch.arange(len(data.pixels), dtype=torch.float32)
    latents = items.view(-1, 1, 1, 1, 1, 1).expand(-1, len(data.kinds), 2, 4, 2, 2)
    tokenizer = CLIPTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    batches = DiffusionBatches(config, data, latents, tokenizer, torch.device("cpu"))
    scheduler = DDPMScheduler()

    def probe(what):
        return pair_effect(ReadsOnly(what, scheduler), scheduler, batches, torch.device("cpu"), samples=64)

    reads_query, reads_pair = probe("query"), probe("pair")
    assert reads_query["loss_true_pair"] < 1e-6 and reads_query["loss_other_query"] > 0.1
    for other in ("loss_other_task_pair", "loss_no_pair"):
        assert reads_query[other] == pytest.approx(reads_query["loss_true_pair"], abs=1e-9)
        assert reads_pair[other] != pytest.approx(reads_pair["loss_true_pair"], rel=1e-3)
    assert reads_pair["loss_other_query"] == pytest.approx(reads_pair["loss_true_pair"], rel=1e-6)


def test_cached_latents_are_the_vae_encodings_of_each_image_and_its_mirror(tiny_pipeline, dataset_folder):
    vae = tiny_pipeline.vae
    data = load_folder(str(dataset_folder), resolution=32)
    latents = encode_all(vae, data, batch=5)
    assert latents.shape[:3] == (len(data.pixels), len(data.kinds), 2)
    for item, kind in ((0, 0), (3, 2), (len(data.pixels) - 1, len(data.kinds) - 1)):
        x = data.pixels[item, kind][None].float() / 127.5 - 1
        with torch.no_grad():
            plain = vae.encode(x).latent_dist.mode() * vae.config.scaling_factor
            mirrored = vae.encode(x.flip(-1)).latent_dist.mode() * vae.config.scaling_factor
        torch.testing.assert_close(latents[item, kind, 0], plain[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(latents[item, kind, 1], mirrored[0], atol=1e-5, rtol=1e-4)


def test_folder_loads_the_same_pixels_as_rendering_in_memory(tmp_path):
    root = generate(tmp_path / "toy", 2, items_per_group=2, resolution=24, seed=5, progress=False, workers=1)
    from_disk = load_folder(str(root), resolution=24, workers=2)
    in_memory = render_toyworld(2, seed=5, resolution=24, workers=1, items_per_group=2)
    assert from_disk.kinds == in_memory.kinds and from_disk.captions == in_memory.captions
    assert torch.equal(from_disk.pixels, in_memory.pixels)


def test_cosine_schedule_and_a_budget_cut_during_warm_up():
    schedule = CosineWithWarmup(warmup=10, total=110)
    assert schedule(0) == pytest.approx(0.1) and schedule(9) == pytest.approx(1.0)
    assert schedule(60) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    schedule.total = 20  # what a time budget does after its calibration steps
    assert schedule(15) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert schedule(20) == pytest.approx(0.0)


CONFIG = """\
data:
  root: {root}
  tasks: [depth, inv_hed]
  resolution: 32
  forward_prompt: mixed
model:
  preset: tiny
  tokenizer_vocab_size: 600
  prediction_type: v_prediction
optim:
  lr_warmup_steps: 2
train:
  output_dir: {out}
  max_steps: 3
  batch_size: 4
  train_modules: [controlnet, unet, text_encoder]
  ema: true
  ema_decay: 0.9
  log_every: 1
validation:
  guidance_scale: 1.5
"""


def test_vae_then_diffusion_write_a_loadable_pipeline_with_its_tasks(tmp_path, dataset_folder):
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.format(root=dataset_folder, out=tmp_path / "run"))
    vae_folder = run(load_config(path, ["train.stage=vae"]))
    vae_report = json.loads((tmp_path / "run" / REPORT_FILE).read_text())
    assert vae_report["steps"] == 3 and vae_report["scaling_factor"] > 0
    pipeline = run(load_config(path, [f"model.vae={vae_folder}"]))
    report = json.loads((tmp_path / "run" / REPORT_FILE).read_text())
    assert report["steps"] == 3 and report["samples"] == 12
    assert set(report["pair_effect_after"]) == {
        "loss_true_pair",
        "loss_other_task_pair",
        "loss_no_pair",
        "loss_other_query",
    }
    info = read_model_info(pipeline)
    assert info.trained_tasks == ["depth", "inv_hed"] and info.guidance_scale == 1.5
    pipe = PromptDiffusionPipeline.from_pretrained(str(pipeline))
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.vae.config.scaling_factor == pytest.approx(vae_report["scaling_factor"])
    with pytest.raises(ConfigError, match="already exists"):
        run(load_config(path, [f"model.vae={vae_folder}"]))


def test_a_run_continues_an_exported_pipeline_so_that_runs_add_up(tmp_path, dataset_folder):
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.format(root=dataset_folder, out=tmp_path / "first"))
    vae_folder = run(load_config(path, ["train.stage=vae", "train.max_steps=1"]))
    first = run(load_config(path, [f"model.vae={vae_folder}"]))
    first_report = json.loads((tmp_path / "first" / REPORT_FILE).read_text())
    second = run(
        load_config(path, ["model.preset=null", f"model.pretrained={first}", f"train.output_dir={tmp_path / 'second'}"])
    )
    second_report = json.loads((tmp_path / "second" / REPORT_FILE).read_text())
    # The continued run starts where the first ended: the same fixed probe gives the same losses.
    for name, value in first_report["pair_effect_after"].items():
        assert second_report["pair_effect_before"][name] == pytest.approx(value, rel=1e-5), name
    assert not (tmp_path / "second" / "tokenizer").exists()  # the pipeline's own tokenizer, not a new one
    a, b = (PromptDiffusionPipeline.from_pretrained(str(folder)) for folder in (first, second))
    assert torch.equal(a.vae.encoder.conv_in.weight, b.vae.encoder.conv_in.weight)  # frozen
    assert not torch.equal(a.controlnet.controlnet_mid_block.weight, b.controlnet.controlnet_mid_block.weight)
    assert b.scheduler.config.prediction_type == "v_prediction"
    # The preset's step spacing (tiny: trailing, not SD1.5's leading) travels with the model.
    assert a.scheduler.config.timestep_spacing == b.scheduler.config.timestep_spacing == "trailing"

    # A VAE stage on model.pretrained starts from that pipeline's VAE (here: tunes its decoder).
    tuned = run(
        load_config(
            path,
            [
                "model.preset=null",
                f"model.pretrained={first}",
                "train.stage=vae",
                "vae.decoder_only=true",
                "vae.fit_scaling_factor=false",
                "optim.learning_rate=1e-2",
                f"train.output_dir={tmp_path / 'decoder'}",
            ],
        )
    )
    tuned_vae = AutoencoderKL.from_pretrained(tuned)
    assert torch.equal(tuned_vae.encoder.conv_in.weight.float(), a.vae.encoder.conv_in.weight.float())
    assert not torch.equal(tuned_vae.decoder.conv_out.weight.float(), a.vae.decoder.conv_out.weight.float())


def test_a_time_budget_cuts_max_steps_to_what_the_measured_step_time_allows(tmp_path, dataset_folder):
    from training.inmemory import StepLoop

    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.format(root=dataset_folder, out=tmp_path / "run"))
    config = load_config(path, ["train.max_steps=1000", "train.time_budget_minutes=0.2"])
    loop = StepLoop(config, [torch.nn.Parameter(torch.zeros(1))], torch.device("cpu"), "test")
    loop._fit_budget(step=60, elapsed=6.0, step_time=0.1)  # 6 s spent, 6 s left at 0.1 s a step
    assert loop.max_steps == 120 and loop.schedule.total == 120
    loop._fit_budget(step=60, elapsed=6.0, step_time=1.0)
    assert loop.max_steps == 66
    loop._fit_budget(step=65, elapsed=6.5, step_time=0.001)  # faster later: steps come back, up to max_steps
    assert loop.max_steps == 1000 and loop.schedule.total == 1000


def test_a_time_budget_stops_the_loop_when_steps_are_slower_than_calibrated(tmp_path, dataset_folder):
    import time

    from training.inmemory import StepLoop

    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.format(root=dataset_folder, out=tmp_path / "run"))
    config = load_config(path, ["train.max_steps=1000", "train.time_budget_minutes=0.005", "train.ema=false"])
    weight = torch.nn.Parameter(torch.ones(1))
    loop = StepLoop(config, [weight], torch.device("cpu"), "test")

    def slow_loss() -> torch.Tensor:
        time.sleep(0.1)
        return (weight**2).sum()

    steps = loop.run(slow_loss)  # 0.3 s of budget at 0.1 s a step: stopped long before the calibration
    assert 3 <= steps <= 5 and loop.seconds < 1.0


def test_a_decoder_only_run_tunes_the_decoder_on_the_frozen_encoders_mode(tmp_path, dataset_folder, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.format(root=dataset_folder, out=tmp_path / "vae"))
    vae_folder = run(load_config(path, ["train.stage=vae", "train.max_steps=1"]))
    overrides = [
        "train.stage=vae",
        f"model.vae={vae_folder}",
        "vae.decoder_only=true",
        "vae.fit_scaling_factor=false",
        "optim.learning_rate=1e-2",
        f"train.output_dir={tmp_path / 'tuned'}",
    ]
    # The decoder learns the latents a diffusion model is trained on: the mode, never a noisy sample.
    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda *a, **k: pytest.fail("sampled the posterior"))
    tuned = run(load_config(path, overrides))
    before, after = (AutoencoderKL.from_pretrained(folder) for folder in (vae_folder, tuned))
    assert after.config.scaling_factor == before.config.scaling_factor
    for name, param in before.state_dict().items():
        same = torch.equal(param, after.state_dict()[name])
        assert same == (not name.startswith(("decoder.", "post_quant_conv."))), name
