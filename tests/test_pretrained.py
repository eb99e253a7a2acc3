"""diffusers folders and Hub ids as checkpoints, and export to DDPMPipeline folders.

diffusers builds the reference models here: ``UNet2DModel`` at the block layouts of the paper's
released models (``google/ddpm-cifar10-32``; the 256-pixel ``google/ddpm-{celebahq,church,
bedroom,cat}-256``; ``benchmarks/bench_import.py`` holds their full configs), shrunk only in widths
and image size, with random non-zero weights so that no zero-initialised layer can hide a wrong
mapping. Everything runs offline.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, RandomConvFeatures, randomize_, subprocess_env
from test_inference import _Payload, fails

import diffusion.fid
import inference
from benchmarks.bench_import import LAYOUTS as FULL
from benchmarks.bench_import import random_unet
from diffusion import diffusers_format
from diffusion.checkpoint import save_checkpoint
from diffusion.config import from_dict
from diffusion.diffusers_format import ConversionError, model_section, schedule_sections
from diffusion.errors import CheckpointError, run_cli
from diffusion.export import export_pipeline
from diffusion.export import main as export_main
from diffusion.generate import default_out_dir, load_model
from diffusion.schedule import NoiseSchedule
from models import UNet

diffusers = pytest.importorskip("diffusers")

# The released models' block layouts, shrunk in widths (/4) and, for the 256-pixel one, image size.
LAYOUTS = {
    "cifar10": {**FULL["cifar10"], "block_out_channels": [32, 64, 64, 64]},
    "256px": {**FULL["256px"], "sample_size": 64, "block_out_channels": [32, 32, 64, 64, 128, 128]},
}
SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
             "variance_type": "fixed_large", "clip_sample": True}
OLD_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "ddpm-cache"))


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory) -> dict[str, Path]:
    """Each layout saved by ``DDPMPipeline.save_pretrained`` (unet/, scheduler/, model_index.json)."""
    root = tmp_path_factory.mktemp("pipelines")
    for name, config in LAYOUTS.items():
        diffusers.DDPMPipeline(unet=random_unet(config), scheduler=diffusers.DDPMScheduler(**SCHEDULER)).save_pretrained(root / name)
    return {name: root / name for name in LAYOUTS}


def flat(pipeline: Path, dest: Path, scheduler: bool = True) -> Path:
    """The 2022 Hub layout: the UNet's files and scheduler_config.json at the top."""
    shutil.copytree(pipeline / "unet", dest)
    if scheduler:
        shutil.copy(pipeline / "scheduler" / "scheduler_config.json", dest)
    return dest


def with_old_attention_names(folder: Path) -> None:
    """Rename the attention weights back to the pre-0.14 AttentionBlock names, as old uploads hold them."""
    from safetensors.torch import load_file, save_file

    path = folder / "diffusion_pytorch_model.safetensors"
    weights = load_file(path)
    renamed = {}
    for key, value in weights.items():
        for new, old in OLD_NAMES.items():
            if ".attentions." in key and f".{new}." in key:
                key = key.replace(f".{new}.", f".{old}.")
        renamed[key] = value
    assert sum(".query." in k for k in renamed) > 0
    save_file(renamed, path)


def max_difference(unet: torch.nn.Module, ours: torch.nn.Module, size: int) -> float:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 999])
    with torch.no_grad():
        expected = unet(x, t).sample
        assert expected.abs().max() > 0.1  # a real signal, not a zero-initialised output
        return (ours(x, t) - expected).abs().max().item()


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_pipeline_folder_imports_exactly(layout, pipelines):
    loaded = load_model(pipelines[layout])
    theirs = diffusers.UNet2DModel.from_pretrained(pipelines[layout], subfolder="unet").eval()
    assert max_difference(theirs, loaded.model, LAYOUTS[layout]["sample_size"]) <= 1e-4
    assert loaded.weights == "imported" and loaded.source == str(pipelines[layout].resolve())
    m = loaded.config.model
    assert m.downsample_padding == "tf_same" and m.num_heads == 1 and m.head_dim is None
    assert m.attention_resolutions == [16 if layout == "cifar10" else 4]
    assert loaded.config.sample.ddpm_variance == "beta" and loaded.config.sample.clip_denoised


