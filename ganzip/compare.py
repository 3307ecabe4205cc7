"""Several generators side by side on the same images: what each costs, how fast it runs, how good it looks.

Choosing a compression method means putting a teacher, one's own student and a peer's released student in one
table, measured by one tool on the same images. Every number here comes from the instruments the single-model
commands use: MACs and parameters from `ganzip.profile`, latency from its alternating runs (all models, and
their onnxruntime sessions, take turns, so machine noise hits them alike), FID from `ganzip.fid` with the standard
Inception weights. FID is given twice: against the real target images, and against the first model's outputs
(usually the teacher), which says how far a student drifted from what it was meant to imitate.

Any generator file `runner` reads takes part: an .onnx model is timed in onnxruntime, its own runtime, and its
parameters and MACs are those of the network its metadata records; a foreign .onnx file records none, so its MACs
are left blank rather than guessed.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image

from ganzip import archs, export, fid, fidelity, images, runner
from ganzip import data as data_sets
from ganzip import profile as prof
from ganzip import threads as thread_policy
from ganzip.errors import UserError, setting
from ganzip.paths import check_writable, refuse_input_as_output
from ganzip.spectrum import unique_names
from ganzip.translate import translate_folder

Progress = Callable[[str, int, int], None]


def latency_size(first_input: Path, aligned: str | None, size: int | None, multiple: int) -> int:
    """The square size latency and MACs are measured at: `size`, else the first input's shorter side rounded down
    to a size every model takes back at its own resolution (what the models actually run at on this data)."""
    if size is not None:
        return size
    side = min(_input_image(first_input, aligned).size) // multiple * multiple
    if side <= 0:
        raise UserError(f"{first_input} is smaller than {multiple} px, the smallest input these models take; "
                        f"pass {setting('size')}")
    return side


def _input_image(path: Path, aligned: str | None) -> Image.Image:
    img = images.load_rgb(path)
    return images.split_aligned(img, aligned, str(path))[0] if aligned else img


def _grid(inputs: list[Path], aligned: str | None, fakes: dict[str, Path], rows: int) -> torch.Tensor:
    """One row per input (the first `rows`): the input, then one column per model, all at the first output's size,
    each column labelled."""
    cell = images.load_rgb(next(iter(fakes.values())) / f"{inputs[0].stem}.png").size

    def tile(img: Image.Image) -> torch.Tensor:
        return images.to_tensor(img if img.size == cell else img.resize(cell, Image.BICUBIC))

    grid_rows = []
    for p in inputs[:rows]:
        row = [tile(_input_image(p, aligned))]
        row += [tile(images.load_rgb(folder / f"{p.stem}.png")) for folder in fakes.values()]
        grid_rows.append(row)
    return images.grid(grid_rows, labels=["input", *fakes])


def _subset(files: list[Path], folder: Path) -> Path:
    """A folder holding links to `files` only, so the folder-based tools (translate, FID features) see just those."""
    folder.mkdir()
    for f in files:
        (folder / f.name).symlink_to(f.resolve())
    return folder


@dataclass
class _Images:
    """The test images compare reads: inputs (A|B pairs when `aligned`), and the real targets, if any."""

    inputs_dir: Path
    inputs: list[Path]
    aligned: str | None
    reals_dir: Path | None
    reals: list[Path]
    reals_aligned: str | None  # the reals are the target halves of the input pairs


def _test_images(data: str | os.PathLike, real: str | os.PathLike | None, direction: str, limit: int | None
                 ) -> _Images:
    split = data_sets.eval_split(data, direction, need_reals=False)
    inputs = images.list_images(split.inputs, "input folder")[:limit]
    if real is not None:
        return _Images(split.inputs, inputs, split.aligned, Path(real),
                       images.list_images(real, "real target folder")[:limit], None)
    if split.aligned:
        return _Images(split.inputs, inputs, split.aligned, split.reals, inputs, split.aligned)
    reals = images.list_images(split.reals, "real target folder")[:limit] if split.reals is not None else []
    return _Images(split.inputs, inputs, None, split.reals, reals, None)


def _quality(models: dict[str, torch.nn.Module], inputs_dir: Path, reals_dir: Path | None, test: _Images,
             work: Path, weights: Path, size: int | None, batch_size: int, device: str,
             report: Callable[[str], Callable[[int, int], None] | None]) -> tuple[dict[str, dict], dict[str, Path]]:
    """Each model's outputs on the inputs (folders under `work`), FID against the reals (None without reals: a set
    of photos of one domain has none) and against the first model's outputs."""
    fakes: dict[str, Path] = {}
    features = {}
    for name, module in models.items():
        fakes[name] = work / f"model{len(fakes)}"
        translate_folder(module, inputs_dir, fakes[name], size=size, batch_size=batch_size, device=device,
                         direction=test.aligned, progress=report(f"{name}: translate"))
        features[name] = fid.folder_features(fakes[name], weights, 16, device,
                                             report(f"{name}: {fid.FEATURES_OF['outputs']}"), cache=False)
    real = None
    if reals_dir is not None:
        real = fid.folder_features(reals_dir, weights, 16, device, report(fid.FEATURES_OF["real"]),
                                   aligned=test.reals_aligned)
    reference = next(iter(models))
    rows = {name: {"fid": fid.frechet_distance(f, real) if real is not None else None,
                   "fid_vs_first": None if name == reference else fid.frechet_distance(f, features[reference])}
            for name, f in features.items()}
    paired = fidelity.paired_to_first(_outputs(fakes))["rows"]
    for name, row in rows.items():
        row["paired_vs_first"] = paired.get(name)
    return rows, fakes


