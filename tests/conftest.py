import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(int(os.environ.get("GANZIP_TEST_THREADS", "1")))
# latency tables and converted weights go to a fresh folder, never the developer's ~/.cache/ganzip
os.environ["GANZIP_CACHE"] = tempfile.mkdtemp(prefix="ganzip-test-cache-")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