def test_the_flat_hub_layout_with_old_attention_names_imports_exactly(pipelines, tmp_path):
    folder = flat(pipelines["cifar10"], tmp_path / "ddpm-cifar10-32")
    with_old_attention_names(folder)
    theirs = diffusers.UNet2DModel.from_pretrained(folder).eval()  # renames them on load
    assert max_difference(theirs, load_model(folder).model, 32) <= 1e-4


def test_a_bin_only_unet_folder_uses_the_default_scheduler_and_says_so(pipelines, tmp_path, capsys):
    folder = flat(pipelines["256px"], tmp_path / "unet-only", scheduler=False)
    weights = folder / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(weights), folder / "diffusion_pytorch_model.bin")
    weights.unlink()
    loaded = load_model(folder)
    theirs = diffusers.UNet2DModel.from_pretrained(folder).eval()
    assert max_difference(theirs, loaded.model, 64) <= 1e-4
    assert "has no scheduler_config.json: using DDPMScheduler's defaults" in capsys.readouterr().err
    assert loaded.config.sample.ddpm_variance == "beta_tilde"  # DDPMScheduler's fixed_small


def test_the_conversion_is_cached_and_loads_as_fast_as_a_checkpoint(pipelines, tmp_path):
    first = load_model(pipelines["cifar10"])
    cached = list((tmp_path / "ddpm-cache" / "converted").glob("*.pt"))
    assert cached == [first.path]
    stamp = first.path.stat().st_mtime_ns
    second = load_model(pipelines["cifar10"])
    assert second.path == first.path and first.path.stat().st_mtime_ns == stamp  # not converted again
    # Another folder (or changed files) gets its own entry.
    other = flat(pipelines["cifar10"], tmp_path / "copy")
    assert load_model(other).path != first.path