def _outputs(fakes: dict[str, Path]) -> dict[str, torch.Tensor]:
    """Each model's written outputs as one batch, in the same order (the same file names); outputs of inputs of
    several sizes are all resized to the first one's, the same way for every model."""
    first = images.list_images(next(iter(fakes.values())))
    side = images.image_size(first[0])
    same = all(images.image_size(p) == side for p in first)
    return {name: images.load_batch([folder / p.name for p in first], None if same else side[1])
            for name, folder in fakes.items()}


def compare(checkpoints: Sequence[str | os.PathLike], data: str | os.PathLike, *, real: str | os.PathLike | None = None,
            size: int | None = None, direction: str | None = None, limit: int | None = None, onnx: bool = False,
            runs: int = 20, warmup: int = 3, threads: int | None = None, device: str = "cpu",
            weights: str | os.PathLike | None = None, batch_size: int = 4, grid: str | os.PathLike | None = None,
            grid_rows: int = 4, progress: Progress | None = None, teacher_mode: str = "eval") -> dict:
    """Profile, time and score every generator on `data`'s test images; the first one is the reference.

    `real` replaces the data set's real target images; a data set without any (photos of one domain) is scored
    against the first model's outputs only. `limit` keeps the first N inputs (and real targets). Returns one
    dict per model under "models" (in the order given) plus the settings used. `direction` (of paired data)
    defaults to the one a model's provenance records. With `grid`, a PNG with one row
    per input (the first `grid_rows`) and one labelled column per model is written there.
    """
    if len(checkpoints) < 2:
        raise UserError("compare needs at least two checkpoints (the first, usually the teacher, is the reference)")
    if min(runs, batch_size, grid_rows, 1 if size is None else size, 1 if limit is None else limit) <= 0 or warmup < 0:
        raise UserError(f"{setting('runs')}, {setting('batch_size')}, {setting('grid_rows')}, {setting('size')} and "
                        f"{setting('limit')} must be positive integers")
    threads = thread_policy.resolve(threads)  # here, not when the timing starts: after every image and the grid
    if grid is not None:
        refuse_input_as_output(grid, *checkpoints, data, real)
        check_writable(grid)
    path = fid.resolve_weights(weights)  # before any model runs
    names = unique_names([Path(c) for c in checkpoints])
    models = {name: runner.load_generator(c, teacher_mode, device=device, threads=threads)  # timed alike
              for name, c in zip(names, checkpoints)}
    direction = data_sets.direction_for(direction, *(m.provenance for m in models.values()))
    test = _test_images(data, real, direction, limit)
    known = [m.spec for m in models.values() if m.spec is not None]  # a foreign .onnx file takes what it runs
    side = latency_size(test.inputs[0], test.aligned, size, max((archs.size_multiple(s) for s in known), default=1))
    for spec in known:
        archs.check_size(spec, side)

    def report(task: str) -> Callable[[int, int], None] | None:
        return (lambda done, total: progress(task, done, total)) if progress else None

    with tempfile.TemporaryDirectory(prefix="ganzip-compare-") as tmp:
        work = Path(tmp)
        ins, outs = test.inputs_dir, test.reals_dir
        if limit:
            ins = _subset(test.inputs, work / "inputs")
            outs = ins if test.reals_aligned else _subset(test.reals, work / "reals") if test.reals else None
        rows, fakes = _quality(models, ins, outs, test, work, path, size, batch_size, device, report)
        picture = _grid(test.inputs, test.aligned, fakes, grid_rows) if grid is not None else None
    if picture is not None:
        images.save_png(picture, grid)
    with thread_policy.using(threads) as n_threads:
        load_before = thread_policy.load()
        timings = _timings(models, side, onnx, runs, warmup, n_threads, device)
        unstable = thread_policy.stability(timings, load_before, thread_policy.load(), n_threads)
    return {"models": _rows(models, names, checkpoints, side, timings, rows, onnx), "reference": names[0],
            "data": str(data), "inputs": str(test.inputs_dir),
            "real_dir": str(test.reals_dir) if test.reals_dir is not None else None, "aligned": test.aligned,
            "n_images": len(test.inputs), "n_real": len(test.reals), "size": size, "latency_size": side, "runs": runs,
            "threads": n_threads, "unstable": unstable, "device": device, "weights": str(path),
            "grid": str(grid) if grid is not None else None, "grid_columns": ["input", *names] if grid else None}


