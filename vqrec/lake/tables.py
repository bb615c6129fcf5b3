"""One reader per lake table: the stage outputs of docs/ARCHITECTURE.md as numpy arrays.

Every reader names the partition folder and the problem when a table cannot be used
(:class:`TableError`, both a ``LakeError`` and a ``ValueError``), so a mismatch between
stage versions fails before any fitting or training. The codes stage and training read the
same tables through the same functions.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from vqrec.core.sequences import SPLITS, DataError, DomainData, Sequences
from vqrec.lake.store import LakeError, read_success, resolve_version, validate_name


class TableError(LakeError, DataError):
    """A lake table that a stage cannot use (names the folder and the problem).

    Both a :class:`LakeError` and a ``ValueError`` (:class:`DataError`): callers that catch
    either keep working, and the CLIs report it in one line.
    """


def _partition(root: Path, table: str, domain: str) -> Path:
    """The ``domain=<d>`` folder of ``table`` (the name validated: it comes from flags)."""
    root = Path(root)
    path = root / table / f"domain={validate_name(domain, 'domain')}"
    if not path.is_dir():
        present = sorted(p.name.removeprefix("domain=") for p in (root / table).glob("domain=*"))
        raise TableError(f"no {table} for domain {domain!r} at {path} (domains present: {present})")
    return path


def _read_table(path: Path, columns: list[str]) -> pa.Table:
    """All Parquet files of a partition folder (Spark's _SUCCESS/.crc files are skipped).

    Refuses a missing column, an unreadable file and an empty table.
    """
    try:
        dataset = ds.dataset(str(path), format="parquet")
        missing = [c for c in columns if c not in dataset.schema.names]
        if missing:
            raise TableError(f"{path}: missing column(s) {missing} (has {dataset.schema.names})")
        table = dataset.to_table(columns=columns)
    except (pa.ArrowInvalid, OSError, KeyError) as err:
        raise TableError(f"cannot read columns {columns} from {path}: {err}") from err
    if table.num_rows == 0:
        raise TableError(f"{path} holds no rows")
    return table


def _ragged(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of a list<int> column, without Python loops."""
    arr = column.combine_chunks()
    if isinstance(arr, pa.ChunkedArray):
        arr = pa.concat_arrays(arr.chunks)
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False)
    values = pc.list_flatten(arr).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return values, offsets


def read_sequences(clean_dir: Path, domain: str) -> dict[str, Sequences]:
    """The three splits of ``domain`` from a committed clean version, in a fixed row order."""
    path = _partition(clean_dir, "sequences", domain)
    table = _read_table(path, ["split", "user_idx", "history", "target"])
    split = table.column("split").to_numpy(zero_copy_only=False).astype(str)
    users = table.column("user_idx").to_numpy(zero_copy_only=False).astype(np.int64)
    targets = table.column("target").to_numpy(zero_copy_only=False).astype(np.int64)
    items, offsets = _ragged(table.column("history"))
    lengths = np.diff(offsets)
    if (lengths < 1).any():
        bad = int(np.flatnonzero(lengths < 1)[0])
        raise TableError(
            f"{path}: row of user_idx {users[bad]} ({split[bad]}) has an empty history"
        )
    out = {}
    for name in SPLITS:
        rows = np.flatnonzero(split == name)
        if len(rows) == 0:
            raise TableError(f"{path}: no {name!r} rows")
        # Spark's file order is not stable: sort by user, then length, then target.
        rows = rows[np.lexsort((targets[rows], lengths[rows], users[rows]))]
        starts, ends = offsets[rows], offsets[rows + 1]
        sub_len = ends - starts
        sub_off = np.concatenate([[0], np.cumsum(sub_len)]).astype(np.int64)
        gather = np.repeat(starts - sub_off[:-1], sub_len) + np.arange(sub_off[-1])
        out[name] = Sequences(items[gather], sub_off, targets[rows], users[rows])
    return out


def read_n_items(clean_dir: Path, domain: str) -> int:
    """Catalogue size of ``domain``; checks that item_idx is dense 1..N."""
    path = _partition(clean_dir, "items", domain)
    idx = _read_table(path, ["item_idx"]).column("item_idx").to_numpy().astype(np.int64)
    n = len(idx)
    if idx.min() != 1 or idx.max() != n or len(np.unique(idx)) != n:
        raise TableError(f"{path}: item_idx must be dense 1..{n}, got {idx.min()}..{idx.max()}")
    return n


def read_item_ids(clean_dir: Path, domain: str) -> np.ndarray:
    """Raw item ids of ``domain`` indexed by item_idx (row 0: "", the padding)."""
    path = _partition(clean_dir, "items", domain)
    table = _read_table(path, ["item_idx", "item_id"])
    idx = table.column("item_idx").to_numpy().astype(np.int64)
    ids = np.full(int(idx.max()) + 1, "", dtype=object)
    ids[idx] = np.asarray(table.column("item_id").to_pylist(), dtype=object)
    return ids


def read_codes(codes_dir: Path, domain: str, n_items: int) -> np.ndarray:
    """(n_items+1, D) int64 raw codes of ``domain`` (row 0 zeros); every item must have one."""
    path = _partition(codes_dir, "codes", domain)
    table = _read_table(path, ["item_idx", "code"])
    idx = table.column("item_idx").to_numpy().astype(np.int64)
    values, offsets = _ragged(table.column("code"))
    dims = np.unique(np.diff(offsets))
    if len(dims) != 1:
        raise TableError(f"{path}: codes have different lengths {dims.tolist()}")
    codes = np.zeros((n_items + 1, int(dims[0])), np.int64)
    if idx.min() < 1 or idx.max() > n_items:
        raise TableError(f"{path}: item_idx {idx.min()}..{idx.max()} outside 1..{n_items}")
    codes[idx] = values.reshape(len(idx), -1)
    missing = np.setdiff1d(np.arange(1, n_items + 1), idx)
    if len(missing):
        raise TableError(f"{path}: {len(missing)} items have no code (first: {missing[:5]})")
    if values.min() < 0:
        raise TableError(f"{path}: negative code values")
    return codes