def test_mixing_old_and_new_names_for_one_tensor_is_refused(pipelines, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = flat(pipelines["cifar10"], tmp_path / "mixed")
    path = folder / "diffusion_pytorch_model.safetensors"
    weights = load_file(path)
    key = next(k for k in weights if k.endswith("to_q.weight"))
    save_file({**weights, key.replace("to_q", "query"): weights[key].clone()}, path)
    with pytest.raises(CheckpointError, match=r"holds the same tensor under its old and new names, .*to_q.weight and .*query.weight"):
        load_model(folder)


def test_missing_and_unexpected_tensors_are_refused(pipelines, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = flat(pipelines["cifar10"], tmp_path / "odd")
    path = folder / "diffusion_pytorch_model.safetensors"
    weights = load_file(path)
    save_file({**weights, "extra.weight": torch.ones(1)}, path)
    with pytest.raises(CheckpointError, match=r"1 tensors that this U-Net has no place for \(first: extra.weight\)"):
        load_model(folder)
    del weights["conv_out.bias"]
    save_file(weights, path)
    with pytest.raises(CheckpointError, match=r"has no conv_out.bias \(for our conv_out.bias\)"):
        load_model(folder)


@pytest.mark.parametrize("case", ["pickle", "truncated_bin", "truncated_safetensors", "no_weights", "sharded",
                                  "not_a_state_dict", "bad_json"])
def test_unusable_weight_files_are_one_line_errors(case, pipelines, tmp_path, capsys):
    folder = flat(pipelines["cifar10"], tmp_path / case)
    weights = folder / "diffusion_pytorch_model.safetensors"
    marker = tmp_path / "pwned"
    if case in ("pickle", "truncated_bin", "no_weights", "sharded", "not_a_state_dict"):
        weights.unlink()
    if case == "pickle":
        torch.save({"conv_in.weight": _Payload(marker)}, folder / "diffusion_pytorch_model.bin")
        expected = "refused: loading it could run code"
    elif case == "truncated_bin":
        torch.save({"conv_in.weight": torch.randn(64, 64)}, folder / "diffusion_pytorch_model.bin")
        data = (folder / "diffusion_pytorch_model.bin").read_bytes()
        (folder / "diffusion_pytorch_model.bin").write_bytes(data[: len(data) // 2])
        expected = "truncated/corrupt"
    elif case == "truncated_safetensors":
        weights.write_bytes(weights.read_bytes()[:1000])
        expected = "not a safetensors file, or truncated/corrupt"
    elif case == "no_weights":
        expected = "has config.json but no diffusion_pytorch_model.safetensors or diffusion_pytorch_model.bin"
    elif case == "sharded":
        (folder / "diffusion_pytorch_model.safetensors.index.json").write_text("{}")
        expected = "(sharded weights are not supported)"
    elif case == "not_a_state_dict":
        torch.save([torch.ones(1)], folder / "diffusion_pytorch_model.bin")
        expected = "expected a state dict of named tensors"
    else:
        (folder / "config.json").write_text("{not json")
        expected = "config.json: not a readable JSON file"
    err = fails(["--checkpoint", str(folder), "--out", str(tmp_path / "out")], capsys)
    assert expected in err and str(folder) in err
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize(("cls", "ours"), [("UNet2DModel", "UNET_DEFAULTS"), ("DDPMScheduler", "SCHEDULER_DEFAULTS")])
def test_keys_a_config_leaves_out_take_diffusers_defaults(cls, ours):
    """A key missing from a config.json means what diffusers' constructor default says."""
    signature = inspect.signature(getattr(diffusers, cls).__init__)
    defaults = {k: p.default for k, p in signature.parameters.items() if k != "self"}
    expected = {k: list(v) if isinstance(v, tuple) else v for k, v in getattr(diffusers_format, ours).items()}
    assert {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()} == expected


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"_class_name": "UNet2DConditionModel"}, "_class_name='UNet2DConditionModel' does not map"),
        ({"act_fn": "gelu"}, "act_fn='gelu' does not map"),
        ({"down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D"]}, "down_block_types=["),
        ({"up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"]}, "up_block_types=["),
        ({"norm_eps": 1e-5}, "norm_eps=1e-05"),
        ({"flip_sin_to_cos": True}, "flip_sin_to_cos=True"),
        ({"freq_shift": 0}, "freq_shift=0"),
        ({"downsample_padding": 2}, "downsample_padding=2"),
        ({"time_embedding_type": "fourier"}, "time_embedding_type='fourier'"),
        ({"out_channels": 6}, "out_channels=6"),
        ({"block_out_channels": [32, 48, 64, 64]}, "block_out_channels=[32, 48, 64, 64]"),
        ({"attention_head_dim": 24}, "attention_head_dim=24"),
        ({"class_embed_type": "timestep"}, "class_embed_type='timestep'"),
        ({"resnet_time_scale_shift": "scale_shift"}, "attn_norm_num_groups=None"),
        ({"cross_attention_dim": 512}, "cross_attention_dim=512"),
    ],
)
def test_unet_configs_that_do_not_map_are_refused(change, expected):
    with pytest.raises(ConversionError, match="unet/config.json: ") as info:
        model_section({**LAYOUTS["cifar10"], **change}, "unet/config.json")
    assert expected in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"_class_name": "DDIMScheduler"}, "_class_name='DDIMScheduler'"),
        ({"variance_type": "learned_range"}, "variance_type='learned_range'"),
        ({"trained_betas": [0.1, 0.2]}, "trained_betas=[0.1, 0.2]"),
        ({"beta_schedule": "scaled_linear"}, "beta_schedule='scaled_linear'"),
        ({"prediction_type": "flow"}, "prediction_type='flow'"),
        ({"thresholding": True}, "thresholding=True"),
        ({"clip_sample_range": 2.0}, "clip_sample_range=2.0"),
        ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr=True"),
    ],
)
def test_scheduler_configs_that_do_not_map_are_refused(change, expected):
    with pytest.raises(ConversionError, match="scheduler_config.json: ") as info:
        schedule_sections({"_class_name": "DDPMScheduler", **SCHEDULER, **change}, "scheduler_config.json")
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("scheduler", "variance", "objective"),
    [
        ({"beta_schedule": "linear", "num_train_timesteps": 1000, "variance_type": "fixed_large"}, "beta", "epsilon"),
        ({"beta_schedule": "linear", "num_train_timesteps": 250, "variance_type": "fixed_small"}, "beta_tilde", "sample"),
        ({"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 400, "variance_type": "fixed_small"}, "beta_tilde", "v_prediction"),
    ],
)
def test_the_schedule_maps_to_the_same_betas_variance_and_objective(scheduler, variance, objective):
    """diffusers' betas (float32) equal ours (float64), including our 1000/T scaling of linear
    betas and our cosine schedule as squaredcos_cap_v2; fixed_large is the beta variance."""
    theirs = diffusers.DDPMScheduler(**{**SCHEDULER, **scheduler, "prediction_type": objective})
    diffusion, sample = schedule_sections(dict(theirs.config), "scheduler_config.json")
    ours = NoiseSchedule(**diffusion)
    torch.testing.assert_close(ours.betas.float(), theirs.betas, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours.alpha_bar.float(), theirs.alphas_cumprod, rtol=1e-5, atol=1e-7)
    assert sample["ddpm_variance"] == variance and diffusion["objective"] == {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}[objective]
    t = scheduler["num_train_timesteps"] // 2
    ours_var = ours.betas[t] if variance == "beta" else ours.posterior_variance[t]
    assert abs(theirs._get_variance(t).item() - ours_var.item()) <= 1e-4 * ours_var.item()  # float32 there


# Export ---------------------------------------------------------------------------------------

OURS = {
    "plain": {"model": {"image_size": 16, "base_channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1,
                        "attention_resolutions": [8], "norm_groups": 8, "dropout": 0.1}},
    "every_option": {"model": {"image_size": 16, "in_channels": 1, "base_channels": 32, "channel_mult": [1, 2, 2],
                               "num_res_blocks": 2, "attention_resolutions": [16, 4], "head_dim": 16, "norm_groups": 8,
                               "scale_shift": True, "downsample_padding": "tf_same"},
                     "diffusion": {"timesteps": 200, "schedule": "cosine", "objective": "v"},
                     "sample": {"ddpm_variance": "beta_tilde", "clip_denoised": False, "steps": 200},
                     "log": {"sample_steps": 20}},
}


def our_checkpoint(kind: str, path: Path) -> Path:
    raw = {**OURS[kind], "data": {"image_size": 16}}
    cfg = from_dict(raw, name=kind)
    model, ema = (randomize_(UNet(**dataclasses.asdict(cfg.model)), seed=s) for s in (0, 1))
    save_checkpoint({"model": model.state_dict(), "ema": ema.state_dict(), "step": 7, "config": cfg.to_dict()}, path)
    return path


@pytest.mark.parametrize("kind", list(OURS))
def test_export_loads_in_diffusers_and_imports_back(kind, tmp_path):
    checkpoint = our_checkpoint(kind, tmp_path / "ours.pt")
    ours = load_model(checkpoint)
    assert export_main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "pipe")]) == 0
    unet, info = diffusers.UNet2DModel.from_pretrained(tmp_path / "pipe", subfolder="unet", output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    pipe = diffusers.DDPMPipeline.from_pretrained(tmp_path / "pipe")
    x = torch.randn(2, ours.config.model.in_channels, 16, 16)
    t = torch.tensor([3, 150])
    with torch.no_grad():
        expected = ours.model(x, t)
        assert (pipe.unet.eval()(x, t).sample - expected).abs().max() <= 1e-4
        back = load_model(tmp_path / "pipe")
        assert (back.model(x, t) - expected).abs().max() <= 1e-5
    assert back.config.model == ours.config.model and back.config.diffusion == ours.config.diffusion
    assert (back.config.sample.ddpm_variance, back.config.sample.clip_denoised) == (ours.config.sample.ddpm_variance, ours.config.sample.clip_denoised)
    torch.testing.assert_close(torch.as_tensor(pipe.scheduler.alphas_cumprod), ours.schedule.alpha_bar.float(), rtol=1e-5, atol=1e-7)


def test_no_ema_exports_the_raw_weights(tmp_path):
    checkpoint = our_checkpoint("plain", tmp_path / "ours.pt")
    export_pipeline(checkpoint, tmp_path / "ema")
    assert export_main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "raw"), "--no-ema"]) == 0
    state = torch.load(checkpoint, weights_only=True)
    for folder, key in (("ema", "ema"), ("raw", "model")):
        back = load_model(tmp_path / folder)
        torch.testing.assert_close(back.model.state_dict()["conv_in.weight"], state[key]["conv_in.weight"])


