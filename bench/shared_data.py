"""Where the benchmarks find the public data they run on; never a path inside the repository."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``SAEREC_DATA_DIR``, else ``shared/data`` beside the repository (as the tests look for it)."""
    return Path(os.environ.get("SAEREC_DATA_DIR") or REPO.parent / "shared" / "data")