def read_item_embeddings(embeddings_dir: Path, domain: str) -> tuple[np.ndarray, np.ndarray]:
    """(item_idx int32 sorted, embeddings float32 (n, d)) of a domain of an embeddings version.

    Refuses (naming the folder and the items) nulls, ragged or non-finite vectors and
    duplicated or non-positive item ids: a silent bad row would become a wrong code.
    """
    path = _partition(Path(embeddings_dir), "items", domain)
    table = _read_table(path, ["item_idx", "embedding"])
    if table.column("item_idx").null_count:
        raise TableError(f"{path}: null item_idx")
    ids = table.column("item_idx").to_numpy().astype(np.int64)
    if (ids < 1).any():
        raise TableError(f"{path}: item_idx must be >= 1 (0 is padding), got {ids.min()}")
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise TableError(f"{path}: duplicated item_idx {uniq[counts > 1][:5].tolist()}")
    emb = table.column("embedding").combine_chunks()
    if emb.null_count:
        bad = ids[emb.is_null().to_numpy(zero_copy_only=False)]
        raise TableError(f"{path}: null embedding for item_idx {sorted(bad.tolist())[:5]}")
    lengths = pc.list_value_length(emb).to_numpy(zero_copy_only=False)
    common = int(np.bincount(lengths).argmax())
    if (lengths != common).any() or common == 0:
        odd = ids[lengths != common] if common else ids
        raise TableError(
            f"{path}: embeddings of unequal length ({lengths.min()}..{lengths.max()}, mostly "
            f"{common}), e.g. item_idx {sorted(odd.tolist())[:5]}"
        )
    x = emb.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    x = x.reshape(len(ids), common)
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        raise TableError(
            f"{path}: NaN/inf embedding for item_idx {sorted(ids[~finite].tolist())[:5]}"
        )
    order = np.argsort(ids, kind="stable")
    return ids[order].astype(np.int32), np.ascontiguousarray(x[order])


def read_embeddings(emb_dir: Path, domain: str, n_items: int) -> np.ndarray:
    """(n_items+1, d) float32 text embeddings of ``domain`` indexed by item_idx (row 0 zeros)."""
    ids, emb = read_item_embeddings(emb_dir, domain)
    if len(ids) != n_items or ids[0] != 1 or ids[-1] != n_items:
        path = _partition(Path(emb_dir), "items", domain)
        raise TableError(f"{path}: embeddings must cover item_idx 1..{n_items} exactly once")
    out = np.zeros((n_items + 1, emb.shape[1]), np.float32)
    out[ids] = emb
    return out


def training_items(clean_dir: Path, domain: str) -> np.ndarray:
    """The strict training items of a domain: sorted item_idx of the ``train`` sequence rows.

    An item is a training item when it occurs in the history or as the target of at least
    one ``train`` row. Items seen only as a valid/test target (a user's last two events)
    are not, so they cannot shape the quantizer (the official ``--strict`` mode).
    """
    path = _partition(Path(clean_dir), "sequences", domain)
    table = _read_table(path, ["split", "history", "target"])
    train = table.filter(pc.equal(table.column("split"), "train"))
    history = pc.list_flatten(train.column("history")).to_numpy(zero_copy_only=False)
    target = train.column("target").to_numpy(zero_copy_only=False)
    items = np.unique(np.concatenate([history, target]).astype(np.int64))
    if items.size == 0:
        raise TableError(f"{path}: no train rows, so no training items for domain {domain!r}")
    return items.astype(np.int32)


def load_domain(
    lake: str | os.PathLike[str] | None,
    domain: str,
    clean_version: str | None = None,
    codes_version: str | None = None,
    embeddings_version: str | None = None,
    need_codes: bool = True,
    need_text: bool = False,
) -> DomainData:
    """Read one domain from committed lake versions (CURRENT when a version is None)."""
    clean_dir = resolve_version(lake, "clean", clean_version)
    n_items = read_n_items(clean_dir, domain)
    data = DomainData(domain, n_items, read_sequences(clean_dir, domain))
    data.source["clean"] = clean_dir.name
    if need_codes:
        codes_dir = resolve_version(lake, "codes", codes_version)
        data.codes = read_codes(codes_dir, domain, n_items)
        data.source["codes"] = codes_dir.name
        quantizer = _quantizer_of(codes_dir, domain)
        if quantizer:
            data.source["quantizer"] = quantizer
    if need_text:
        emb_dir = resolve_version(lake, "embeddings", embeddings_version)
        data.text = read_embeddings(emb_dir, domain, n_items)
        data.source["embeddings"] = emb_dir.name
        data.source["encoder"] = read_success(emb_dir).get("encoder")
    data.check()
    return data


def _quantizer_of(codes_dir: Path, domain: str) -> str | None:
    """The quantizer that coded ``domain`` (the codes table's ``quantizer`` column)."""
    try:
        path = _partition(codes_dir, "codes", domain)
        column = _read_table(path, ["quantizer"]).column("quantizer")
        names = pc.unique(column).to_pylist()
        return ",".join(str(n) for n in names)
    except TableError:
        return None
