"""Pre-flight checks of the configured raw inputs: cheap, and run before Ray starts, so a wrong
``data.path`` is reported in a second instead of after the cluster's start-up."""
from __future__ import annotations

from pathlib import Path

from saerec.config import DataSection
from saerec.data.records import DataError

SEQUENCES_FILES = ("sequences.txt", "items.tsv")


def _readable_file(path: Path, key: str, source: str, expected: str) -> None:
    if not path.exists():
        raise DataError(f"{key} {path}: no such file (data.source={source} expects {expected})")
    if path.is_dir():
        raise DataError(f"{key} {path} is a folder; data.source={source} expects a file: {expected}")
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise DataError(f"{key} {path} cannot be read: {exc.strerror or exc}") from exc


def check_inputs(cfg: DataSection) -> None:
    """Raise DataError naming the key and path when a configured input is missing, the wrong kind
    (file vs folder) or unreadable. The demo source has no inputs."""
    if cfg.source == "demo":
        return
    if cfg.source == "amazon":
        _readable_file(input_path(cfg), "data.path", "amazon", "a reviews file such as reviews_Beauty_5.json.gz")
        if cfg.meta_path:
            _readable_file(Path(cfg.meta_path).expanduser(), "data.meta_path", "amazon",
                           "a metadata file such as meta_Beauty.json.gz")
        _check_categories(cfg)
        return
    folder = input_path(cfg)
    expected = "a folder with sequences.txt and items.tsv (users.tsv optional)"
    if not folder.exists():
        raise DataError(f"data.path {folder}: no such folder (data.source=sequences expects {expected})")
    if not folder.is_dir():
        raise DataError(f"data.path {folder} is a file; data.source=sequences expects {expected}")
    for name in SEQUENCES_FILES:
        if not (folder / name).exists():
            raise DataError(f"data.path {folder} has no {name} (data.source=sequences expects {expected})")
        _readable_file(folder / name, "data.path", "sequences", expected)
    meta = item_meta_path(cfg)
    if meta is not None:
        _readable_file(meta, "data.item_meta", "sequences",
                       "an item metadata file with columns item_id asin title brand")
    _check_categories(cfg)


def _check_categories(cfg: DataSection) -> None:
    path = item_categories_path(cfg)
    if path is not None:
        _readable_file(path, "data.item_categories", cfg.source,
                       "a category label file with columns item_id categories")


def input_path(cfg: DataSection) -> Path:
    """``data.path``, which the amazon and sequences sources require."""
    if not cfg.path:
        what = "a reviews_*.json.gz file" if cfg.source == "amazon" else "a folder with sequences.txt and items.tsv"
        raise DataError(f"data.path is required for data.source={cfg.source!r} ({what})")
    return Path(cfg.path).expanduser()


def item_meta_path(cfg: DataSection) -> Path | None:
    """``data.item_meta``: an absolute path (or ``~``) as given, a relative one inside ``data.path``,
    so a config can name the file once for wherever the data folder lives."""
    if not cfg.item_meta:
        return None
    meta = Path(cfg.item_meta).expanduser()
    return meta if meta.is_absolute() else input_path(cfg) / meta


def item_categories_path(cfg: DataSection) -> Path | None:
    """``data.item_categories``: an absolute path (or ``~``) as given; a relative one inside the
    data folder (``data.path`` for sequences, the reviews file's folder for amazon)."""
    if not cfg.item_categories:
        return None
    path = Path(cfg.item_categories).expanduser()
    if path.is_absolute():
        return path
    folder = input_path(cfg)
    return (folder if cfg.source == "sequences" else folder.parent) / path
