"""Bad input gets one exact line and exit code 2, never a traceback (a traceback only with --debug)."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from ganzip.cli import app
from upstream_reference import resnet_state_dict

runner = CliRunner()


def _error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


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
    assert line == f"error: {tmp_path} is a directory, not a checkpoint file; pass the .pth file inside it"


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
    assert line == (f"error: cannot create output folder {blocker}: File exists; choose another -o path")


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
