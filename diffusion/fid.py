"""FID and KID of generated samples against the training data.

FID (Heusel et al. 2017, eq. 6) is the Frechet distance between Gaussians fitted to the features
of two image sets, ``|mu_r - mu_g|^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))``; KID (Binkowski et al.
2018, eq. 4) is the unbiased MMD^2 with the kernel ``k(x, y) = (x.y / D + 1)^3``, averaged over 100
random subsets of at most 1000 images per side. Both are computed by torchmetrics'
``FrechetInceptionDistance`` and ``KernelInceptionDistance``, fed with features computed once.

The features are the standard ones: the 2048-d pool features of torch-fidelity's port of the
TensorFlow InceptionV3, with its TensorFlow-compatible bilinear resize to 299x299, so the numbers
compare with published FIDs at the same sample count. Any ``nn.Module`` mapping uint8 images
(N, 3, H, W) to features (N, D) can replace it (the tests use small ones).

Image sets are uint8 arrays (N, H, W, C), the layout of the prepared dataset; a grayscale image is
repeated to three channels. The training set's side is reduced once to the sums FID needs (of the
features and of their outer products) and the features of 10,000 random images for KID, cached
next to the prepared dataset as ``<data.root>/cache/fid-<dataset cache name>-<extractor name>.pt``.

FID from N samples is biased upwards, more for small N (Chong & Forsyth 2020): papers use 50,000
samples; compare FIDs only at equal N.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from diffusion.checkpoint import save_checkpoint
from diffusion.config import Config, DataConfig
from diffusion.data import prepare_dataset
from diffusion.distributed import Distributed
from diffusion.errors import UserError
from diffusion.media import to_uint8
from diffusion.samplers import generate_from
from diffusion.schedule import NoiseSchedule

try:  # the optional 'fid' extra
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
    from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3
    from torchmetrics.image.kid import KernelInceptionDistance
except ImportError as err:
    raise UserError(f"FID needs the 'fid' extra ({err.name} is missing): pip install '.[fid]'") from None

INCEPTION_NAME = "inception-v3-compat-pool2048"  # names the standard features in reference cache files
KID_REFERENCE_SIZE = 10_000  # reference images whose features are kept for KID
KID_SUBSETS = 100  # KID is averaged over this many random subsets ...
KID_SUBSET_SIZE = 1000  # ... of at most this many images per side (torch-fidelity's defaults)
UNBIASED_SAMPLES = 10_000  # below this many samples, the report warns that FID is biased upwards


def inception_weights_path() -> Path:
    """Where torch hub keeps the Inception weights: ``$TORCH_HOME/hub/checkpoints/<file>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / URL_INCEPTION_V3.rsplit("/", 1)[-1]


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def inception_extractor(device: str | torch.device = "cpu") -> nn.Module:
    """The standard FID features: uint8 (N, 3, H, W) -> float32 (N, 2048).

    The weights (91 MB) download on first use into torch hub's cache; offline, the error says which
    file to put where. They are checked with ``weights_only=True`` before torch-fidelity loads them.
    """
    url, path = URL_INCEPTION_V3, inception_weights_path()
    try:
        torch.hub.load_state_dict_from_url(url, progress=True, weights_only=True)
    except OSError as err:  # no network (URLError), timeouts, an unwritable cache folder
        raise UserError(
            f"could not download the Inception weights for FID ({_first_line(err)}): download {url} and save it as {path}"
        ) from None
    except Exception:  # the file is there but does not load: truncated, an HTML page, an unsafe pickle
        raise UserError(
            f"{path}: not a valid Inception weights file (truncated, or not plain tensors); delete it and download {url} again"
        ) from None
    inception = NoTrainInceptionV3(
        name=INCEPTION_NAME,
        features_list=["2048"],
        feature_extractor_weights_path=str(path),
        antialias=False,  # torch-fidelity's TensorFlow-compatible resize, as in published FIDs
    )
    return inception.to(device)


def _statistics_device(device: str | torch.device) -> torch.device:
    """Where the float64 statistics live: the extraction device, except MPS (no float64)."""
    device = torch.device(device)
    return torch.device("cpu") if device.type == "mps" else device