def _rows(models: dict[str, torch.nn.Module], names: list[str], checkpoints: Sequence[str | os.PathLike], side: int,
          timings: dict[str, prof.Latency], quality: dict[str, dict], onnx: bool) -> list[dict]:
    """One row per model: costs, latencies and FIDs, each cost and latency also as a ratio to the first model."""
    out: list[dict] = []
    for name, c in zip(names, checkpoints):
        module = models[name]
        static = prof.static_profile(module, side)
        row = {"name": name, "path": str(c), "architecture": runner.describe(module),
               "runtime": module.runtime() if isinstance(module, runner.OnnxGenerator) else "torch",
               "params": static.params, "macs": static.macs, "macs_exact": static.macs_exact,
               "latency": timings[name].as_dict(), "latency_ms": timings[name].median_ms, **quality[name]}
        if onnx:
            row["onnx_latency"] = timings[f"{name}:onnx"].as_dict()
            row["onnx_latency_ms"] = timings[f"{name}:onnx"].median_ms
        first = out[0] if out else row
        row["params_ratio"] = first["params"] / row["params"]
        row["macs_ratio"] = _ratio(first["macs"], row["macs"])
        row["macs_exact_ratio"] = _ratio(first["macs_exact"], row["macs_exact"])
        row["speedup"] = first["latency_ms"] / row["latency_ms"]
        if onnx:
            row["onnx_speedup"] = first["onnx_latency_ms"] / row["onnx_latency_ms"]
        out.append(row)
    return out


def _ratio(first: int | None, other: int | None) -> float | None:
    """A cost ratio, None when either count is unknown (a foreign .onnx file's MACs)."""
    return first / other if first and other else None


def _timings(models: dict[str, torch.nn.Module], side: int, onnx: bool, runs: int, warmup: int,
             threads: int, device: str) -> dict[str, prof.Latency]:
    """Every model (and its onnxruntime session) timed in one alternation, so load on the machine hits all alike.

    An .onnx model already runs in onnxruntime: its one timing is also its onnxruntime latency."""
    fns: dict[str, Callable[[], object]] = {}
    for name, module in models.items():
        fns[name] = prof.torch_runner(module, side, 1, device)
        if onnx and not isinstance(module, runner.OnnxGenerator):
            fns[f"{name}:onnx"] = export.onnx_runner(module, side, threads=threads)
    timings = prof.time_alternating(fns, runs=runs, warmup=warmup)
    if onnx:
        timings.update({f"{name}:onnx": timings[name] for name, module in models.items()
                        if isinstance(module, runner.OnnxGenerator)})
    return timings