def test_export_refuses_what_diffusers_cannot_express_and_never_overwrites(tmp_path, capsys):
    raw = {"data": {"image_size": 16}, "model": {**OURS["plain"]["model"], "num_heads": 2, "attention_resolutions": [16, 8]}}
    cfg = from_dict(raw)
    path = tmp_path / "heads.pt"
    model = UNet(**dataclasses.asdict(cfg.model))
    save_checkpoint({"model": model.state_dict(), "ema": model.state_dict(), "step": 1, "config": cfg.to_dict()}, path)
    with pytest.raises(SystemExit) as info:
        run_cli(lambda: export_main(["--checkpoint", str(path), "--out", str(tmp_path / "pipe")]))
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert "model.num_heads=2 gives heads of different widths in attention blocks of [32, 64] channels" in err
    assert not (tmp_path / "pipe").exists() and not list(tmp_path.glob(".pipe*"))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep me")
    with pytest.raises(SystemExit):
        run_cli(lambda: export_main(["--checkpoint", str(our_checkpoint("plain", tmp_path / "ok.pt")), "--out", str(tmp_path / "taken")]))
    assert "already exists and is not an empty folder" in capsys.readouterr().err
    assert (tmp_path / "taken" / "mine.txt").read_text() == "keep me"


# The command line and the Hub ---------------------------------------------------------------


