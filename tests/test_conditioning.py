"""Class- and attribute-conditional models and classifier-free guidance (Ho & Salimans 2022).

The guided samplers are checked on a mixture of two Gaussians whose components are the labels:
for x0 ~ N(mu_c, s^2 I) and x_t = a x0 + b eps, the exact conditional noise predictor is
E[eps | x_t, c] = b (x_t - a mu_c) / (a^2 s^2 + b^2) (as in test_samplers.py), and the
unconditional one is its average under the posterior weights p(c | x_t), proportional to
p(c) N(x_t; a mu_c, (a^2 s^2 + b^2) I).
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import ROOT, randomize_, subprocess_env
from test_data import fake_celeba, save_image
from test_inference import fails, read_png, sample
from test_train import tiny
from torch import nn

from diffusion.checkpoint import save_checkpoint
from diffusion.conditioning import (
    class_rows,
    data_distribution,
    drop_labels,
    grid_conditions,
    parse_attributes,
    parse_classes,
    sampling_conditions,
)
from diffusion.config import DataConfig, from_dict
from diffusion.data import BatchIterator, prepare_dataset, prepare_labeled_dataset
from diffusion.errors import ConfigError, DataError, UserError
from diffusion.generate import load_model
from diffusion.samplers import NoiseStreams, make_denoiser, reverse_process
from diffusion.schedule import NoiseSchedule
from diffusion.trainer import train
from models import UNet, build_model

MEANS, S = (-0.4, 0.4), 0.5  # two overlapping components, equally likely
TINY_MODEL = {"image_size": 8, "in_channels": 1, "base_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
              "attention_resolutions": [4], "norm_groups": 4, "dropout": 0.0}


class MixtureOracle(nn.Module):
    """The exact conditional/unconditional eps predictor of the two-Gaussian mixture; label 2 is null."""

    num_classes, num_attributes = 2, 0

    def __init__(self, schedule: NoiseSchedule, objective: str = "eps") -> None:
        super().__init__()
        self.in_channels, self.image_size, self.objective = 1, 2, objective
        self.register_buffer("alpha_bar", schedule.alpha_bar.clone())
        self.register_buffer("means", torch.tensor(MEANS, dtype=torch.float64))
        self.anchor = nn.Parameter(torch.zeros(()))
        self.calls: list[int] = []  # batch size of every call

    def null_labels(self, batch: int, device) -> torch.Tensor:
        return torch.full((batch,), 2, dtype=torch.long, device=device)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self.calls.append(len(x))
        ab = self.alpha_bar[t].to(x.dtype).view(-1, 1, 1, 1)
        a, b = ab.sqrt(), (1 - ab).sqrt()
        d = a * a * S**2 + b * b
        mu = self.means.to(x.dtype).view(1, 2, 1, 1, 1)
        eps_each = b.unsqueeze(1) * (x.unsqueeze(1) - a.unsqueeze(1) * mu) / d.unsqueeze(1)  # (B, 2, C, H, W)
        log_weight = -((x.unsqueeze(1) - a.unsqueeze(1) * mu) ** 2).sum((2, 3, 4)) / (2 * d.view(-1, 1))
        weights = log_weight.softmax(1)  # p(c | x_t)
        labels = self.null_labels(len(x), x.device) if labels is None else labels
        chosen = eps_each[torch.arange(len(x)), labels.clamp(max=1)]
        eps = torch.where((labels == 2).view(-1, 1, 1, 1), (weights.view(-1, 2, 1, 1, 1) * eps_each).sum(1), chosen)
        x0 = (x - b * eps) / a
        return {"eps": eps, "x0": x0, "v": a * eps - b * x0}[self.objective]


def sample_mixture(sampler: str, steps: int, label: int, scale: float, n: int = 400) -> torch.Tensor:
    schedule = NoiseSchedule(200, "cosine")
    oracle = MixtureOracle(schedule).double()
    noise = NoiseStreams(0, range(n), (1, 2, 2), "cpu")
    labels = torch.full((n,), label)
    *_, last = reverse_process(
        oracle, schedule, lambda: noise().double(), sampler=sampler, steps=steps, clip_denoised=False,
        labels=labels, guidance_scale=scale,
    )
    return last.x.mean((1, 2, 3))  # each sample's pixel mean: near its component's mean


@pytest.mark.parametrize(("sampler", "steps"), [("ddpm", 100), ("ddim", 50), ("dpm++", 20)])
def test_guided_samplers_land_on_the_asked_component(sampler, steps):
    for label, mu in enumerate(MEANS):
        plain = sample_mixture(sampler, steps, label, 1.0)
        guided = sample_mixture(sampler, steps, label, 3.0)
        # S = 1 samples the component itself: mean mu, pixel-mean std s / 2 (4 pixels).
        assert abs(plain.mean().item() - mu) < 0.06 and abs(plain.std().item() - S / 2) < 0.04
        # S = 3 pushes every sample into the asked component, away from the other one.
        assert ((guided * mu) > 0).float().mean() > 0.99
        assert abs(guided.mean().item()) > abs(plain.mean().item()) + 0.05
    unguided = sample_mixture(sampler, steps, 0, 0.0)  # S = 0: the unconditional mixture
    assert abs(unguided.mean().item()) < 0.06 and 0.35 < (unguided > 0).float().mean() < 0.65


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_guidance_mixes_eps_for_every_objective_in_one_call(objective):
    schedule = NoiseSchedule(200, "cosine", objective=objective)
    oracle = MixtureOracle(schedule, objective).double()
    x = torch.randn(5, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 0, 1, 1])
    t = 120
    cond = make_denoiser(oracle, schedule, False, labels=labels, guidance_scale=1.0)(x, t)
    uncond = make_denoiser(oracle, schedule, False, labels=labels, guidance_scale=0.0)(x, t)
    oracle.calls.clear()
    x0, eps = make_denoiser(oracle, schedule, False, labels=labels, guidance_scale=2.5)(x, t)
    assert oracle.calls == [10]  # both halves in one network call
    torch.testing.assert_close(eps, uncond[1] + 2.5 * (cond[1] - uncond[1]))
    torch.testing.assert_close(x0, schedule.x0_from_eps(x, torch.full((5,), t), eps))


def test_scale_one_and_zero_are_the_plain_conditional_and_unconditional_networks():
    model = randomize_(UNet(**TINY_MODEL, num_classes=3)).eval()
    schedule = NoiseSchedule(50)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 2, 1, 1])
    t = torch.full((4,), 30)
    with torch.no_grad():
        cond, uncond = model(x, t, labels), model(x, t, torch.full((4,), 3))
    assert not torch.equal(cond, uncond)  # the labels matter
    calls = []
    model.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    for scale, expected in ((1.0, cond), (0.0, uncond)):
        _, eps = make_denoiser(model, schedule, clip_denoised=False, labels=labels, guidance_scale=scale)(x, 30)
        assert torch.equal(eps, expected)
    assert calls == [4, 4]  # one plain network call each
    with torch.no_grad():
        assert torch.equal(model(x, t), uncond)  # no labels: the null token


def test_an_unconditional_network_has_no_label_parameters():
    plain = UNet(**TINY_MODEL)
    assert not plain.conditional and not any("label" in k for k in plain.state_dict())
    classes = UNet(**TINY_MODEL, num_classes=10)
    attributes = UNet(**TINY_MODEL, num_attributes=3)
    assert classes.label_emb.num_embeddings == 11 and attributes.label_emb.num_embeddings == 9
    assert set(classes.state_dict()) - set(plain.state_dict()) == {"label_emb.weight"}


def test_attribute_embeddings_are_summed_per_attribute():
    model = randomize_(UNet(**TINY_MODEL, num_attributes=2))
    table = model.label_emb.weight
    labels = torch.tensor([[1, 0], [2, 2]])  # (present, absent), (dropped, dropped)
    expected = torch.stack([table[1] + table[3], table[2] + table[5]])
    torch.testing.assert_close(model.label_embedding(labels), expected)


def test_labels_are_dropped_at_the_configured_rate():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (40_000,), generator=g)
    dropped = drop_labels(labels, 0.25, 10, g)
    assert abs((dropped == 10).float().mean().item() - 0.25) < 0.01
    assert torch.equal(dropped[dropped != 10], labels[dropped != 10])
    attributes = drop_labels(torch.randint(0, 2, (40_000, 3), generator=g), 0.5, 2, g)
    per_attribute = (attributes == 2).float().mean(0)
    assert torch.allclose(per_attribute, torch.full((3,), 0.5), atol=0.01)
    assert abs((attributes == 2).all(1).float().mean().item() - 0.125) < 0.01  # independent: 0.5^3
    assert drop_labels(labels, 0.0, 10) is labels


def test_class_and_attribute_specs():
    names = ["cat", "dog", "fox"]
    assert parse_classes("all", names) == [0, 1, 2]
    assert parse_classes("2", names) == [2] and parse_classes("dog,0", names) == [1, 0]
    for bad in ("3", "cow", "-1", ""):
        with pytest.raises(UserError, match="--classes: unknown class"):
            parse_classes(bad, names)
    assert parse_attributes("Male=1,Smiling=0", ["Smiling", "Eyeglasses", "Male"]) == [0, 2, 1]
    with pytest.raises(UserError, match="unknown attribute 'Blond_Hair'"):
        parse_attributes("Blond_Hair=1", ["Smiling"])
    with pytest.raises(UserError, match="expected Smiling=1 .* got 'Smiling=yes'"):
        parse_attributes("Smiling=yes", ["Smiling"])
    rows = class_rows([2, 0], names, 5)
    assert rows.labels.tolist() == [2, 2, 2, 0, 0] and rows.row_length == 3
    assert rows.record == {"classes": ["fox", "cat"], "samples_per_class": 3}


def config(**sections):
    raw = {"data": {"source": "digits", "image_size": 8}, "model": dict(TINY_MODEL), "diffusion": {"timesteps": 40},
           "log": {"sample_steps": 10}, "sample": {"steps": 10}}
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return from_dict(raw)


def test_sampling_conditions_default_to_every_class_and_refuse_the_wrong_flag():
    classes = config(model={"num_classes": 3}, data={"class_names": ["a", "b", "c"]})
    assert sampling_conditions(classes, 6).labels.tolist() == [0, 0, 1, 1, 2, 2]
    grid = grid_conditions(classes, 7)  # full rows: two images per class
    assert grid.labels.tolist() == [0, 0, 1, 1, 2, 2] and grid.row_length == 2
    attributes = config(data={"source": "celeba", "attributes": ["Smiling", "Male"]}, model={"in_channels": 3})
    assert sampling_conditions(attributes, 2, attributes="Male=0").labels.tolist() == [[2, 0], [2, 0]]
    assert grid_conditions(attributes, 9).labels.tolist() == [[0, 0]] * 2 + [[0, 1]] * 2 + [[1, 0]] * 2 + [[1, 1]] * 2
    plain = config()
    assert sampling_conditions(plain, 4) is None and grid_conditions(plain, 4) is None
    with pytest.raises(UserError, match="--classes: the model is unconditional"):
        sampling_conditions(plain, 4, classes="1")
    with pytest.raises(UserError, match="--classes: the model is conditioned on attributes"):
        sampling_conditions(attributes, 4, classes="1")
    with pytest.raises(UserError, match="--attributes: the model is conditioned on classes"):
        sampling_conditions(classes, 4, attributes="Smiling=1")


def test_fid_labels_follow_the_data():
    labels = torch.cat([torch.zeros(900), torch.ones(100)]).long().numpy()
    stratified = data_distribution(labels, 5000, seed=0)
    assert stratified.sum().item() == 500  # exactly the data's share of each class
    assert torch.equal(stratified, data_distribution(labels, 5000, seed=0))
    assert not torch.equal(stratified, data_distribution(labels, 5000, seed=1))  # another order
    assert stratified[:50].sum() not in (0, 50)  # in random order, not sorted
    for seed in range(20):  # every count is the floor or the ceiling of its share
        assert data_distribution(labels, 7, seed).sum().item() in (0, 1)
    drawn = data_distribution(labels, 5000, seed=0, stratified=False)
    assert abs(drawn.float().mean().item() - 0.1) < 0.015 and drawn.sum().item() != 500
    assert torch.equal(drawn, data_distribution(labels, 5000, seed=0, stratified=False))


def test_fid_attribute_labels_follow_the_data_combinations():
    rows = np.array([[0, 1]] * 600 + [[1, 0]] * 300 + [[1, 1]] * 100)[np.random.default_rng(0).permutation(1000)]
    picked = data_distribution(rows, 100, seed=3)
    assert picked.shape == (100, 2)
    combos = {tuple(r): n for r, n in zip(*np.unique(picked.numpy(), axis=0, return_counts=True), strict=True)}
    assert combos == {(0, 1): 60, (1, 0): 30, (1, 1): 10}


@pytest.mark.parametrize(("sections", "message"), [
    ({"model": {"num_classes": -1}}, "model.num_classes: expected a value >= 0"),
    ({"data": {"attributes": ["Smiling"]}}, "only data.source celeba has attributes"),
    ({"data": {"source": "celeba", "attributes": ["Male", "Male"]}, "model": {"in_channels": 3}}, "'Male' is listed twice"),
    ({"data": {"source": "celeba", "attributes": ["Male"]}, "model": {"in_channels": 3, "num_classes": 2}},
     "a model conditions on one of them"),
    ({"data": {"source": "celeba"}, "model": {"in_channels": 3, "num_classes": 2}}, "CelebA has no classes"),
    ({"data": {"class_names": ["a"]}, "model": {"num_classes": 2}}, "data.class_names has 1 names but model.num_classes is 2"),
    ({"train": {"cond_drop_prob": 1.0}}, r"train.cond_drop_prob: expected a value in \[0, 1\)"),
])
def test_bad_conditioning_configs_are_one_line_errors(sections, message):
    with pytest.raises(ConfigError, match=message):
        config(**sections)


def test_model_gets_the_attribute_count_from_the_data_section():
    cfg = config(data={"source": "celeba", "attributes": ["Smiling", "Male", "Eyeglasses"]}, model={"in_channels": 3})
    assert build_model(cfg).num_attributes == 3 and cfg.conditional
    assert build_model(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, attributes=[]))).label_emb is None


# Labels from every source ------------------------------------------------------------------


def test_digit_labels_are_their_targets(tmp_path):
    from sklearn.datasets import load_digits

    images, labels = prepare_labeled_dataset(DataConfig(source="digits", root=str(tmp_path), image_size=8))
    assert labels.names == [str(d) for d in range(10)] and len(images) == 1797
    np.testing.assert_array_equal(labels.values, load_digits().target)


def test_cifar10_labels_and_class_names_come_from_torchvision(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(CIFAR10, "_load_meta", lambda self: setattr(self, "classes", names))
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (5, 2, 3 * 32 * 32), dtype=np.uint8)
    for i in range(5):
        with open(folder / f"data_batch_{i + 1}", "wb") as f:
            pickle.dump({"data": pixels[i], "labels": [i, 9 - i]}, f)
    images, labels = prepare_labeled_dataset(DataConfig(source="cifar10", root=str(tmp_path), image_size=16))
    assert labels.names == names and images.shape == (10, 16, 16, 3)
    assert labels.values.tolist() == [0, 9, 1, 8, 2, 7, 3, 6, 4, 5]


def test_folder_classes_are_sorted_subfolders_aligned_with_the_cache(tmp_path):
    colours = {"dog": (0, 0, 255), "cat": (255, 0, 0)}
    for name, count in (("dog", 2), ("cat", 3)):
        for i in range(count):
            save_image(tmp_path / name / ("deep" if i == 1 else "") / f"{i}.png", np.full((6, 6, 3), colours[name], np.uint8))
    (tmp_path / "cat" / "0-broken.png").write_bytes(b"not an image")  # skipped: the labels must skip it too
    data = DataConfig(source="folder", root=str(tmp_path), image_size=4, num_workers=0)
    for _ in range(2):  # building the cache, then reading it
        images, labels = prepare_labeled_dataset(data)
        assert labels.names == ["cat", "dog"] and len(images) == 5
        red = images[:, 0, 0, 0] > 128
        np.testing.assert_array_equal(labels.values, np.where(red, 0, 1))
    assert prepare_dataset(data).shape == (5, 4, 4, 3)


def test_a_flat_folder_has_no_classes(tmp_path):
    save_image(tmp_path / "sub" / "a.png", np.zeros((4, 4, 3), np.uint8))
    save_image(tmp_path / "b.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match=r"needs one subfolder of images per class, but 1 image\(s\) lie directly in it \(first: b.png\)"):
        prepare_labeled_dataset(DataConfig(source="folder", root=str(tmp_path), image_size=4, num_workers=0))


def write_attributes(root: Path) -> None:
    """list_attr_celeba.txt for fake_celeba's six images: Smiling = odd index, Male = index > 2."""
    rows = [f"{i:06d}.jpg {1 if i % 2 else -1} {1 if i > 2 else -1} -1" for i in range(1, 7)]
    (root / "celeba" / "list_attr_celeba.txt").write_text("6\nSmiling Male Eyeglasses\n" + "\n".join(rows) + "\n")


