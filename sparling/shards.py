"""Sharded on-disk datasets: sample <-> Arrow encoding, manifest, checksums, writer, reader.

A dataset is a folder holding Parquet shards and one ``manifest.json``::

    <folder>/
        manifest.json
        shard-00000-of-00004.parquet      samples [0, 25)
        shard-00001-of-00004.parquet      samples [25, 50)
        ...

Each Parquet row is one :class:`~sparling.domains.Sample` (see :data:`SCHEMA`):

=============  =================================  =====================================
column         Arrow type                         meaning
=============  =================================  =====================================
index          int64                              sample index in the dataset
x              binary                             ``np.packbits`` of x ("bits") or raw
                                                  little-endian float32 bytes ("float32")
x_shape        list<int32>                        shape of x
x_dtype        string                             numpy dtype string of x (e.g. ``|b1``)
x_encoding     string                             "bits" or "float32"
tokens         list<string>                       output tokens
motifs         list<struct<symbol: string,        one entry per true motif; ``box`` holds
               box: list<list<int64>>>>           ``[start, stop]`` per axis (null = None)
=============  =================================  =====================================

Every row carries its own encoding, dtype and shape, so a row read by any tool (plain
pyarrow, pandas, ``ray.data.read_parquet``) can be decoded with :func:`decode_row`
without the manifest.

A dataset is named by its *dataset hash*: the canonical hash of (format version,
domain spec, seed, count, number of shards); see :func:`dataset_hash`. The manifest
records it together with each shard's index range, row count, size and sha256, so a
reader (:class:`ShardedDataset`) can refuse anything that is not exactly what was
generated, and the generator can redo only the shards that are missing or damaged.

This module is plain numpy + pyarrow: no Ray, no MLflow. Generation across a Ray
cluster lives in :mod:`pipelines.generate`, which calls :func:`write_shard` per shard.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import re
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sparling.domains import Domain, Motif, Sample, canonical_hash
from sparling.errors import SparlingError
from sparling.fileio import TMP_MARK, atomic_write, atomic_write_text

#: Bumped whenever the on-disk layout changes; part of the dataset hash, so a dataset
#: written in another format is a different dataset (never silently mixed).
FORMAT_VERSION = 1
FORMAT_NAME = "sparling-shards"
MANIFEST_NAME = "manifest.json"

Storage = Literal["bits", "float32"]
STORAGES: tuple[str, ...] = ("bits", "float32")

_MOTIF_TYPE = pa.struct([("symbol", pa.string()), ("box", pa.list_(pa.list_(pa.int64())))])

#: The Arrow schema of every shard.
SCHEMA = pa.schema(
    [
        pa.field("index", pa.int64(), nullable=False),
        pa.field("x", pa.binary(), nullable=False),
        pa.field("x_shape", pa.list_(pa.int32()), nullable=False),
        pa.field("x_dtype", pa.string(), nullable=False),
        pa.field("x_encoding", pa.string(), nullable=False),
        pa.field("tokens", pa.list_(pa.string()), nullable=False),
        pa.field("motifs", pa.list_(_MOTIF_TYPE), nullable=False),
    ]
)

_SHARD_RE = re.compile(r"^shard-(\d{5})-of-(\d{5})\.parquet$")


class DatasetError(SparlingError, ValueError):
    """A dataset folder, manifest or shard is malformed, incomplete or fails its checksum."""


class DatasetConflictError(DatasetError):
    """A folder already holds a *different* dataset (another dataset hash)."""


# ---------------------------------------------------------------------------------------
# Sample <-> row encoding
# ---------------------------------------------------------------------------------------


def encode_x(x: np.ndarray, storage: Storage) -> tuple[bytes, list[int], str]:
    """Encode ``x`` compactly; returns (payload, shape, dtype string).

    "bits": x must hold only 0/1 (any bool/int/float dtype); stored with ``np.packbits``
    (8 pixels a byte), and the dtype is kept so decoding returns the very same array.
    "float32": x must already be float32 (a silent cast would not round-trip).
    """
    x = np.asarray(x)
    if storage == "bits":
        if x.dtype.kind not in "biuf":
            raise ValueError(f"'bits' storage needs a numeric or bool x, got dtype {x.dtype}")
        if x.dtype.kind != "b":
            # Anything but 0/1 (or a -0.0, whose bytes differ from 0.0) cannot round-trip.
            ok = bool(np.all((x == 0) | (x == 1)))
            if x.dtype.kind == "f":
                ok = ok and not np.signbit(x).any()
            if not ok:
                raise ValueError("'bits' storage needs x to hold only 0 and 1")
        payload = np.packbits(x.astype(bool, copy=False).ravel()).tobytes()
    elif storage == "float32":
        if x.dtype != np.float32:
            raise ValueError(f"'float32' storage needs x of dtype float32, got {x.dtype}")
        payload = x.astype("<f4", copy=False).tobytes(order="C")
    else:
        raise ValueError(f"unknown storage {storage!r}; expected one of {STORAGES}")
    return payload, [int(n) for n in x.shape], x.dtype.str


def decode_x(payload: bytes, shape: Sequence[int], dtype: str, encoding: str) -> np.ndarray:
    """Inverse of :func:`encode_x`: a fresh, writable, C-contiguous array."""
    shape = tuple(int(n) for n in shape)
    size = int(np.prod(shape, dtype=np.int64))
    if encoding == "bits":
        packed = np.frombuffer(payload, dtype=np.uint8)
        if packed.size != (size + 7) // 8:
            raise DatasetError(f"bit payload of {packed.size} bytes does not fit shape {shape}")
        return np.unpackbits(packed, count=size).astype(np.dtype(dtype)).reshape(shape)
    if encoding == "float32":
        if len(payload) != 4 * size:
            raise DatasetError(
                f"float32 payload of {len(payload)} bytes does not fit shape {shape}"
            )
        return np.frombuffer(payload, dtype="<f4").astype(np.dtype(dtype)).reshape(shape)
    raise DatasetError(f"unknown x encoding {encoding!r}")


def _encode_bound(v: Any) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | np.integer):
        raise ValueError(f"motif slice bounds must be ints or None, got {v!r}")
    return int(v)


def encode_motif(motif: Motif | tuple[str, Sequence[slice]]) -> dict[str, Any]:
    """A motif as an Arrow struct value: ``{"symbol": str, "box": [[start, stop], ...]}``."""
    symbol, slices = motif
    box = []
    for s in slices:
        if not isinstance(s, slice):
            raise ValueError(f"motif slices must be slice objects, got {s!r}")
        # A step cannot be stored; a step of 1 means the same cells, so it is dropped.
        if s.step not in (None, 1):
            raise ValueError(f"motif slices with a step are not supported, got {s!r}")
        box.append([_encode_bound(s.start), _encode_bound(s.stop)])
    return {"symbol": str(symbol), "box": box}


def decode_motif(value: Mapping[str, Any]) -> Motif:
    """Inverse of :func:`encode_motif`."""
    slices = tuple(
        slice(
            None if b[0] is None else int(b[0]),
            None if b[1] is None else int(b[1]),
        )
        for b in value["box"]
    )
    return Motif(str(value["symbol"]), slices)


def encode_sample(sample: Sample, index: int, storage: Storage) -> dict[str, Any]:
    """One sample as a row dict following :data:`SCHEMA`."""
    payload, shape, dtype = encode_x(sample.x, storage)
    return {
        "index": int(index),
        "x": payload,
        "x_shape": shape,
        "x_dtype": dtype,
        "x_encoding": storage,
        "tokens": [str(t) for t in sample.tokens],
        "motifs": [encode_motif(m) for m in sample.motifs],
    }


def decode_row(row: Mapping[str, Any]) -> Sample:
    """Decode one row (a dict from pyarrow ``to_pylist``, pandas or Ray Data) to a Sample.

    Accepts lists or numpy arrays for the list columns, since Ray Data and pandas hand
    nested values back as numpy object arrays.
    """
    x = decode_x(bytes(row["x"]), list(row["x_shape"]), str(row["x_dtype"]), str(row["x_encoding"]))
    tokens = [str(t) for t in row["tokens"]]
    motifs = [decode_motif(m) for m in row["motifs"]]
    return Sample(x=x, tokens=tokens, motifs=motifs)


def samples_to_table(
    samples: Iterable[tuple[int, Sample]],
    storage: Storage,
    metadata: Mapping[str, str] | None = None,
) -> pa.Table:
    """Encode ``(index, sample)`` pairs into a table with :data:`SCHEMA`."""
    rows = [encode_sample(s, i, storage) for i, s in samples]
    schema = SCHEMA
    if metadata:
        schema = schema.with_metadata({k.encode(): v.encode() for k, v in metadata.items()})
    return pa.Table.from_pylist(rows, schema=schema)


def table_to_samples(table: pa.Table) -> list[tuple[int, Sample]]:
    """Decode a table with :data:`SCHEMA` back to ``(index, sample)`` pairs."""
    cols = _ShardColumns.from_table(table)
    return [(int(cols.index[j]), cols.sample(j)) for j in range(len(cols))]


# ---------------------------------------------------------------------------------------
# Identity: dataset hash, shard layout, canonical folder
# ---------------------------------------------------------------------------------------


def dataset_hash(spec: Mapping[str, Any], seed: int, count: int, shards: int) -> str:
    """The hash that names a dataset: canonical hash of (format, domain spec, seed, count, shards).

    ``spec`` is :meth:`Domain.spec` (name, split and resolved params), so two requests
    that differ only in how params were spelled (defaults given or not) share a hash.
    """
    return canonical_hash(
        {
            "format_version": FORMAT_VERSION,
            "domain": dict(spec),
            "seed": int(seed),
            "count": int(count),
            "shards": int(shards),
        }
    )


def shard_ranges(count: int, shards: int) -> list[tuple[int, int]]:
    """Balanced, contiguous ``[start, stop)`` ranges covering ``range(count)``."""
    check_counts(count, shards)
    return [(k * count // shards, (k + 1) * count // shards) for k in range(shards)]


def shard_filename(k: int, shards: int) -> str:
    return f"shard-{k:05d}-of-{shards:05d}.parquet"


#: The most samples one dataset may hold; ``SPARLING_MAX_DATASET_SAMPLES`` raises it. (The
#: paper's largest training set is 6 million fresh samples; 10 million DigitCircle
#: images are about 10 GB of shards, and a mistyped count would fill the disk for hours.)
MAX_DATASET_SAMPLES = 10_000_000


def max_dataset_samples() -> int:
    """:data:`MAX_DATASET_SAMPLES`, or ``SPARLING_MAX_DATASET_SAMPLES`` where it is set."""
    from .fileio import env_limit

    return env_limit("SPARLING_MAX_DATASET_SAMPLES", MAX_DATASET_SAMPLES, error=ValueError)


def check_counts(count: int, shards: int) -> None:
    """Refuse impossible sizes with a message a CLI user can act on."""
    if isinstance(count, bool) or not isinstance(count, int | np.integer):
        raise ValueError(f"count must be an integer, got {count!r}")
    if isinstance(shards, bool) or not isinstance(shards, int | np.integer):
        raise ValueError(f"shards must be an integer, got {shards!r}")
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    limit = max_dataset_samples()
    if count > limit:
        raise ValueError(
            f"count {count:,} is over the limit of {limit:,} samples for one dataset (set "
            "SPARLING_MAX_DATASET_SAMPLES to raise it)"
        )
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    if shards > count:
        raise ValueError(
            f"shards ({shards}) must not exceed count ({count}): a shard cannot be empty"
        )
    if shards > 99999:
        raise ValueError(f"shards must be at most 99999, got {shards}")


def folder_name(spec: Mapping[str, Any], ds_hash: str) -> str:
    """``<domain>-<split>-<hash12>``: readable, and unique per dataset."""
    return f"{spec['name']}-{spec['split']}-{ds_hash[:12]}"


@dataclass(frozen=True)
class DatasetPlan:
    """A validated request for a dataset: the domain built, its hash and shard layout."""

    domain: Domain
    params: dict[str, Any]
    seed: int
    count: int
    shards: int
    dataset_hash: str

    @property
    def spec(self) -> dict[str, Any]:
        return self.domain.spec()

    @property
    def ranges(self) -> list[tuple[int, int]]:
        return shard_ranges(self.count, self.shards)

    @property
    def folder_name(self) -> str:
        return folder_name(self.spec, self.dataset_hash)

    def manifest(self, shards: Sequence[ShardInfo] = ()) -> Manifest:
        """A manifest for this dataset listing ``shards`` (complete when all are there)."""
        listed = sorted(shards, key=lambda s: s.shard)
        return Manifest(
            dataset_hash=self.dataset_hash,
            domain=self.spec,
            storage=self.domain.storage,
            seed=self.seed,
            count=self.count,
            num_shards=self.shards,
            shards=listed,
            complete=len(listed) == self.shards,
        )


def plan_dataset(
    domain: str, params: Mapping[str, Any], split: str, seed: int, count: int, shards: int
) -> DatasetPlan:
    """Validate a dataset request and build its domain; every bad argument raises ValueError.

    Cheap (no sampling), so callers run it before starting any distributed work.
    """
    from sparling import domains

    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    # Sample streams use the seed modulo 2**32: refuse seeds that would silently alias.
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    check_counts(count, shards)
    d = domains.make(domain, split=split, **dict(params))
    if d.storage not in STORAGES:
        raise ValueError(f"domain {domain!r} has unknown storage {d.storage!r}")
    h = dataset_hash(d.spec(), int(seed), int(count), int(shards))
    return DatasetPlan(d, dict(params), int(seed), int(count), int(shards), h)


def dataset_dir(
    root: Path | str,
    domain: str,
    params: Mapping[str, Any],
    split: str,
    seed: int,
    count: int,
    shards: int,
) -> Path:
    """The canonical folder of a dataset under a cache ``root``: ``root/<domain>-<split>-<hash12>``."""
    return Path(root) / plan_dataset(domain, params, split, seed, count, shards).folder_name


# ---------------------------------------------------------------------------------------
# Manifest
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardInfo:
    """One written shard as recorded in the manifest."""

    shard: int
    file: str
    start: int
    stop: int
    rows: int
    bytes: int
    sha256: str

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ShardInfo:
        return cls(
            shard=int(obj["shard"]),
            file=str(obj["file"]),
            start=int(obj["start"]),
            stop=int(obj["stop"]),
            rows=int(obj["rows"]),
            bytes=int(obj["bytes"]),
            sha256=str(obj["sha256"]),
        )


@dataclass
class Manifest:
    """The contents of ``manifest.json``.

    ``shards`` lists the shards written so far, sorted by shard number; ``complete`` is
    true once all ``num_shards`` are there. The generator rewrites the manifest (atomically)
    as shards finish, so an interrupted run can resume; readers accept only complete ones.
    """

    dataset_hash: str
    domain: dict[str, Any]
    storage: str
    seed: int
    count: int
    num_shards: int
    shards: list[ShardInfo] = field(default_factory=list)
    complete: bool = False
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    written_at: str = ""
    software: dict[str, str] = field(default_factory=dict)

    @property
    def split(self) -> str:
        return str(self.domain["split"])

    @property
    def domain_name(self) -> str:
        return str(self.domain["name"])

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.domain["params"])

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        # Redundant but handy for people reading the file (and for grep).
        out["split"] = self.split
        out["spec_hash"] = canonical_hash(self.domain)
        return out

    @classmethod
    def from_json(cls, obj: Any, *, where: Path | str = MANIFEST_NAME) -> Manifest:
        """Parse and validate a manifest dict; errors name ``where``."""
        if not isinstance(obj, dict):
            raise DatasetError(f"{where}: not a JSON object")
        if obj.get("format") != FORMAT_NAME:
            raise DatasetError(
                f"{where}: not a sparling dataset manifest (format={obj.get('format')!r})"
            )
        if obj.get("format_version") != FORMAT_VERSION:
            raise DatasetError(
                f"{where}: format version {obj.get('format_version')!r} is not supported "
                f"(this sparling reads version {FORMAT_VERSION}); regenerate the dataset"
            )
        try:
            m = cls(
                dataset_hash=str(obj["dataset_hash"]),
                domain=dict(obj["domain"]),
                storage=str(obj["storage"]),
                seed=int(obj["seed"]),
                count=int(obj["count"]),
                num_shards=int(obj["num_shards"]),
                shards=[ShardInfo.from_json(s) for s in obj["shards"]],
                complete=bool(obj["complete"]),
                written_at=str(obj.get("written_at", "")),
                software=dict(obj.get("software", {})),
            )
            for key in ("name", "split", "params"):
                m.domain[key]  # noqa: B018 -- presence check
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"{where}: malformed manifest ({type(e).__name__}: {e})") from None
        m.validate(where=where)
        return m

    def validate(self, *, where: Path | str = MANIFEST_NAME) -> None:
        """Internal consistency: the hash matches the content, shards match the layout."""
        if self.storage not in STORAGES:
            raise DatasetError(f"{where}: unknown storage {self.storage!r}")
        try:
            ranges = shard_ranges(self.count, self.num_shards)
        except ValueError as e:
            raise DatasetError(f"{where}: {e}") from None
        expected = dataset_hash(self.domain, self.seed, self.count, self.num_shards)
        if expected != self.dataset_hash:
            raise DatasetError(
                f"{where}: dataset hash {self.dataset_hash} does not match its own content "
                f"(recomputed {expected}); the manifest was edited or damaged"
            )
        seen: set[int] = set()
        for s in self.shards:
            if not 0 <= s.shard < self.num_shards or s.shard in seen:
                raise DatasetError(f"{where}: bad or duplicate shard number {s.shard}")
            seen.add(s.shard)
            start, stop = ranges[s.shard]
            if (s.start, s.stop, s.rows) != (start, stop, stop - start):
                raise DatasetError(
                    f"{where}: shard {s.shard} claims rows [{s.start}, {s.stop}) x {s.rows}, "
                    f"expected [{start}, {stop})"
                )
            # The file name is used to build a path: refuse anything but our own names.
            if s.file != shard_filename(s.shard, self.num_shards):
                raise DatasetError(f"{where}: unexpected file name {s.file!r} for shard {s.shard}")
            if not re.fullmatch(r"[0-9a-f]{64}", s.sha256):
                raise DatasetError(f"{where}: shard {s.shard} has a malformed sha256")
        if [s.shard for s in self.shards] != sorted(seen):
            raise DatasetError(f"{where}: shards are not sorted by shard number")
        if self.complete and len(self.shards) != self.num_shards:
            raise DatasetError(
                f"{where}: marked complete but lists {len(self.shards)} of {self.num_shards} shards"
            )


def read_manifest(folder: Path | str) -> Manifest | None:
    """The manifest in ``folder``, or None if there is none. Malformed ones raise."""
    path = Path(folder) / MANIFEST_NAME
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None
    return Manifest.from_json(obj, where=path)


def write_manifest(folder: Path | str, manifest: Manifest) -> Path:
    """Write ``manifest.json`` atomically (temp file in the same folder + ``os.replace``)."""
    manifest.validate(where=Path(folder) / MANIFEST_NAME)
    manifest.written_at = datetime.now(UTC).isoformat(timespec="seconds")
    manifest.software = _software_versions()
    text = json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n"
    return atomic_write_text(Path(folder) / MANIFEST_NAME, text, fsync=True)


def _software_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"pyarrow": pa.__version__, "numpy": np.__version__}
    with contextlib.suppress(metadata.PackageNotFoundError):
        out["sparling"] = metadata.version("sparling")
    return out


# ---------------------------------------------------------------------------------------
# Files: checksums, atomic writes, one shard
# ---------------------------------------------------------------------------------------


def file_sha256(path: Path | str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify_shard(folder: Path | str, info: ShardInfo) -> str | None:
    """None if the shard file matches its manifest entry, else why not (naming the file)."""
    path = Path(folder) / info.file
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return f"{path}: missing"
    if size != info.bytes:
        # Cheap check first: catches truncation without reading the file.
        return f"{path}: size {size} bytes, manifest says {info.bytes} (truncated or replaced?)"
    digest = file_sha256(path)
    if digest != info.sha256:
        return f"{path}: sha256 {digest} does not match the manifest's {info.sha256}"
    return None


def remove_stale_temps(folder: Path | str) -> list[Path]:
    """Delete temp files an interrupted writer left behind (only names this module makes)."""
    removed = []
    for p in Path(folder).iterdir():
        base, mark, _ = p.name.partition(TMP_MARK)
        if mark and (base == MANIFEST_NAME or _SHARD_RE.match(base)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


def write_shard(
    domain: Domain,
    seed: int,
    start: int,
    stop: int,
    folder: Path | str,
    *,
    shard: int,
    num_shards: int,
    ds_hash: str,
) -> ShardInfo:
    """Generate samples ``[start, stop)`` of ``domain`` and write them as one shard, atomically.

    Returns the manifest entry (size and sha256 are of the bytes that ended up on disk).
    """
    if not 0 <= start < stop:
        raise ValueError(f"bad shard range [{start}, {stop})")
    folder = Path(folder)
    path = folder / shard_filename(shard, num_shards)
    metadata = {
        # Self-description for people who open a shard without its manifest.
        "sparling.format": FORMAT_NAME,
        "sparling.format_version": str(FORMAT_VERSION),
        "sparling.dataset_hash": ds_hash,
        "sparling.domain": json.dumps(domain.spec(), sort_keys=True),
        "sparling.seed": str(seed),
        "sparling.shard": f"{shard}/{num_shards}",
        "sparling.range": f"{start}:{stop}",
        "sparling.storage": domain.storage,
    }
    table = samples_to_table(
        ((i, domain.sample(seed, i)) for i in range(start, stop)), domain.storage, metadata
    )

    def write(tmp: Path) -> None:
        pq.write_table(
            table,
            tmp,
            compression="zstd",
            # One row group per shard: shards are small, and readers load whole shards.
            row_group_size=max(1, table.num_rows),
            # Dictionaries only where values repeat; x payloads are all distinct.
            use_dictionary=["x_dtype", "x_encoding"],
            write_page_checksum=True,
        )

    # The temp name does not end in .parquet: readers globbing shards never see it.
    atomic_write(path, write, fsync=True)
    return ShardInfo(
        shard=shard,
        file=path.name,
        start=start,
        stop=stop,
        rows=table.num_rows,
        bytes=path.stat().st_size,
        sha256=file_sha256(path),
    )


# ---------------------------------------------------------------------------------------
# Reader
# ---------------------------------------------------------------------------------------


@dataclass
class _ShardColumns:
    """One shard's columns as compact Python lists (x stays packed until asked for)."""

    index: np.ndarray
    x: list[bytes]
    x_shape: list[list[int]]
    x_dtype: list[str]
    x_encoding: list[str]
    tokens: list[list[str]]
    motifs: list[list[dict[str, Any]]]

    @classmethod
    def from_table(cls, table: pa.Table) -> _ShardColumns:
        missing = set(SCHEMA.names) - set(table.column_names)
        if missing:
            raise DatasetError(f"shard lacks columns {sorted(missing)}")
        return cls(
            index=table.column("index").to_numpy(),
            x=table.column("x").to_pylist(),
            x_shape=table.column("x_shape").to_pylist(),
            x_dtype=table.column("x_dtype").to_pylist(),
            x_encoding=table.column("x_encoding").to_pylist(),
            tokens=table.column("tokens").to_pylist(),
            motifs=table.column("motifs").to_pylist(),
        )

    def __len__(self) -> int:
        return len(self.x)

    def sample(self, j: int) -> Sample:
        return Sample(
            x=decode_x(self.x[j], self.x_shape[j], self.x_dtype[j], self.x_encoding[j]),
            tokens=list(self.tokens[j]),
            motifs=[decode_motif(m) for m in self.motifs[j]],
        )


