"""FID and KID with the standard TF-Inception-2015-12-05 network (weights: ganzip.inception), working offline.

Features are extracted here with torch-fidelity's network but ganzip's own image loading (gray, RGBA,
16-bit images are converted like everywhere else in ganzip, mixed sizes are fine), and cached per folder for
the process, so a teacher and a student compared on the same real images extract those only once.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from ganzip import data, images
from ganzip.errors import UserError
from ganzip.inception import resolve_weights
from ganzip.paths import check_writable_folder, refuse_input_as_output
from ganzip.translate import translate_folder

if TYPE_CHECKING:
    from PIL import Image

# --- features ----------------------------------------------------------------------------------------------

# How progress names each feature pass: a log line off a terminal reads "student: features of the real images:
# 16/20, ..." rather than a bare "real".
FEATURES_OF = {"outputs": "features of its outputs", "generated": "features of the generated images",
               "real": "features of the real images"}
_EXTRACTORS: dict[tuple[str, str], torch.nn.Module] = {}
_FEATURES: dict[tuple, np.ndarray] = {}


def extractor(weights: str | os.PathLike | None = None, device: str = "cpu") -> torch.nn.Module:
    """torch-fidelity's `inception-v3-compat` network with the resolved weights (built once per process)."""
    # torch-fidelity is imported where FID is computed, not at the top: its package imports torchvision, sympy and
    # every feature extractor it has (over a thousand modules), which prune, distill and profile never use
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = resolve_weights(weights)
    key = (str(path), device)
    if key not in _EXTRACTORS:
        model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
        _EXTRACTORS[key] = model.eval().to(device)
    return _EXTRACTORS[key]