def test_celeba_attributes_come_from_the_attribute_file(tmp_path):
    fake_celeba(tmp_path)
    write_attributes(tmp_path)
    data = DataConfig(source="celeba", root=str(tmp_path), image_size=8, num_workers=0, attributes=["Male", "Smiling"])
    images, labels = prepare_labeled_dataset(data)
    assert len(images) == 4 and labels.names == ["Male", "Smiling"]  # the four train images
    assert labels.values.tolist() == [[0, 1], [0, 0], [1, 1], [1, 0]]
    with pytest.raises(DataError, match="no attribute 'Blond_Hair' .*valid: Smiling, Male, Eyeglasses"):
        prepare_labeled_dataset(dataclasses.replace(data, attributes=["Blond_Hair"]))


def test_labels_follow_their_images_through_shards_and_resume():
    images = np.arange(40, dtype=np.uint8).reshape(40, 1, 1, 1) * 5
    labels = np.arange(40) * 3
    seen = []
    for rank in range(2):
        batches = BatchIterator(images, 4, seed=3, rank=rank, world_size=2, random_flip=True, labels=labels)
        for _ in range(7):
            x, y = next(batches)
            pixel_index = ((x.flatten() + 1) * 127.5 / 5).round().long()
            assert torch.equal(y, pixel_index * 3)
            seen.append((rank, y.tolist()))
        state = batches.state_dict()
        batches.close()
        resumed = BatchIterator(images, 4, seed=3, rank=rank, world_size=2, labels=labels)
        resumed.load_state_dict(state)
        fresh = BatchIterator(images, 4, seed=3, rank=rank, world_size=2, labels=labels)
        for _ in range(7):
            next(fresh)
        assert torch.equal(next(resumed)[1], next(fresh)[1])
        resumed.close()
        fresh.close()


