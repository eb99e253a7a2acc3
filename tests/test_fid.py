"""FID and KID: statistics and distances against float64 numpy/scipy references, the reference
cache, the Inception weights (present with random values, missing offline, corrupt), and the
wiring to the dataset and the samplers. Small injected feature extractors: nothing is downloaded."""

from __future__ import annotations

import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from conftest import RandomConvFeatures, write_random_inception_weights
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

import diffusion.fid as fid
from diffusion.checkpoint import load_checkpoint
from diffusion.config import DataConfig, load_config
from diffusion.data import prepare_dataset
from diffusion.errors import UserError
from diffusion.media import to_uint8
from diffusion.samplers import generate
from diffusion.schedule import NoiseSchedule
from diffusion.trainer import train
from models import UNet, build_model

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"


def random_images(n: int, seed: int, high: int = 256, channels: int = 3, size: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, (n, size, size, channels), dtype=np.uint8)


def features_of(images: np.ndarray, extractor: nn.Module) -> np.ndarray:
    return torch.cat(list(fid.feature_batches(images, extractor))).double().numpy()


def frechet_reference(f1: np.ndarray, f2: np.ndarray) -> float:
    """Heusel et al. eq. 6 in float64 with scipy's matrix square root."""
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    return float(((f1.mean(0) - f2.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real))


def kid_reference(f1: np.ndarray, f2: np.ndarray) -> float:
    """Binkowski et al. eq. 4: unbiased MMD^2 of equally many features, kernel (x.y / D + 1)^3."""
    m, d = len(f1), f1.shape[1]
    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((f1, f1), (f2, f2), (f1, f2)))
    return float((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())


def test_fid_and_kid_match_float64_references():
    extractor = RandomConvFeatures()
    real, fake = random_images(150, seed=1), random_images(150, seed=2, high=160)
    result = fid.compare_image_sets(real, fake, extractor)
    f_real, f_fake = features_of(real, extractor), features_of(fake, extractor)
    assert result.fid == pytest.approx(frechet_reference(f_real, f_fake), rel=1e-8)
    assert result.fid > 1e-3  # the two sets differ
    # 150 images per side: every KID subset is the whole set, so KID is the full unbiased MMD^2
    assert result.kid_mean == pytest.approx(kid_reference(f_real, f_fake), rel=1e-8)
    assert result.kid_std == pytest.approx(0, abs=1e-12)
    assert (result.num_samples, result.num_reference) == (150, 150)


def test_fid_of_unequal_sets_matches_reference_and_identical_sets_give_zero():
    extractor = RandomConvFeatures()
    real, fake = random_images(300, seed=3), random_images(80, seed=4, high=200)
    result = fid.compare_image_sets(real, fake, extractor, kid=False)
    assert result.fid == pytest.approx(frechet_reference(features_of(real, extractor), features_of(fake, extractor)), rel=1e-8)
    assert result.kid_mean is None and result.kid_std is None
    assert abs(fid.compare_image_sets(real, real, extractor, kid=False).fid) < 1e-9


def test_reference_statistics_are_the_feature_sums(monkeypatch):
    extractor = RandomConvFeatures()
    images = random_images(40, seed=5)
    features = torch.from_numpy(features_of(images, extractor))
    stats = fid.compute_reference_statistics(images, extractor, batch_size=16)  # batches of 16, 16 and 8
    assert stats.count == 40
    torch.testing.assert_close(stats.features_sum, features.sum(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(stats.outer_sum, features.T @ features, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(stats.kid_features, features.float())  # fewer images than KID_REFERENCE_SIZE: all
    monkeypatch.setattr(fid, "KID_REFERENCE_SIZE", 7)
    subset = fid.compute_reference_statistics(images, extractor, batch_size=16).kid_features
    rows = {tuple(row.tolist()) for row in subset}
    assert len(rows) == 7 and rows <= {tuple(row.tolist()) for row in features.float()}
    torch.testing.assert_close(fid.compute_reference_statistics(images, extractor).kid_features, subset)


def test_grayscale_images_are_repeated_to_rgb():
    extractor = RandomConvFeatures()
    gray = random_images(30, seed=6, channels=1)
    torch.testing.assert_close(
        torch.from_numpy(features_of(gray, extractor)), torch.from_numpy(features_of(np.repeat(gray, 3, axis=-1), extractor))
    )
    with pytest.raises(ValueError, match="uint8 images"):
        next(fid.feature_batches(random_images(2, seed=0, channels=4), extractor))


def test_reference_cache_is_reused_and_rebuilt_when_unreadable(tmp_path, capsys):
    extractor = RandomConvFeatures()
    images = random_images(50, seed=7)
    path = tmp_path / "cache" / "fid-toy-random-conv16.pt"
    first = fid.reference_statistics(images, extractor, cache_path=path)
    assert extractor.images_seen == 50 and path.is_file()
    second = fid.reference_statistics(images, extractor, cache_path=path)
    assert extractor.images_seen == 50  # read from the cache, not recomputed
    for name in ("features_sum", "outer_sum", "kid_features"):
        torch.testing.assert_close(getattr(second, name), getattr(first, name), rtol=0, atol=0)
    assert second.count == 50
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary files left behind

    path.write_bytes(b"half a file")
    third = fid.reference_statistics(images, extractor, cache_path=path)
    assert extractor.images_seen == 100 and "unreadable FID reference cache" in capsys.readouterr().err
    torch.testing.assert_close(third.outer_sum, first.outer_sum, rtol=0, atol=0)
    fid.reference_statistics(images, extractor, cache_path=path)
    assert extractor.images_seen == 100  # the rewritten cache is valid


def test_summary_reports_n_sampler_steps_and_warns_below_10k():
    result = fid.FidResult(fid=12.3456, kid_mean=0.01234, kid_std=0.00056, num_samples=1000, num_reference=1797)
    text = result.summary("ddim", 50)
    assert "FID 12.346 of 1000 samples (ddim, 50 steps) against 1797 training images" in text
    assert "KID 0.01234 ± 0.00056" in text
    assert "warning: FID from fewer than 10000 samples is biased upwards" in text
    large = fid.FidResult(fid=3.17, kid_mean=None, kid_std=None, num_samples=50_000, num_reference=50_000)
    assert large.summary("ddpm", 1000) == "FID 3.170 of 50000 samples (ddpm, 1000 steps) against 50000 training images"


def test_fewer_than_two_samples_is_a_user_error():
    extractor = RandomConvFeatures()
    reference = fid.compute_reference_statistics(random_images(10, seed=8), extractor)
    with pytest.raises(UserError, match="at least 2 samples"):
        fid.compare_to_reference(random_images(1, seed=9), reference, extractor)
    with pytest.raises(UserError, match="at least 2 reference"):
        fid.compute_reference_statistics(random_images(1, seed=10), extractor)


# The Inception weights -------------------------------------------------------------------


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch hub folder, and downloads that fail as they do without a network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch" / "hub" / "checkpoints" / WEIGHTS_FILE


def test_missing_weights_offline_is_a_one_line_error_saying_where_to_put_them(offline_hub):
    assert fid.inception_weights_path() == offline_hub
    with pytest.raises(UserError) as err:
        fid.inception_extractor()
    message = str(err.value)
    assert "\n" not in message
    assert fid.URL_INCEPTION_V3.endswith("/" + WEIGHTS_FILE) and fid.URL_INCEPTION_V3 in message
    assert f"save it as {offline_hub}" in message and "name resolution" in message
    assert not offline_hub.exists()


class CodeRunner:
    def __reduce__(self):
        return (print, ("this pickle runs code",))


@pytest.mark.parametrize("contents", [b"<html>quota exceeded</html>", pickle.dumps(CodeRunner(), protocol=2)], ids=["garbage", "unsafe-pickle"])
def test_invalid_weights_file_is_a_one_line_error(offline_hub, contents):
    offline_hub.parent.mkdir(parents=True)
    offline_hub.write_bytes(contents)
    with pytest.raises(UserError, match="not a valid Inception weights file") as err:
        fid.inception_extractor()
    assert "\n" not in str(err.value) and str(offline_hub) in str(err.value)


def test_inception_extractor_with_weights_in_the_hub_cache(offline_hub):
    write_random_inception_weights(offline_hub)

    inception = fid.inception_extractor("cpu")  # found in the cache: no download tried
    assert inception.name == fid.INCEPTION_NAME
    gray = random_images(2, seed=10, channels=1, size=16)
    features = features_of(gray, inception)
    assert features.shape == (2, 2048) and np.isfinite(features).all()
    assert not np.allclose(features[0], features[1])
    np.testing.assert_array_equal(features_of(np.repeat(gray, 3, axis=-1), inception), features)
    assert features_of(random_images(1, seed=11, size=32), inception).shape == (1, 2048)  # any size is resized


# Wiring to the dataset and the samplers --------------------------------------------------


def test_fid_of_samples_caches_the_training_set_statistics_next_to_the_dataset(tmp_path):
    extractor = RandomConvFeatures()
    data = DataConfig(source="digits", root=str(tmp_path), image_size=8, num_workers=0)
    samples = torch.rand(20, 1, 8, 8) * 2 - 1
    result = fid.fid_of_samples(samples, data, "cpu", extractor=extractor, progress=False)
    assert extractor.images_seen == 1797 + 20 and result.num_reference == 1797
    dataset = prepare_dataset(data)
    assert [p.name for p in sorted((tmp_path / "cache").glob("fid-*"))] == [f"fid-{Path(dataset.filename).stem}-random-conv16.pt"]
    again = fid.fid_of_samples(samples, data, "cpu", extractor=extractor, progress=False)
    assert extractor.images_seen == 1797 + 40  # the reference came from the cache
    assert (again.fid, again.kid_mean) == (result.fid, result.kid_mean)

    direct = fid.compare_image_sets(dataset, to_uint8(samples).permute(0, 2, 3, 1).numpy(), extractor)
    assert direct.fid == pytest.approx(result.fid, rel=1e-9) and direct.kid_mean == pytest.approx(result.kid_mean, rel=1e-9)


def test_fid_of_model_samples_with_the_training_time_sampler(repo_root, tmp_path):
    cfg = load_config(
        repo_root / "Configs" / "digits.yaml",
        [f"data.root={tmp_path}", "data.image_size=8", "model.image_size=8", "model.base_channels=8",
         "model.channel_mult=[1,2]", "model.attention_resolutions=[]", "model.norm_groups=4",
         "log.sample_sampler=ddim", "log.sample_steps=3", "sample.seed=5", "sample.batch_size=4"],
    )
    torch.manual_seed(0)
    model = UNet(**cfg.to_dict()["model"])
    schedule = NoiseSchedule.from_config(cfg.diffusion)
    value = fid.fid_of_model(model, schedule, cfg, 6, "cpu", extractor=RandomConvFeatures())
    samples = generate(model, schedule, 6, sampler="ddim", steps=3, seed=5, batch_size=4, device="cpu")
    expected = fid.fid_of_samples(samples, cfg.data, "cpu", extractor=RandomConvFeatures(), kid=False, progress=False)
    assert value == pytest.approx(expected.fid, rel=1e-9) and value > 0


def test_training_logs_the_fid_of_the_ema_model_every_fid_every_steps(repo_root, tmp_path, monkeypatch, capsys):
    """log.fid_every: the feature network is made once, before the first step; each FID is that of
    log.fid_samples samples of the EMA weights, to TensorBoard and the console."""
    made = []
    monkeypatch.setattr(fid, "inception_extractor", lambda device: made.append(device) or RandomConvFeatures())
    cfg = load_config(
        repo_root / "Configs" / "digits.yaml",
        [f"data.root={tmp_path / 'data'}", "data.image_size=8", "model.image_size=8", "model.base_channels=8",
         "model.channel_mult=[1,2]", "model.num_res_blocks=1", "model.attention_resolutions=[]", "model.norm_groups=4",
         "train.steps=2", "train.batch_size=4", "train.device=cpu", f"log.root={tmp_path / 'Models'}",
         "log.run_name=fid", "log.sample_every=0", "log.fid_every=1", "log.fid_samples=4",
         "log.sample_sampler=ddim", "log.sample_steps=2"],
    )
    run = train(cfg)
    assert made == [torch.device("cpu")]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("eval/fid")]
    assert [step for step, _ in logged] == [1, 2]
    assert f"step 2: FID {logged[1][1]:.2f} (4 EMA samples)" in capsys.readouterr().out

    state = load_checkpoint(run)  # written at step 2, after the FID: its EMA weights are the ones scored
    ema = build_model(cfg)
    ema.load_state_dict(state["ema"])
    expected = fid.fid_of_model(ema, NoiseSchedule.from_config(cfg.diffusion), cfg, 4, "cpu", extractor=RandomConvFeatures())
    assert logged[1][1] == pytest.approx(expected, rel=1e-6) and expected > 0
    assert len(list((tmp_path / "data" / "cache").glob("fid-*-random-conv16.pt"))) == 1