def fake_hub_cache(pipeline: Path, hub: Path, commit: str = "0123456789abcdef0123456789abcdef01234567") -> str:
    """google/ddpm-cifar10-32 in the Hugging Face cache layout: refs/main names the commit whose
    snapshots/<commit>/ folder holds the flat files, as the 2022 upload."""
    repo = hub / "models--google--ddpm-cifar10-32"
    flat(pipeline, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return commit


def test_inference_samples_an_imported_folder(pipelines, tmp_path):
    assert inference.main(["--checkpoint", str(pipelines["cifar10"]), "--out", str(tmp_path / "out"),
                           "--steps", "3", "--num-samples", "2", "--video", "none"]) == 0
    record = json.loads((tmp_path / "out" / "samples.json").read_text())
    assert record["source"] == str(pipelines["cifar10"].resolve()) and record["weights"] == "imported"
    assert record["files"] == ["grid.png"] and (tmp_path / "out" / "grid.png").is_file()


def test_fid_of_imported_weights_needs_and_uses_fid_data(pipelines, tmp_path, monkeypatch, capsys):
    """Imported weights carry no dataset: --fid asks for --fid-data, which names the reference set."""
    monkeypatch.chdir(tmp_path)  # data.root 'Data' is relative
    monkeypatch.setattr(diffusion.fid, "inception_extractor", lambda device: RandomConvFeatures())
    argv = ["--checkpoint", str(pipelines["cifar10"]), "--out", str(tmp_path / "out"), "--steps", "2",
            "--num-samples", "2", "--video", "none", "--fid"]
    assert "does not say which data it was trained on; add --fid-data" in fails(argv, capsys)
    assert inference.main([*argv, "--fid-data", "digits"]) == 0
    record = json.loads((tmp_path / "out" / "samples.json").read_text())
    assert record["fid_reference_images"] == 1797  # scikit-learn's digits


def test_hub_ids_resolve_in_an_offline_cache(pipelines, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    commit = fake_hub_cache(pipelines["cifar10"], tmp_path / "hub")
    folder = load_model(pipelines["cifar10"])
    for spec in ("google/ddpm-cifar10-32", f"google/ddpm-cifar10-32@{commit}"):
        loaded = load_model(spec)
        assert loaded.source == f"google/ddpm-cifar10-32@{commit}" and loaded.name == "google--ddpm-cifar10-32"
        torch.testing.assert_close(loaded.model.state_dict(), folder.model.state_dict(), rtol=0, atol=0)
    monkeypatch.chdir(tmp_path)  # default_out_dir makes its folder under the relative log.root
    out = default_out_dir(loaded)
    assert out.parent == Path("Models") / "google--ddpm-cifar10-32" / "samples" and (tmp_path / out).is_dir()
    err = fails(["--checkpoint", "google/ddpm-nowhere-32", "--out", str(tmp_path / "out")], capsys)
    assert err.startswith("error: google/ddpm-nowhere-32: no such file or folder")
    assert "HF_HUB_OFFLINE=1" in err and "hf download google/ddpm-nowhere-32" in err
    assert str(tmp_path / "hub") in err and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_inference_cli_on_a_hub_id_offline_without_diffusers(pipelines, tmp_path):
    """inference.py in a fresh process, with HF_HUB_OFFLINE=1 and HF_HOME / HF_HUB_CACHE set as a
    user would; the whole run never imports diffusers."""
    fake_hub_cache(pipelines["cifar10"], tmp_path / "hf" / "hub")
    env = {**subprocess_env(), "DDPM_CACHE": str(tmp_path / "ddpm-cache"), "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub")}
    argv = ["inference.py", "--checkpoint", "google/ddpm-cifar10-32", "--out", str(tmp_path / "out"),
            "--steps", "3", "--num-samples", "2", "--video", "none"]
    code = (f"import runpy, sys; sys.argv = {argv!r}\n"
            "try:\n    runpy.run_path('inference.py', run_name='__main__')\n"
            "except SystemExit as done:\n    assert done.code == 0, done.code\n"
            "assert 'diffusers' not in sys.modules, 'diffusers was imported'\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "out" / "samples.json").read_text())
    assert record["source"].startswith("google/ddpm-cifar10-32@0123456789abcdef")


# The config files of google/ddpm-cat-256 as uploaded in 2022 (diffusers 0.0.4 / 0.1.1), verbatim:
# the keys and values of the released repositories, not of a current save_pretrained.
RELEASED_UNET_256 = """{"_class_name": "UNet2DModel", "_diffusers_version": "0.0.4", "act_fn": "silu",
 "attention_head_dim": null, "block_out_channels": [128, 128, 256, 256, 512, 512], "center_input_sample": false,
 "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
 "downsample_padding": 0, "flip_sin_to_cos": false, "freq_shift": 1, "in_channels": 3, "layers_per_block": 2,
 "mid_block_scale_factor": 1, "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3, "sample_size": 256,
 "time_embedding_type": "positional",
 "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"]}"""
RELEASED_SCHEDULER = """{"_class_name": "DDPMScheduler", "_diffusers_version": "0.1.1", "beta_end": 0.02,
 "beta_schedule": "linear", "beta_start": 0.0001, "clip_sample": true, "num_train_timesteps": 1000,
 "trained_betas": null, "variance_type": "fixed_small"}"""


def test_the_released_config_files_map_to_the_papers_model():
    model = model_section(json.loads(RELEASED_UNET_256), "config.json")
    assert model["channel_mult"] == [1, 1, 2, 2, 4, 4] and model["base_channels"] == 128
    assert (model["attention_resolutions"], model["num_heads"], model["head_dim"]) == ([16], 1, None)
    assert model["downsample_padding"] == "tf_same" and model["image_size"] == 256
    diffusion_section, sample = schedule_sections(json.loads(RELEASED_SCHEDULER), "scheduler_config.json")
    assert diffusion_section == {"timesteps": 1000, "schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02, "objective": "eps"}
    assert sample == {"ddpm_variance": "beta_tilde", "clip_denoised": True}
    released = json.loads(RELEASED_UNET_256)
    for key in ("block_out_channels", "down_block_types", "up_block_types", "downsample_padding", "norm_eps"):
        assert FULL["256px"][key] == released[key], key  # the tests' and the benchmark's layout is the released one