# Training and sampling end to end ----------------------------------------------------------


def test_training_drops_labels_at_cond_drop_prob_and_stores_the_class_names(tmp_path, monkeypatch):
    seen: list[torch.Tensor] = []
    embed = UNet.label_embedding
    monkeypatch.setattr(UNet, "label_embedding", lambda self, labels: seen.append(labels.clone()) or embed(self, labels))
    run = train(tiny(tmp_path, "model.num_classes=10", "train.cond_drop_prob=0.5", "train.batch_size=200",
                     "train.steps=2", "log.sample_every=2", "log.sample_count=25", "log.sample_steps=2"))
    train_labels = torch.cat(seen[:2])  # the two training steps; then the sample grid's
    assert abs((train_labels == 10).float().mean().item() - 0.5) < 0.08
    grid_labels = seen[2]
    assert grid_labels.tolist() == [d for d in range(10) for _ in range(2)]  # one row per class
    loaded = load_model(run)
    assert loaded.config.data.class_names == [str(d) for d in range(10)] and loaded.model.num_classes == 10
    assert "class_names" in (run / "config.yaml").read_text()
    seen.clear()
    train(tiny(tmp_path, "model.num_classes=10", "train.cond_drop_prob=0", "train.steps=1", run="no-drop"))
    assert not (seen[0] == 10).any()


