"""The notebooks run headless, end to end, on tiny settings; the committed files carry no outputs.

Each notebook runs in a kernel of this very interpreter (nbclient), started in notebooks/ as
Jupyter would start it, with its ``parameters`` cell followed by an injected cell of smaller
settings (as papermill does). Everything it writes (runs, data caches, temporary folders) goes
under pytest's tmp_path.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import nbformat
import pytest
from conftest import ROOT
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from diffusion.checkpoint import load_checkpoint
from diffusion.config import load_config
from diffusion.samplers import SAMPLERS
from models import UNet

NOTEBOOKS = ROOT / "notebooks"
NAMES = ("inference.ipynb", "modules.ipynb", "play.ipynb")
TINY_MODEL = [  # an 8x8 U-Net with 8 base channels: a training step takes milliseconds
    "model.base_channels=8", "model.channel_mult=[1,2]", "model.norm_groups=4", "model.num_res_blocks=1",
    "model.attention_resolutions=[]", "data.image_size=8", "model.image_size=8",
    "train.batch_size=8", "train.warmup_steps=2", "train.device=cpu",
]


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def parameter_cell(nb: nbformat.NotebookNode) -> int:
    """Index of the one cell tagged ``parameters``."""
    (index,) = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
    return index


def execute(name: str, tmp_path: Path, **parameters: object) -> nbformat.NotebookNode:
    """Run notebook ``name`` with ``parameters`` overriding its parameter cell; return it with its outputs.

    A failing cell raises nbclient's ``CellExecutionError`` with the cell's traceback.
    """
    nb = read(name)
    injected = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    nb.cells.insert(parameter_cell(nb) + 1, nbformat.v4.new_code_cell(injected, metadata={"tags": ["injected-parameters"]}))
    # A kernel spec for this interpreter, so the kernel sees this environment whatever other kernels are installed.
    kernels = tmp_path / "kernels"
    write_kernel_spec(str(kernels / "python3"))
    manager = KernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))
    (tmp_path / "tmp").mkdir()
    env = {
        **os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path / "tmp"),
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",  # figures become image/png outputs
    }
    client = NotebookClient(nb, km=manager, timeout=600, resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute(env=env)
    return nb


def outputs(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [output for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs]


def figures(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in output.get("data", {}) for output in outputs(nb))


def printed(nb: nbformat.NotebookNode) -> str:
    return "".join(output.text for output in outputs(nb) if output.output_type == "stream" and output.name == "stdout")


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebooks_start_with_a_parameter_cell_and_carry_no_outputs(name):
    nb = read(name)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code[0] is nb.cells[parameter_cell(nb)], "the parameter cell must be the first code cell"
    for cell in code:
        assert cell.outputs == [], f"{name}: committed outputs in the cell starting {cell.source[:50]!r}"
        assert cell.execution_count is None, f"{name}: committed execution count in {cell.source[:50]!r}"
    assert nb.metadata.kernelspec.name == "python3"


def defaults(name: str) -> dict[str, object]:
    """The values the parameter cell of notebook ``name`` sets."""
    nb = read(name)
    values: dict[str, object] = {}
    exec(nb.cells[parameter_cell(nb)].source, values)  # plain assignments
    return values


def test_default_parameters_describe_valid_runs(repo_root):
    """The settings a user gets without editing anything (the tests below run smaller ones)."""
    inference = defaults("inference.ipynb")
    fallback = load_config(repo_root / "Configs" / "digits.yaml", inference["FALLBACK"])
    for sampler, steps in [*inference["COMPARISON"], (inference["SAMPLER"], inference["STEPS"])]:
        assert sampler in SAMPLERS and 1 <= steps <= fallback.diffusion.timesteps
    play = defaults("play.ipynb")
    cfg = load_config(repo_root / play["CONFIG"], [f"train.steps={play['STEPS']}", *play["OVERRIDES"]])
    assert cfg.train.steps == play["STEPS"] and cfg.log.root == "Models"
    assert load_config(repo_root / defaults("modules.ipynb")["CONFIG"]).model.image_size == 64  # the CelebA model


@pytest.mark.slow
@pytest.mark.xdist_group("notebooks")
def test_inference_notebook_trains_a_fallback_model_and_samples_it(tmp_path):
    comparison = [("ddpm", 12), ("ddim", 6), ("dpm++", 4)]
    nb = execute(
        "inference.ipynb", tmp_path, FALLBACK=[*TINY_MODEL, "train.steps=20", f"data.root={tmp_path / 'Data'}"],
        SAMPLER="ddpm", STEPS=12, SHOWN=4, NUM_SAMPLES=4, FRAMES=6, COMPARISON=comparison,
    )
    assert figures(nb) == 2  # the step-through and the sampler comparison
    rows = re.findall(r"^(ddpm|ddim|dpm\+\+)\s+(\d+)\s+(\d+\.\d+)\s", printed(nb), flags=re.M)
    assert [(sampler, int(steps)) for sampler, steps, _ in rows] == comparison
    (run,) = (tmp_path / "tmp").glob("ddpm-*/digits-*")  # the fallback model's run folder
    assert load_checkpoint(run)["step"] == 20
    (samples,) = (run / "samples").iterdir()
    assert {"grid.png", "samples.json"} <= {path.name for path in samples.iterdir()}
    animation = [o for o in outputs(nb) if "<video" in o.get("data", {}).get("text/html", "") or "image/gif" in o.get("data", {})]
    assert len(animation) == 1


@pytest.mark.slow
@pytest.mark.xdist_group("notebooks")
def test_modules_notebook_counts_every_parameter_of_the_celeba_model(tmp_path):
    nb = execute("modules.ipynb", tmp_path, DATA_ROOT=str(tmp_path / "Data"), DIGIT=7)
    assert figures(nb) == 4  # embeddings, schedules, forward process, parameters per level
    text = printed(nb)
    celeba = load_config(ROOT / "Configs" / "config.yaml").model
    total = sum(p.numel() for p in UNet(**dataclasses.asdict(celeba)).parameters())
    assert re.search(rf"^total\s+{total:,}$", text, flags=re.M)
    assert "the output has the input's shape: (1, 3, 64, 64)" in text
    assert re.search(r"q, k, v each\s+\(1, 1, 256, 256\)", text)  # one head of 256 channels, 16 x 16 tokens
    assert list((tmp_path / "Data" / "cache").glob("digits-*.npy"))
    # Guidance: S = 0 and S = 1 are one plain call each, S = 3 one call on a doubled batch.
    assert "network input of each call (S = 0, 1, 3): [(1, 3, 64, 64), (1, 3, 64, 64), (2, 3, 64, 64)]" in text
    assert float(re.search(r"largest difference (\S+)", text).group(1)) < 1e-5


@pytest.mark.slow
@pytest.mark.xdist_group("notebooks")
def test_play_notebook_trains_logs_and_samples_a_run(tmp_path):
    overrides = [*TINY_MODEL, f"log.root={tmp_path / 'Models'}", f"data.root={tmp_path / 'Data'}",
                 "log.log_every=5", "log.sample_every=10", "log.run_name=play"]
    nb = execute("play.ipynb", tmp_path, STEPS=20, OVERRIDES=overrides, SAMPLE_STEPS=4)
    assert figures(nb) == 4  # loss curves, loss per timestep, samples, the trainer's grids
    run = tmp_path / "Models" / "play"
    assert load_checkpoint(run)["step"] == 20
    assert sorted(path.name for path in (run / "samples").iterdir()) == ["step_0000010.png", "step_0000020.png"]
    assert f"this run: {run}" in printed(nb)
