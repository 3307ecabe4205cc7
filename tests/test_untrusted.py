"""A checkpoint whose pickle would run code is refused without running it, by every command that reads one."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ganzip.cli import app


class _Payload:
    """Unpickling this creates the marker file: proof that code from the file ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "latest_net_G_A.pth"
    torch.save({"model.1.weight": torch.zeros(1), "payload": _Payload(str(marker))}, path)
    return path, marker


def _commands(evil_path, tmp_path):
    # Valid data, so that every command gets as far as reading the checkpoint.
    data = tmp_path / "data"
    for sub in ("trainA", "trainB", "testA", "testB"):
        (data / sub).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (120, 60, 30)).save(data / sub / "img.png")
    p = str(evil_path)
    return {
        "inspect": ["inspect", p],
        "profile": ["profile", p],
        "profile-teacher": ["profile", p, "--teacher", p],
        "prune": ["prune", p, "--ratio", "4", "-o", str(tmp_path / "s.pth")],
        "distill": ["distill", p, "--data", str(data), "--ratio", "4", "--steps", "1", "--batch-size", "1",
                    "--out-dir", str(tmp_path / "run")],
        "distill-student": ["distill", p, "--data", str(data), "--student", p, "--steps", "1", "--batch-size", "1",
                            "--out-dir", str(tmp_path / "run2")],
        "translate": ["translate", p, str(data / "testA"), "-o", str(tmp_path / "out")],
        "fid": ["fid", p, "--data", str(data)],
        "export": ["export", p, "--onnx", "-o", str(tmp_path / "m.onnx")],
        "spectrum": ["spectrum", p, "--data", str(data)],
    }


COMMANDS = ["inspect", "profile", "profile-teacher", "prune", "distill", "distill-student", "translate", "fid",
            "export", "spectrum"]


@pytest.mark.parametrize("name", COMMANDS)
def test_code_carrying_checkpoint_is_refused_unrun(evil, tmp_path, name):
    path, marker = evil
    args = _commands(path, tmp_path)[name]
    if args[0] not in {c.name for c in app.registered_commands}:
        pytest.fail(f"command {args[0]} is not registered")
    result = CliRunner().invoke(app, args)
    assert not marker.exists(), "unpickling ran code from the checkpoint"
    assert result.exit_code == 2, result.output
    assert "not a plain weights file" in result.output
    assert "Traceback" not in result.output