def test_training_refuses_labels_that_do_not_fit_the_config(tmp_path):
    with pytest.raises(ConfigError, match="model.num_classes is 3 but data.source 'digits' has 10 classes .*set model.num_classes=10"):
        train(tiny(tmp_path, "model.num_classes=3", "train.steps=1"))
    names = "[" + ",".join("abcdefghij") + "]"
    with pytest.raises(ConfigError, match="data.class_names .* differ from the data's classes"):
        train(tiny(tmp_path, "model.num_classes=10", f"data.class_names={names}", "train.steps=1", run="names"))


@pytest.fixture(scope="module")
def class_run(tmp_path_factory) -> Path:
    """A folder-of-classes run (cat, dog) trained for one step."""
    root = tmp_path_factory.mktemp("classes")
    for name in ("cat", "dog"):
        for i in range(4):
            save_image(root / "images" / name / f"{i}.png", np.full((6, 6, 3), 40 * i, np.uint8))
    return train(tiny(root, "model.num_classes=2", "data.source=folder", f"data.root={root / 'images'}",
                      "model.in_channels=3", "data.num_workers=0", "train.steps=1", "sample.steps=3"))


ATTRIBUTES = {"data": {"source": "celeba", "attributes": ["Smiling", "Male"]}, "model": {"in_channels": 3}}