@dataclass
class Batch:
    """A batch of samples: ``x`` stacked to (B, *shape), the rest as per-sample lists."""

    indices: np.ndarray
    x: np.ndarray
    tokens: list[list[str]]
    motifs: list[list[Motif]]

    def __len__(self) -> int:
        return len(self.indices)


class ShardedDataset:
    """A generated dataset folder, read with plain pyarrow + numpy.

    Opening validates the manifest (format, hash consistency, shard layout) and, with
    ``verify=True``, every shard's size and sha256; any mismatch raises
    :class:`DatasetError` naming the offending file. ``expected_hash`` additionally
    checks that the folder holds the dataset the caller asked for.

    Random access decodes whole shards and keeps the last ``cache_shards`` of them
    (compact: x stays bit-packed until a sample is requested), so sequential or
    shard-local access costs one Parquet read per shard.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        verify: bool = True,
        expected_hash: str | None = None,
        cache_shards: int = 2,
    ) -> None:
        self.path = Path(path)
        manifest = read_manifest(self.path)
        if manifest is None:
            raise DatasetError(f"{self.path / MANIFEST_NAME}: missing; not a generated dataset")
        if not manifest.complete:
            raise DatasetError(
                f"{self.path / MANIFEST_NAME}: dataset incomplete "
                f"({len(manifest.shards)} of {manifest.num_shards} shards); rerun the generator"
            )
        if expected_hash is not None and manifest.dataset_hash != expected_hash:
            raise DatasetConflictError(
                f"{self.path}: holds dataset {manifest.dataset_hash}, expected {expected_hash}"
            )
        if verify:
            problems = [p for s in manifest.shards if (p := verify_shard(self.path, s))]
            if problems:
                raise DatasetError("dataset fails verification: " + "; ".join(problems))
        self.manifest = manifest
        self._starts = [s.start for s in manifest.shards]
        self._cache: OrderedDict[int, _ShardColumns] = OrderedDict()
        self._cache_shards = max(1, int(cache_shards))

    # -- description -----------------------------------------------------------------
    @property
    def dataset_hash(self) -> str:
        return self.manifest.dataset_hash

    @property
    def storage(self) -> str:
        return self.manifest.storage

    @property
    def seed(self) -> int:
        return self.manifest.seed

    @property
    def split(self) -> str:
        return self.manifest.split

    @property
    def num_shards(self) -> int:
        return self.manifest.num_shards

    @property
    def blocks(self) -> list[tuple[int, int]]:
        """The ``[start, stop)`` index range of each shard: readers that visit one block at
        a time decode each shard once per pass instead of once per sample."""
        return [(s.start, s.stop) for s in self.manifest.shards]

    def make_domain(self) -> Domain:
        """Rebuild the domain that generated this dataset (for its vocabulary etc.)."""
        from sparling import domains

        d = self.manifest.domain
        return domains.make(d["name"], split=d["split"], **d["params"])

    def __repr__(self) -> str:
        m = self.manifest
        return (
            f"ShardedDataset({str(self.path)!r}: {m.domain_name}/{m.split}, "
            f"{m.count} samples in {m.num_shards} shards, hash {m.dataset_hash[:12]})"
        )

    # -- random access -----------------------------------------------------------------
    def __len__(self) -> int:
        return self.manifest.count

    def __getitem__(self, i: int) -> Sample:
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for dataset of {n} samples")
        k = bisect.bisect_right(self._starts, i) - 1
        return self._shard(k).sample(i - self._starts[k])

    def __iter__(self) -> Iterator[Sample]:
        return self.iter_samples()

    def shard_path(self, k: int) -> Path:
        return self.path / self.manifest.shards[k].file

    def _shard(self, k: int) -> _ShardColumns:
        cols = self._cache.get(k)
        if cols is not None:
            self._cache.move_to_end(k)
            return cols
        path = self.shard_path(k)
        try:
            table = pq.read_table(path, page_checksum_verification=True)
            cols = _ShardColumns.from_table(table)
        except (OSError, pa.ArrowException, DatasetError) as e:
            raise DatasetError(f"{path}: cannot be read ({e})") from None
        info = self.manifest.shards[k]
        if len(cols) != info.rows or (
            len(cols) and (cols.index[0] != info.start or cols.index[-1] != info.stop - 1)
        ):
            raise DatasetError(
                f"{path}: rows do not match the manifest's [{info.start}, {info.stop})"
            )
        self._cache[k] = cols
        while len(self._cache) > self._cache_shards:
            self._cache.popitem(last=False)
        return cols

    # -- streaming -----------------------------------------------------------------------
    def _order(
        self, shuffle: bool, seed: int, epoch: int, part: int, num_parts: int
    ) -> Iterator[tuple[int, np.ndarray | range]]:
        """(shard, row order) pairs for one pass; see :meth:`iter_samples`."""
        if not 0 <= part < num_parts:
            raise ValueError(f"part must be in [0, {num_parts}), got {part}")
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch)]) if shuffle else None
        order = rng.permutation(self.num_shards) if rng is not None else np.arange(self.num_shards)
        # Row permutations are drawn for every shard (not only this part's) so that the
        # permutation of a shard does not depend on how many parts the pass is split into.
        for pos, k in enumerate(order):
            rows = self.manifest.shards[int(k)].rows
            perm: np.ndarray | range = rng.permutation(rows) if rng is not None else range(rows)
            if pos % num_parts == part:
                yield int(k), perm

    def iter_samples(
        self,
        shuffle: bool = False,
        seed: int = 0,
        epoch: int = 0,
        *,
        part: int = 0,
        num_parts: int = 1,
        with_index: bool = False,
    ) -> Iterator[Any]:
        """Stream samples shard by shard.

        ``shuffle``: shard order and the order within each shard are permutations drawn
        deterministically from ``(seed, epoch)`` (a different order every epoch, the same
        order on every rerun). ``part``/``num_parts`` give a disjoint subset of shards
        (e.g. per DataLoader worker or per training rank). ``with_index`` yields
        ``(index, sample)`` pairs instead of bare samples.
        """
        for k, perm in self._order(shuffle, seed, epoch, part, num_parts):
            cols = self._shard(k)
            for j in perm:
                s = cols.sample(int(j))
                yield (int(cols.index[int(j)]), s) if with_index else s

    def iter_batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        epoch: int = 0,
        *,
        drop_last: bool = False,
        part: int = 0,
        num_parts: int = 1,
    ) -> Iterator[Batch]:
        """Batches of ``batch_size`` samples (across shard boundaries) with stacked x."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        buf: list[tuple[int, Sample]] = []
        for item in self.iter_samples(
            shuffle, seed, epoch, part=part, num_parts=num_parts, with_index=True
        ):
            buf.append(item)
            if len(buf) == batch_size:
                yield _stack(buf)
                buf = []
        if buf and not drop_last:
            yield _stack(buf)

    def torch_iterable(self, shuffle: bool = False, seed: int = 0) -> Any:
        """A ``torch.utils.data.IterableDataset`` of samples, split by DataLoader worker.

        Call ``set_epoch(e)`` on it between epochs to reshuffle. torch is imported only
        here, so the rest of this module works without it.
        """
        import torch.utils.data

        ds = self

        class _Iterable(torch.utils.data.IterableDataset):  # type: ignore[type-arg,misc]
            def __init__(self) -> None:
                self.epoch = 0

            def set_epoch(self, epoch: int) -> None:
                self.epoch = epoch

            def __iter__(self) -> Iterator[Sample]:
                info = torch.utils.data.get_worker_info()
                part, parts = (0, 1) if info is None else (info.id, info.num_workers)
                return ds.iter_samples(shuffle, seed, self.epoch, part=part, num_parts=parts)

        return _Iterable()

    # -- pickling (DataLoader workers, Ray) ----------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()  # decoded shards are a cache: do not ship them
        return state


def _stack(items: list[tuple[int, Sample]]) -> Batch:
    shapes = {s.x.shape for _, s in items}
    if len(shapes) != 1:
        raise ValueError(f"cannot stack samples of different shapes {sorted(shapes)}")
    return Batch(
        indices=np.array([i for i, _ in items], dtype=np.int64),
        x=np.stack([s.x for _, s in items]),
        tokens=[s.tokens for _, s in items],
        motifs=[s.motifs for _, s in items],
    )


__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "SCHEMA",
    "Batch",
    "DatasetConflictError",
    "DatasetError",
    "Manifest",
    "ShardInfo",
    "ShardedDataset",
    "check_counts",
    "DatasetPlan",
    "dataset_dir",
    "dataset_hash",
    "plan_dataset",
    "decode_row",
    "decode_x",
    "encode_sample",
    "encode_x",
    "file_sha256",
    "folder_name",
    "read_manifest",
    "remove_stale_temps",
    "samples_to_table",
    "shard_filename",
    "shard_ranges",
    "table_to_samples",
    "verify_shard",
    "write_manifest",
    "write_shard",
]