@torch.no_grad()
def feature_batches(
    images: np.ndarray,
    extractor: nn.Module,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = False,
    desc: str = "FID features",
) -> Iterator[torch.Tensor]:
    """Features (B, D), float32 on ``device``, of consecutive batches of uint8 images (N, H, W, C)."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected uint8 images (N, H, W, C) with C = 1 or 3, got {images.dtype} {images.shape}")
    for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", disable=not progress, leave=False):
        batch = torch.from_numpy(np.array(images[start : start + batch_size])).to(device)  # a writable copy
        batch = batch.permute(0, 3, 1, 2).expand(-1, 3, -1, -1).contiguous()  # grayscale -> RGB
        yield extractor(batch).float()


@dataclass
class ReferenceStatistics:
    """A reference image set reduced to what FID and KID need (mean = sum / count,
    covariance = (outer_sum - count mean mean^T) / (count - 1), as torchmetrics' FID accumulates)."""

    features_sum: torch.Tensor  # (D,) float64: the sum of the features
    outer_sum: torch.Tensor  # (D, D) float64: the sum of the features' outer products f f^T
    count: int  # the number of images
    kid_features: torch.Tensor  # (K, D) float32: features of K = min(count, KID_REFERENCE_SIZE) random images


def compute_reference_statistics(
    images: np.ndarray,
    extractor: nn.Module,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> ReferenceStatistics:
    """Stream the images through the extractor once, accumulating the sums in float64."""
    if len(images) < 2:
        raise UserError(f"FID needs at least 2 reference (training) images, got {len(images)}")
    stats_device = _statistics_device(device)
    keep = np.zeros(len(images), dtype=bool)  # a fixed random subset for KID
    keep[np.random.default_rng(0).choice(len(images), min(len(images), KID_REFERENCE_SIZE), replace=False)] = True
    features_sum = outer_sum = 0
    kid_features = []
    batches = feature_batches(images, extractor, batch_size=batch_size, device=device, progress=progress, desc="FID reference features")
    for start, features in zip(range(0, len(images), batch_size), batches, strict=True):
        f = features.to(stats_device, torch.float64)
        features_sum = features_sum + f.sum(0)
        outer_sum = outer_sum + f.T @ f
        kid_features.append(features.cpu()[torch.from_numpy(keep[start : start + len(features)])])
    return ReferenceStatistics(features_sum.cpu(), outer_sum.cpu(), len(images), torch.cat(kid_features))


def reference_statistics(
    images: np.ndarray,
    extractor: nn.Module,
    *,
    cache_path: str | Path | None = None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> ReferenceStatistics:
    """:func:`compute_reference_statistics`, read from ``cache_path`` when it holds them, else
    computed and written there atomically. An unreadable cache file is recomputed and replaced."""
    if cache_path is not None and Path(cache_path).is_file():
        try:
            return ReferenceStatistics(**torch.load(cache_path, map_location="cpu", weights_only=True))
        except Exception as err:  # truncated, foreign or corrupt: computing it again is always safe
            print(f"warning: {cache_path}: unreadable FID reference cache ({_first_line(err)}); recomputing it", file=sys.stderr)
    stats = compute_reference_statistics(images, extractor, batch_size=batch_size, device=device, progress=progress)
    if cache_path is not None:
        save_checkpoint(vars(stats), cache_path)
    return stats


def reference_cache_path(dataset: np.ndarray, extractor: nn.Module) -> Path:
    """``fid-<dataset cache name>-<extractor name>.pt`` next to the dataset's cache file, whose name
    encodes the source, its file listing or contents, the image size and the transform. The
    extractor's name is its ``name`` attribute, else its class name."""
    data_cache = Path(dataset.filename)  # prepare_dataset memory-maps its cache file
    return data_cache.with_name(f"fid-{data_cache.stem}-{getattr(extractor, 'name', type(extractor).__name__)}.pt")


class _GivenFeatures(nn.Identity):
    """The 'feature extractor' handed to the torchmetrics metrics: features are computed once,
    outside, and shared by FID and KID."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features


@dataclass
class FidResult:
    fid: float
    kid_mean: float | None  # None when KID was not asked for
    kid_std: float | None
    num_samples: int
    num_reference: int

    def summary(self, sampler: str, steps: int) -> str:
        """The report a script prints: N, sampler and steps, FID, KID, and the small-N warning."""
        lines = [
            f"FID {self.fid:.3f} of {self.num_samples} samples ({sampler}, {steps} steps)"
            f" against {self.num_reference} training images"
        ]
        if self.kid_mean is not None:
            lines.append(f"KID {self.kid_mean:.5f} ± {self.kid_std:.5f} (mean ± std over {KID_SUBSETS} subsets)")
        if self.num_samples < UNBIASED_SAMPLES:
            lines.append(
                f"warning: FID from fewer than {UNBIASED_SAMPLES} samples is biased upwards;"
                " compare FIDs only at equal sample counts (papers use 50000)"
            )
        return "\n".join(lines)


def compare_to_reference(
    images: np.ndarray,
    reference: ReferenceStatistics,
    extractor: nn.Module,
    *,
    kid: bool = True,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> FidResult:
    """FID (and KID) of uint8 images (N, H, W, C) against a reference set's statistics."""
    if len(images) < 2:
        raise UserError(f"FID needs at least 2 samples, got {len(images)}")
    stats_device = _statistics_device(device)
    batches = feature_batches(images, extractor, batch_size=batch_size, device=device, progress=progress, desc="FID sample features")
    features = torch.cat([f.to(stats_device, torch.float64) for f in batches])
    dim = features.shape[1]
    if reference.features_sum.shape != (dim,):
        raise ValueError(f"features have {dim} dimensions, the reference {tuple(reference.features_sum.shape)}")

    frechet = FrechetInceptionDistance(feature=_GivenFeatures(dim), sync_on_compute=False).to(stats_device)
    frechet.real_features_sum = reference.features_sum.to(stats_device)
    frechet.real_features_cov_sum = reference.outer_sum.to(stats_device)
    frechet.real_features_num_samples = torch.tensor(reference.count, device=stats_device)
    frechet.update(features, real=False)
    result = FidResult(float(frechet.compute()), None, None, len(images), reference.count)
    if kid:
        subset_size = min(KID_SUBSET_SIZE, len(features), len(reference.kid_features))
        with warnings.catch_warnings():  # "will save all extracted features": that is what KID needs
            warnings.filterwarnings("ignore", message=".*save all extracted features")
            kernel = KernelInceptionDistance(
                feature=_GivenFeatures(dim), subsets=KID_SUBSETS, subset_size=subset_size, sync_on_compute=False
            )
        kernel.update(reference.kid_features.to(stats_device, torch.float64), real=True)
        kernel.update(features, real=False)
        with torch.random.fork_rng(devices=[]):  # the same subsets every time
            torch.manual_seed(0)
            kid_mean, kid_std = kernel.compute()
        result.kid_mean, result.kid_std = float(kid_mean), float(kid_std)
    return result


def compare_image_sets(
    real: np.ndarray,
    fake: np.ndarray,
    extractor: nn.Module,
    *,
    kid: bool = True,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> FidResult:
    """FID (and KID) between two uint8 image sets (N, H, W, C), nothing cached."""
    reference = compute_reference_statistics(real, extractor, batch_size=batch_size, device=device)
    return compare_to_reference(fake, reference, extractor, kid=kid, batch_size=batch_size, device=device)


def fid_of_samples(
    samples: torch.Tensor,
    data: DataConfig,
    device: str | torch.device,
    *,
    extractor: nn.Module | None = None,
    kid: bool = True,
    progress: bool = True,
) -> FidResult:
    """FID (and KID) of generated samples (N, C, H, W), in [-1, 1] or uint8, against the training
    data of ``data``; its reference statistics are cached under ``<data.root>/cache/``."""
    extractor = extractor if extractor is not None else inception_extractor(device)
    dataset = prepare_dataset(data)
    cache_path = reference_cache_path(dataset, extractor)
    reference = reference_statistics(dataset, extractor, cache_path=cache_path, device=device, progress=progress)
    images = to_uint8(samples).permute(0, 2, 3, 1).numpy()
    return compare_to_reference(images, reference, extractor, kid=kid, device=device, progress=progress)


def fid_of_model(
    model: nn.Module,
    schedule: NoiseSchedule,
    cfg: Config,
    num_samples: int,
    device: str | torch.device,
    *,
    autocast_dtype: torch.dtype | None = None,
    extractor: nn.Module | None = None,
    progress: bool = False,
    env: Distributed | None = None,
    labels: torch.Tensor | None = None,
) -> float | None:
    """FID of ``num_samples`` samples of ``model`` (the trainer's periodic ``log.fid_every``),
    drawn with the fast training-time sampler (``log.sample_sampler``, ``log.sample_steps``) from
    the fixed seed ``sample.seed``, so that successive FIDs see the same noise. No KID.

    Under torchrun (``env``) every process draws its share of the samples and sends it to rank
    zero, which computes the FID; the others return None. Sample i comes from noise stream i
    however the samples are shared, so the FID does not depend on the number of processes (up
    to floating-point rounding: each process runs its own batch shapes). A conditional model
    gets ``labels`` (one per sample, e.g. drawn from the data's labels) and ``sample.guidance_scale``.
    """
    env = env or Distributed()
    share = range(num_samples * env.rank // env.world_size, num_samples * (env.rank + 1) // env.world_size)
    samples = torch.empty(0, dtype=torch.uint8)  # a process left without a share
    if share:
        samples = generate_from(
            model, schedule, cfg.preview_sampling(len(share)), first=share.start, device=device,
            autocast_dtype=autocast_dtype, progress=progress,
            labels=labels[share.start : share.stop] if labels is not None else None,
        )
    shares = env.gather_on_main(to_uint8(samples))  # uint8: a quarter of the bytes
    if shares is None:
        return None
    return fid_of_samples(torch.cat(shares), cfg.data, device, extractor=extractor, kid=False, progress=progress).fid
