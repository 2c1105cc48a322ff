"""From a stream of interactions to canonical tables: duplicates, k-core, chronological sequences,
the leave-one-out split and the train-only text corpus.

Duplicates (``data.duplicates=drop``): a record with the same user, item and time as an earlier
one is the same interaction listed twice (Amazon's 2018 dumps repeat lines), so only the first in
file order is kept; the same item at another time is a new interaction (bought or reviewed again)
and is kept. Records without a time (the sequences source, where the position is the time) are
never duplicates. The corpus then holds each distinct text once: identical texts (one review
copied onto every variant of a product) would only give the SAE the same embedding again.

Only integer columns are held in memory; review texts are spooled to a local Parquet file while
reading and streamed back when the corpus is written, so memory does not grow with text volume.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from saerec import schemas
from saerec.data.records import DataError, Interaction
from saerec.data.split import MIN_LENGTH, split_labels

SPOOL_BATCH = 50_000
CORPUS_PART_ROWS = 200_000
SCRATCH_PREFIX = "saerec-prepare-"
SCRATCH_LOCK = ".owner.lock"

log = logging.getLogger(__name__)


@dataclass
class CorpusOptions:
    text: str
    review_drop: float
    seed: int
    drop_repeats: bool = True
    empty_hint: str = ""  # appended to the message when no text is left: which file, which key to try


@dataclass
class Tables:
    """Canonical interaction tables plus the review spool the corpus is built from."""
    interactions: pa.Table
    users: pa.Table
    items: pa.Table
    record_of_row: np.ndarray
    spool: Path | None
    stats: dict[str, int]


def _sort_ids(raw: list[str]) -> list[str]:
    return sorted(raw, key=lambda r: (0, int(r), "") if r.isdigit() else (1, 0, r))


def duplicates(users: np.ndarray, items: np.ndarray, stamps: np.ndarray) -> np.ndarray:
    """Mask of records that repeat an earlier record's (user, item, time); ``stamps < 0`` (no time)
    never repeat."""
    order = np.lexsort((np.arange(len(users)), stamps, items, users))
    u, i, t = users[order], items[order], stamps[order]
    same = np.r_[False, (u[1:] == u[:-1]) & (i[1:] == i[:-1]) & (t[1:] == t[:-1])]
    mask = np.zeros(len(users), dtype=bool)
    mask[order] = same & (t >= 0)
    return mask


def _k_core(users: np.ndarray, items: np.ndarray, k: int, keep: np.ndarray) -> np.ndarray:
    """Mask of interactions left (of those in ``keep``) once every user and item has at least ``k``."""
    while True:
        u_count = np.bincount(users[keep], minlength=users.max() + 1)
        i_count = np.bincount(items[keep], minlength=items.max() + 1)
        new = keep & (u_count[users] >= k) & (i_count[items] >= k)
        if new.sum() == keep.sum():
            return new
        keep = new


def collect(records: Iterable[Interaction], k_core: int, workdir: Path, drop_duplicates: bool = True) -> Tables:
    """Read the stream once, spooling review texts, then filter and order the integer columns."""
    user_ids: dict[str, int] = {}
    item_ids: dict[str, int] = {}
    users, items, stamps = array("i"), array("i"), array("q")
    spool_path = workdir / "reviews.parquet"
    writer: pq.ParquetWriter | None = None
    batch_no: list[int] = []
    batch_text: list[str] = []
    spool_schema = pa.schema([("record", pa.int64()), ("text", pa.string())])

    def flush() -> None:
        nonlocal writer
        if not batch_no:
            return
        if writer is None:
            writer = pq.ParquetWriter(spool_path, spool_schema)
        writer.write_table(pa.table({"record": batch_no, "text": batch_text}, schema=spool_schema))
        batch_no.clear()
        batch_text.clear()

    for record_no, rec in enumerate(records):
        users.append(user_ids.setdefault(rec.user, len(user_ids)))
        items.append(item_ids.setdefault(rec.item, len(item_ids)))
        stamps.append(-1 if rec.timestamp is None else rec.timestamp)
        if rec.review and rec.review.strip():
            batch_no.append(record_no)
            batch_text.append(rec.review)
            if len(batch_no) >= SPOOL_BATCH:
                flush()
    flush()
    if writer is not None:
        writer.close()

    u = np.frombuffer(users, dtype=np.int32)
    it = np.frombuffer(items, dtype=np.int32)
    ts = np.frombuffer(stamps, dtype=np.int64)
    if len(u) == 0:
        raise DataError("the input holds no interactions")
    repeated = duplicates(u, it, ts) if drop_duplicates else np.zeros(len(u), dtype=bool)
    keep = _k_core(u, it, k_core, ~repeated)
    records_kept = np.flatnonzero(keep)
    u, it, ts = u[keep], it[keep], ts[keep]
    if len(u) == 0:
        raise DataError(f"no interactions survive {k_core}-core filtering")

    lengths = np.bincount(u, minlength=len(user_ids))
    short = lengths[u] < MIN_LENGTH
    dropped_short_users = int(((lengths > 0) & (lengths < MIN_LENGTH)).sum())
    u, it, ts, records_kept = u[~short], it[~short], ts[~short], records_kept[~short]
    if len(u) == 0:
        raise DataError("no user has the 3 interactions a leave-one-out split needs")

    raw_users = np.array(list(user_ids), dtype=object)
    raw_items = np.array(list(item_ids), dtype=object)
    user_order = _sort_ids(list(raw_users[np.unique(u)]))
    item_order = _sort_ids(list(raw_items[np.unique(it)]))
    u_map = np.zeros(len(user_ids), dtype=np.int32)
    i_map = np.zeros(len(item_ids), dtype=np.int32)
    u_map[[user_ids[r] for r in user_order]] = np.arange(1, len(user_order) + 1)
    i_map[[item_ids[r] for r in item_order]] = np.arange(1, len(item_order) + 1)
    u, it = u_map[u], i_map[it]

    order = np.lexsort((records_kept, ts, u))
    u, it, ts, records_kept = u[order], it[order], ts[order], records_kept[order]
    starts = np.r_[0, np.flatnonzero(np.diff(u)) + 1]
    counts = np.diff(np.r_[starts, len(u)])
    position = (np.arange(len(u)) - np.repeat(starts, counts)).astype(np.int32)
    split = split_labels(counts)

    interactions = pa.table({
        "user": pa.array(u, pa.int32()), "item": pa.array(it, pa.int32()),
        "position": pa.array(position, pa.int32()),
        "timestamp": pa.array(np.where(ts < 0, None, ts).tolist(), pa.int64()),
        "split": pa.array(split, pa.string()),
    }, schema=schemas.INTERACTIONS)
    users_table = pa.table({"user": pa.array(range(1, len(user_order) + 1), pa.int32()),
                            "raw_id": pa.array(user_order, pa.string())}, schema=schemas.USERS)
    items_table = pa.table({"item": pa.array(range(1, len(item_order) + 1), pa.int32()),
                            "raw_id": pa.array(item_order, pa.string()),
                            "text": pa.array([""] * len(item_order), pa.string())}, schema=schemas.ITEMS)
    stats = {
        "records_read": len(users),
        "duplicates_dropped": int(repeated.sum()),
        "users": len(user_order), "items": len(item_order), "interactions": len(u),
        "removed_by_k_core": int(len(users) - repeated.sum() - keep.sum()),
        "users_dropped_short": dropped_short_users,
        **{f"{s}_interactions": int((split == s).sum()) for s in schemas.SPLITS},
    }
    return Tables(interactions, users_table, items_table, records_kept,
                  spool_path if spool_path.exists() else None, stats)


def with_item_texts(tables: Tables, texts: dict[str, str]) -> Tables:
    """Fill the items table's text column from ``raw_id -> description``."""
    raw = tables.items.column("raw_id").to_pylist()
    column = pa.array([texts.get(r, "") for r in raw], pa.string())
    tables.items = tables.items.set_column(2, "text", column)
    tables.stats["items_with_text"] = sum(1 for r in raw if texts.get(r, "").strip())
    return tables