def _uint8(img: "Image.Image") -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def folder_features(folder: str | os.PathLike, weights: str | os.PathLike | None = None, batch_size: int = 16,
                    device: str = "cpu", progress: Callable[[int, int], None] | None = None,
                    aligned: str | None = None, cache: bool = True) -> np.ndarray:
    """pool3 features (N, 2048) of every image in `folder`, cached for this process by file identity.

    With `aligned` ("AtoB"/"BtoA") the folder holds A|B pairs and the target half of each is used. Freshly
    generated images pass `cache=False`: they are read once, and temporary folders must not pile up here.
    """
    files = images.list_images(folder)
    path = resolve_weights(weights)
    identity = tuple((str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for p in files)
    key = (str(path), device, aligned, identity)
    if key in _FEATURES:
        if progress:
            progress(len(files), len(files))
        return _FEATURES[key]

    def load(p: Path) -> "Image.Image":
        img = images.load_rgb(p)
        return images.split_aligned(img, aligned, str(p))[1] if aligned else img

    model = extractor(path, device)
    feats: list[np.ndarray] = []
    batch: list[torch.Tensor] = []
    done = 0

    def flush() -> None:
        nonlocal done
        with torch.inference_mode():
            (out,) = model(torch.stack(batch).to(device))
        feats.append(out.double().cpu().numpy())
        done += len(batch)
        batch.clear()
        if progress:
            progress(done, len(files))

    for p in files:
        t = _uint8(load(p))
        if batch and (t.shape != batch[0].shape or len(batch) >= batch_size):
            flush()  # only equally sized images stack; Inception resizes each to 299 anyway
        batch.append(t)
    flush()
    result = np.concatenate(feats, axis=0)
    if cache:
        _FEATURES[key] = result
    return result


def tensor_features(x: torch.Tensor, weights: str | os.PathLike | None = None, batch_size: int = 16,
                    device: str = "cpu") -> np.ndarray:
    """pool3 features of a batch of generated images in [-1, 1], quantised to 8 bits exactly as writing them as
    PNGs would (images.to_pil), so a FID from tensors equals the FID of the same images saved and read back."""
    model = extractor(weights, device)
    feats = []
    for start in range(0, len(x), batch_size):
        chunk = ((x[start:start + batch_size].detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().byte()
        with torch.inference_mode():
            (out,) = model(chunk.to(device))
        feats.append(out.double().cpu().numpy())
    return np.concatenate(feats, axis=0)


# --- metrics -----------------------------------------------------------------------------------------------

def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """FID between two feature sets, with the cross term computed exactly.

    tr sqrt(S1 S2) equals the sum of the singular values of A Bᵀ / sqrt((n1-1)(n2-1)) where A, B are the
    centred features (the nonzero eigenvalues of S1 S2 = AᵀA BᵀB/c are those of (ABᵀ)(ABᵀ)ᵀ/c). This is
    exact for any sample count, including the rank-deficient case n < 2048 where a matrix square root of
    S1 S2 is ill-conditioned; with many samples the symmetric form sqrt(S1) S2 sqrt(S1) is used instead.
    """
    f1, f2 = np.asarray(f1, dtype=np.float64), np.asarray(f2, dtype=np.float64)
    if len(f1) < 2 or len(f2) < 2:
        raise UserError("FID needs at least 2 images on each side; add images")
    mu1, mu2 = f1.mean(0), f2.mean(0)
    a, b = f1 - mu1, f2 - mu2
    n1, n2, d = len(f1), len(f2), f1.shape[1]
    trace1 = (a * a).sum() / (n1 - 1)
    trace2 = (b * b).sum() / (n2 - 1)
    if min(n1, n2) <= d:
        cross = np.linalg.svd(a @ b.T, compute_uv=False).sum() / np.sqrt((n1 - 1) * (n2 - 1))
    else:
        s1, s2 = a.T @ a / (n1 - 1), b.T @ b / (n2 - 1)
        w, v = np.linalg.eigh(s1)
        root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        cross = np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ s2 @ root1), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + trace1 + trace2 - 2 * cross)


def kernel_inception_distance(f1: np.ndarray, f2: np.ndarray, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 2020) -> tuple[float, float]:
    """KID (mean, std) with torch-fidelity's estimator. A folder smaller than `subset_size` draws subsets of half
    its images: subsets of all of them would all be the same set, and their spread (the std) always 0."""
    # torch-fidelity on use, as in `extractor`
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    smaller = min(len(f1), len(f2))
    size = subset_size if smaller > subset_size else max(2, smaller // 2)
    if smaller < 2:
        raise UserError("KID needs at least 2 images on each side; add images")
    out = kid_features_to_metric(torch.from_numpy(np.asarray(f1)), torch.from_numpy(np.asarray(f2)),
                                 kid_subsets=subsets, kid_subset_size=size, rng_seed=seed, verbose=False,
                                 kid_kernel="poly", kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
                                 kid_kernel_poly_coef0=1)
    return out[KEY_METRIC_KID_MEAN], out[KEY_METRIC_KID_STD]


def fid_folders(fake_dir: str | os.PathLike, real_dir: str | os.PathLike, kid: bool = False,
                weights: str | os.PathLike | None = None, batch_size: int = 16, device: str = "cpu",
                progress: Callable[[str, int, int], None] | None = None) -> dict:
    """FID (and KID) between two image folders; images may have any size (Inception resizes to 299)."""
    path = resolve_weights(weights)

    def report(name: str) -> Callable[[int, int], None] | None:
        return (lambda done, total: progress(name, done, total)) if progress else None

    fake = folder_features(fake_dir, path, batch_size, device, report(FEATURES_OF["generated"]))
    real = folder_features(real_dir, path, batch_size, device, report(FEATURES_OF["real"]))
    result: dict[str, Any] = {"fid": frechet_distance(fake, real), "n_fake": len(fake), "n_real": len(real),
                              "weights": str(path)}
    if kid:
        result["kid_mean"], result["kid_std"] = kernel_inception_distance(fake, real)
    return result


# --- generators --------------------------------------------------------------------------------------------

def fid_for_generator(module: torch.nn.Module, data_dir: str | os.PathLike, real_dir: str | os.PathLike | None = None,
                      kid: bool = False, weights: str | os.PathLike | None = None, size: int | None = None,
                      batch_size: int = 4, device: str = "cpu", direction: str = "AtoB",
                      out_dir: str | os.PathLike | None = None,
                      progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Translate a data set's test inputs with `module`, then FID against the real targets (or `real_dir`)."""
    split = data.eval_split(data_dir, direction, need_reals=real_dir is None)
    inputs, reals, aligned = split.inputs, split.reals, split.aligned
    if real_dir is not None:
        reals, aligned_reals = Path(real_dir), None
    else:
        aligned_reals = aligned
    refuse_input_as_output(out_dir, inputs, reals)  # kept images written over the inputs or the reals
    path = resolve_weights(weights)  # fail before translating anything
    if out_dir is not None:
        check_writable_folder(out_dir)
    # translated into a fresh folder and scored there, so images already in out_dir are never counted as fakes;
    # then renamed into out_dir (the fresh folder is made inside it: same file system)
    with tempfile.TemporaryDirectory(prefix=".ganzip-fid-", dir=out_dir) as work:
        fake_dir = Path(work) / "fake"
        written = translate_folder(module, inputs, fake_dir, size=size, batch_size=batch_size, device=device,
                                   direction=aligned,
                                   progress=(lambda d, t: progress("translate", d, t)) if progress else None)

        def report(name: str) -> Callable[[int, int], None] | None:
            return (lambda done, total: progress(name, done, total)) if progress else None

        fake = folder_features(fake_dir, path, 16, device, report(FEATURES_OF["outputs"]), cache=False)
        real = folder_features(reals, path, 16, device, report(FEATURES_OF["real"]), aligned=aligned_reals)
        for p in written if out_dir is not None else ():
            os.replace(p, Path(out_dir) / p.name)
    result: dict[str, Any] = {"fid": frechet_distance(fake, real), "n_fake": len(fake), "n_real": len(real),
                              "weights": str(path), "inputs": str(inputs), "real_dir": str(reals),
                              "fake_dir": str(out_dir) if out_dir else None}
    if kid:
        result["kid_mean"], result["kid_std"] = kernel_inception_distance(fake, real)
    return result