def untrained_checkpoint(path: Path, **sections) -> Path:
    """A hand-made checkpoint of an untrained model of ``config(**sections)``."""
    cfg = config(**sections)
    state = build_model(cfg).state_dict()
    save_checkpoint({"model": state, "ema": state, "step": 0, "config": cfg.to_dict()}, path)
    return path


@pytest.mark.slow
def test_class_names_round_trip_and_select_samples(class_run, tmp_path):
    record = sample(class_run, tmp_path / "dog", "--classes", "dog,0", "--num-samples", "3", "--guidance-scale", "2",
                    "--video", "none")
    assert record["classes"] == ["dog", "cat"] and record["samples_per_class"] == 2 and record["guidance_scale"] == 2.0
    default = sample(class_run, tmp_path / "all", "--num-samples", "8", "--video", "gif", "--frames", "2")
    assert default["classes"] == ["cat", "dog"] and default["guidance_scale"] == 1.0
    assert read_png(tmp_path / "all" / "grid.png").shape[:2] == (2 + 2 * 10, 2 + 4 * 10)  # a row of four per class
    height, width = iio.imread(tmp_path / "all" / "denoise.gif", index=0).shape[:2]
    assert 42 * height == 22 * width  # the animation's frames have the same rows (enlarged)
    cli = subprocess.run([sys.executable, "inference.py", "--checkpoint", str(class_run), "--out", str(tmp_path / "cli"),
                          "--classes", "cat", "--num-samples", "2", "--video", "none"],
                         cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert json.loads((tmp_path / "cli" / "samples.json").read_text())["classes"] == ["cat"]


def test_attribute_models_sample_the_listed_attributes(tmp_path):
    checkpoint = untrained_checkpoint(tmp_path / "attributes.pt", **ATTRIBUTES)
    record = sample(checkpoint, tmp_path / "out", "--attributes", "Male=1", "--num-samples", "2", "--steps", "2",
                    "--video", "none")
    assert record["attributes"] == {"Male": 1} and record["guidance_scale"] == 1.0


def test_plain_models_record_no_guidance(tmp_path):
    record = sample(untrained_checkpoint(tmp_path / "plain.pt"), tmp_path / "out", "--num-samples", "2", "--steps", "2", "--video", "none")
    assert "guidance_scale" not in record and "classes" not in record


@pytest.mark.parametrize(("model", "flags", "expected"), [
    ("classes", ["--classes", "cow"], "--classes: unknown class 'cow'; the model has 2: indices 0-1 or names cat, dog"),
    ("classes", ["--classes", "2"], "--classes: unknown class '2'"),
    ("classes", ["--attributes", "Smiling=1"], "--attributes: the model is conditioned on classes"),
    ("attributes", ["--classes", "1"], "--classes: the model is conditioned on attributes"),
    ("attributes", ["--attributes", "Blond_Hair=1"], "--attributes: unknown attribute 'Blond_Hair'; the model has Smiling, Male"),
    ("attributes", ["--attributes", "Male=2"], "--attributes: expected Male=1 .* got 'Male=2'"),
    ("plain", ["--classes", "1"], "--classes: the model is unconditional"),
    ("plain", ["--guidance-scale", "2"], "--guidance-scale: the model is unconditional"),
])
def test_bad_conditioning_flags_are_one_line_errors(model, flags, expected, class_run, tmp_path, capsys):
    checkpoint = {
        "classes": class_run,
        "plain": untrained_checkpoint(tmp_path / "plain.pt"),
        "attributes": untrained_checkpoint(tmp_path / "attributes.pt", **ATTRIBUTES),
    }[model]
    err = fails(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"), *flags], capsys)
    assert re.search(expected, err), err
    assert not (tmp_path / "out").exists()