def write_corpus(tables: Tables, opts: CorpusOptions, write_part: Callable[[int, pa.Table], None]) -> dict[str, int]:
    """Write the text corpus in parts: reviews of training interactions and/or item descriptions.

    Valid and test interactions never contribute text. ``review_drop`` removes that fraction of
    the texts, decided per text by a generator seeded from the run seed, so reruns agree.
    """
    rng = np.random.default_rng(opts.seed)
    counts = {"corpus_reviews": 0, "corpus_items": 0, "corpus_dropped": 0, "corpus_empty_skipped": 0,
              "corpus_repeats_dropped": 0}
    seen: set[bytes] = set()  # 8-byte digests of the texts so far: about 100 bytes per distinct text

    def first_time(text: str) -> bool:
        digest = hashlib.blake2b(text.strip().encode("utf-8"), digest_size=8).digest()
        if digest in seen:
            return False
        seen.add(digest)
        return True

    pending: list[pa.Table] = []
    pending_rows = 0
    part = 0
    next_id = 0

    def emit(kind: str, user: np.ndarray, item: np.ndarray, text: list[str]) -> None:
        nonlocal pending_rows, next_id
        non_empty = np.array([bool(t and t.strip()) for t in text], dtype=bool)
        counts["corpus_empty_skipped"] += int((~non_empty).sum())
        if opts.drop_repeats:
            new = np.array([bool(ok) and first_time(t) for ok, t in zip(non_empty, text)], dtype=bool)
            counts["corpus_repeats_dropped"] += int((non_empty & ~new).sum())
            non_empty = new
        kept = non_empty & (rng.random(len(text)) >= opts.review_drop)
        counts["corpus_dropped"] += int((non_empty & ~kept).sum())
        idx = np.flatnonzero(kept)
        if len(idx) == 0:
            return
        counts[f"corpus_{kind}s"] += len(idx)
        table = pa.table({
            "text_id": pa.array(np.arange(next_id, next_id + len(idx)), pa.int64()),
            "kind": pa.array([kind] * len(idx), pa.string()),
            "user": pa.array(user[idx], pa.int32(), mask=user[idx] == 0),
            "item": pa.array(item[idx], pa.int32()),
            "text": pa.array([text[i] for i in idx], pa.string()),
        }, schema=schemas.CORPUS)
        next_id += len(idx)
        pending.append(table)
        pending_rows += len(idx)
        if pending_rows >= CORPUS_PART_ROWS:
            flush()

    def flush() -> None:
        nonlocal pending_rows, part
        if pending:
            write_part(part, pa.concat_tables(pending))
            part += 1
            pending.clear()
            pending_rows = 0

    if opts.text in ("reviews", "both") and tables.spool is not None:
        split = tables.interactions.column("split").to_numpy(zero_copy_only=False)
        train_rows = np.flatnonzero(split == "train")
        row_of_record = np.full(tables.stats["records_read"], -1, dtype=np.int64)
        row_of_record[tables.record_of_row[train_rows]] = train_rows
        users = tables.interactions.column("user").to_numpy()
        items = tables.interactions.column("item").to_numpy()
        for batch in pq.ParquetFile(tables.spool).iter_batches(batch_size=SPOOL_BATCH):
            rows = row_of_record[batch.column("record").to_numpy()]
            hit = np.flatnonzero(rows >= 0)
            texts = batch.column("text").to_pylist()
            emit("review", users[rows[hit]], items[rows[hit]], [texts[i] for i in hit])
    if opts.text in ("items", "both"):
        item_col = tables.items.column("item").to_numpy()
        emit("item", np.zeros(len(item_col), dtype=np.int32), item_col,
             tables.items.column("text").to_pylist())
    flush()
    if next_id == 0:
        raise DataError(f"the text corpus is empty (data.text={opts.text!r}): {opts.empty_hint or 'the source has no usable texts'}")
    return counts


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    """A scratch folder for the review spool, removed when the stage ends.

    While the folder lives, its process holds a lock on a file inside it; the kernel drops the lock
    when the process dies, even by ``kill -9``. So each new folder first removes the folders of dead
    jobs (lock free) and never those of running ones.
    """
    stale = remove_stale_scratch(Path(tempfile.gettempdir()))
    if stale:
        log.info(f"removed {len(stale)} scratch folder(s) of killed prepare runs: {', '.join(map(str, stale))}")
    folder = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX))
    try:
        with open(folder / (SCRATCH_LOCK + ".new"), "wb") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(folder / (SCRATCH_LOCK + ".new"), folder / SCRATCH_LOCK)  # visible only once locked
            yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove_stale_scratch(root: Path) -> list[Path]:
    """Remove this user's ``saerec-prepare-*`` folders in ``root`` whose owner has died; return them."""
    removed = []
    for folder in sorted(root.glob(SCRATCH_PREFIX + "*")):
        try:
            if folder.is_symlink() or not folder.is_dir() or folder.stat().st_uid != os.getuid():
                continue
            fd = os.open(folder / SCRATCH_LOCK, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue  # no lock file: not a scratch folder of this version, or one being made
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # its job is running
        shutil.rmtree(folder, ignore_errors=True)
        os.close(fd)
        removed.append(folder)
    return removed
