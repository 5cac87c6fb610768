"""The recall index on disk: a file of arrays beside the database (for a database that is not a
file, PostgreSQL's, one in the user's cache folder: cache_file), so that a new process ranks at
once instead of reading every memory's columns and fetching every common word's postings again.

What it holds is what RecallIndex holds, as of one position of the change log: the memories'
columns by rowid, the kinds' codes, and each word's postings (rowids, score parts, and the rowid and
memory count they were fetched at). The index checks it against the database before using it
(RecallIndex.refresh) and applies the changes logged since, as it does for any other process's
writes.

Layout: a fixed head (magic, format version, the header's length, the body's length, a CRC-32 of
the header, a checksum of the body), a JSON header (positions, counts, the words, where each array is), then the arrays, raw and
little-endian, each at a multiple of 8 bytes. A file that is short, long, foreign or damaged fails
a check here and is ignored (read_snapshot returns None); it is written to a temporary file, synced
and renamed into place, so a crash leaves the previous file or none, never half of one.

The body's checksum is its sum as 64-bit words, not a CRC: the body is tens of megabytes at 100k
memories, which CRC-32 takes ~20 ms to read on a small machine and a sum ~1 ms, on the first
recall's path. It catches a short, long, zeroed or garbled body; the atomic write does the rest.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import mmap
import os
import struct
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

MAGIC = b"SOULRCL\x00"
FORMAT = 1  # move it whenever what is stored, or how a score part is computed, changes
HEAD = struct.Struct("<8sIIQIQ")  # magic, format, header length, body length, header crc, body sum
ABANDONED_AFTER = 600  # seconds: a temporary file older than this was left by a killed writer
COLUMNS = {"active": "|b1", "when": "<i8", "kind": "<i2", "context": "<i8", "memory": "<i8"}


# The folder of soul-mcp's caches (server/warmstart.py reads the same variable; importing it from
# there would load the server): a store that is not a file keeps its snapshot there (cache_file).
CACHE_DIR_ENV = "SOUL_MCP_CACHE_DIR"
# A cached snapshot not written for this long is removed (its database may be long gone; one still
# in use is written again by the next process that closes after a change, or rebuilt).
CACHE_KEPT_S = 30 * 86400


def cache_file(name: str) -> Path | None:
    """The path of snapshot `name` in the user's cache folder (SOUL_MCP_CACHE_DIR overrides it),
    for a store with no file to keep it beside; the folder made private. None when it cannot be."""
    from soul_mcp.files import make_private_dirs

    override = os.environ.get(CACHE_DIR_ENV)
    if override:
        folder = Path(override).expanduser()
    else:
        from platformdirs import user_cache_dir

        folder = Path(user_cache_dir("soul-mcp", appauthor=False))
    try:
        make_private_dirs(folder / "recall")
    except OSError as exc:
        log.info("no recall snapshot in %s: %s", folder, exc)
        return None
    now = time.time()
    for old in (folder / "recall").iterdir():
        with contextlib.suppress(OSError):
            if now - old.lstat().st_mtime > CACHE_KEPT_S:
                old.unlink()
    return folder / "recall" / name


@dataclass
class SnapshotWords:
    """Every word's postings, end to end: word i's are rowids[ends[i-1]:ends[i]] (parts alike)."""

    keys: list[str]
    ends: np.ndarray  # int64
    upto: np.ndarray  # int64: each word's Postings.upto
    memories: np.ndarray  # int64: each word's Postings.memories
    rowids: np.ndarray  # int32 (int64 past 2**31 rowids)
    parts: np.ndarray  # float64


@dataclass
class Snapshot:
    seq: int  # the change log position it reflects
    seq_rowid: int  # the memory logged at `seq` (0 when seq is 0): the log must still say so
    top: int
    memories: int
    kinds: dict[str, int]
    columns: dict[str, np.ndarray]  # COLUMNS, each top + 1 long
    words: SnapshotWords
    extra: dict[str, Any] = field(default_factory=dict)


def write_snapshot(path: Path, snap: Snapshot) -> int:
    """Write `snap` to `path` atomically (temporary file, fsync, rename); returns its size."""
    import numpy as np

    words = snap.words
    wide = snap.top >= 2**31
    rowid_type = "<i8" if wide else "<i4"
    arrays: list[tuple[str, str, Any]] = [
        *((name, dtype, snap.columns[name]) for name, dtype in COLUMNS.items()),
        ("ends", "<i8", words.ends),
        ("upto", "<i8", words.upto),
        ("word_memories", "<i8", words.memories),
        ("rowids", rowid_type, words.rowids),
        ("parts", "<f8", words.parts),
    ]
    places: list[list[Any]] = []
    offset = 0
    for name, dtype, array in arrays:
        places.append([name, dtype, len(array), offset])
        offset += _padded(len(array) * np.dtype(dtype).itemsize)
    header = json.dumps(
        {
            "seq": snap.seq,
            "seq_rowid": snap.seq_rowid,
            "top": snap.top,
            "memories": snap.memories,
            "kinds": snap.kinds,
            "words": words.keys,
            "arrays": places,
            "extra": snap.extra,
        },
        separators=(",", ":"),
    ).encode()
    header += b" " * (_padded(HEAD.size + len(header)) - HEAD.size - len(header))
    body_sum = 0
    chunks: list[bytes] = []
    for (_, dtype, array), (_, _, count, _) in zip(arrays, places, strict=True):
        data = np.ascontiguousarray(array, dtype=dtype).tobytes()
        data += b"\0" * (_padded(len(data)) - len(data))
        assert len(data) == _padded(count * np.dtype(dtype).itemsize)
        body_sum += _sum(data)
        chunks.append(data)
    head = HEAD.pack(MAGIC, FORMAT, len(header), offset, zlib.crc32(header), body_sum % 2**64)
    _remove_abandoned(path)
    # mkstemp makes the file 0600: it names the words of a person's memories.
    fd, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(head)
            out.write(header)
            for data in chunks:
                out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _sync_folder(path.parent)
    return HEAD.size + len(header) + offset


def _remove_abandoned(path: Path) -> None:
    """Remove temporary files that a process killed while writing left behind (one writing now
    has touched its own within the last ABANDONED_AFTER seconds)."""
    now = time.time()
    for leftover in path.parent.glob(glob.escape(path.name) + ".*.tmp"):
        with contextlib.suppress(OSError):
            if now - leftover.lstat().st_mtime > ABANDONED_AFTER:
                leftover.unlink()


def read_snapshot(path: Path) -> Snapshot | None:
    """The snapshot at `path`, or None when there is none or it fails a check (logged). The word
    arrays are read-only views of the file mapped in memory; the columns are copies."""
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size < HEAD.size:
                return _ignored(path, "shorter than its head")
            mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return _ignored(path, str(exc))
    try:
        return _parse(mapped, size)
    except _Invalid as exc:
        return _ignored(path, str(exc))


class _Early:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.snap: Snapshot | None = None


# Reads begun before the index that uses them exists: a server reads while the MCP SDK imports.
_early: dict[str, _Early] = {}
_early_lock = threading.Lock()


def read_early(path: Path) -> None:
    """Read the snapshot at `path` (blocking: call it from a thread), with numpy, for the next
    `take_early(path)` in this process. The index checks it against the database as any other."""
    key = os.path.abspath(path)
    early = _Early()
    with _early_lock:
        if key in _early:
            return
        _early[key] = early
    try:
        import numpy.ma  # noqa: F401 - numpy, and what np.unique loads at its first call

        early.snap = read_snapshot(path)
    finally:
        early.done.set()


def take_early(path: Path) -> tuple[bool, Snapshot | None]:
    """What `read_early(path)` read (waiting for it if it is still reading): (True, the snapshot
    or None if there is no valid one), or (False, None) when no early read was begun."""
    with _early_lock:
        early = _early.pop(os.path.abspath(path), None)
    if early is None:
        return False, None
    early.done.wait()
    return True, early.snap


class _Invalid(Exception):
    pass


def _parse(mapped: mmap.mmap, size: int) -> Snapshot:
    import numpy as np

    magic, version, header_length, body_length, header_crc, body_sum = HEAD.unpack_from(mapped, 0)
    if magic != MAGIC:
        raise _Invalid("not a recall snapshot")
    if version != FORMAT:
        raise _Invalid(f"format {version}, not {FORMAT}")
    body_start = HEAD.size + header_length
    if size != body_start + body_length:
        raise _Invalid(f"{size} bytes where its head says {body_start + body_length}")
    header_bytes = mapped[HEAD.size : body_start]
    if zlib.crc32(header_bytes) != header_crc:
        raise _Invalid("its header fails its checksum")
    if body_length % 8 or _sum(mapped, body_start, body_length) != body_sum:
        raise _Invalid("its arrays fail their checksum")
    try:
        header = json.loads(header_bytes)
        top = int(header["top"])
        arrays: dict[str, np.ndarray] = {}
        for name, dtype, count, offset in header["arrays"]:
            if offset < 0 or offset + count * np.dtype(dtype).itemsize > body_length:
                raise _Invalid(f"array {name} lies outside the file")
            arrays[name] = np.frombuffer(mapped, dtype=dtype, count=count, offset=body_start + offset)
        keys = [str(k) for k in header["words"]]
        words = SnapshotWords(
            keys, arrays["ends"], arrays["upto"], arrays["word_memories"], arrays["rowids"], arrays["parts"]
        )
        columns = {name: arrays[name].astype(dtype.replace("<", "=")) for name, dtype in COLUMNS.items()}
        snap = Snapshot(
            int(header["seq"]),
            int(header["seq_rowid"]),
            top,
            int(header["memories"]),
            {str(k): int(v) for k, v in header["kinds"].items()},
            columns,
            words,
            dict(header.get("extra", {})),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _Invalid(f"its header is not as written: {exc!r}") from exc
    # What ranking would index with: a bad value here would rank wrongly or fail, never quietly.
    if any(len(c) != top + 1 for c in columns.values()):
        raise _Invalid("its columns are not as long as its top rowid")
    n = len(keys)
    if not (len(words.ends) == len(words.upto) == len(words.memories) == n):
        raise _Invalid("its word arrays disagree in length")
    if n and (words.ends[-1] != len(words.rowids) or np.any(np.diff(words.ends) < 0) or words.ends[0] < 0):
        raise _Invalid("its word ends are out of order")
    if len(words.parts) != len(words.rowids):
        raise _Invalid("its rowids and parts disagree in length")
    if len(words.rowids) and (words.rowids.min() < 1 or words.rowids.max() > top):
        raise _Invalid("a word's rowid lies outside its columns")
    return snap


def _ignored(path: Path, why: str) -> Snapshot | None:
    log.info("recall snapshot %s ignored: %s", path, why)
    return None


def _sum(data: Any, offset: int = 0, length: int | None = None) -> int:
    """The sum of `data` (a multiple of 8 bytes long) as little-endian 64-bit words, mod 2**64."""
    import numpy as np

    count = (len(data) - offset if length is None else length) // 8
    words = np.frombuffer(data, dtype="<u8", count=count, offset=offset)
    return int(words.sum(dtype=np.uint64))


def _padded(length: int) -> int:
    return (length + 7) // 8 * 8


def _sync_folder(folder: Path) -> None:
    """Make the rename durable (POSIX); Windows has no folder handles to sync."""
    if os.name != "posix" or sys.platform == "emscripten":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
