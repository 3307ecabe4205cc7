import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(int(os.environ.get("GANZIP_TEST_THREADS", "1")))

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
