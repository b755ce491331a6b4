"""Tests of sparling.shards: encoding round trips, manifest, checksums, writer and reader (no Ray)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow.parquet as pq
import pytest

from sparling import domains
from sparling.domains import Domain, DomainParams, Motif, Sample
from sparling.shards import (
    MANIFEST_NAME,
    DatasetConflictError,
    DatasetError,
    ShardedDataset,
    dataset_dir,
    decode_row,
    decode_x,
    encode_sample,
    encode_x,
    plan_dataset,
    read_manifest,
    samples_to_table,
    shard_ranges,
    table_to_samples,
    write_manifest,
    write_shard,
)

# ---------------------------------------------------------------------------------------
# Fake domains: tiny, fast, and exercising every corner of the encoding
# ---------------------------------------------------------------------------------------


class _BitsParams(DomainParams):
    size: int = 9
    max_motifs: int = 3


class FakeBits(Domain):
    """Binary (H, W) images whose shape is not a multiple of 8 (exercises packbits padding)."""

    name: ClassVar[str] = "test-shards-bits"
    Params: ClassVar[type[DomainParams]] = _BitsParams
    kind: ClassVar[Literal["image", "audio"]] = "image"
    storage: ClassVar[Literal["bits", "float32"]] = "bits"

    vocabulary = property(lambda self: list("0123456789"))
    motif_symbols = property(lambda self: list("0123456789"))
    paper_channels = property(lambda self: 10)
    expected_motifs = property(lambda self: 1.5)

    @property
    def input_shape(self) -> tuple[int, ...]:
        p: Any = self.params
        return (p.size, p.size + 2)

    def sample(self, seed: int, index: int) -> Sample:
        p: Any = self.params
        rng = self.rng(seed, index)
        x = rng.random(self.input_shape) < 0.3
        n = int(rng.integers(0, p.max_motifs + 1))  # 0 motifs happens: empty lists
        motifs = []
        for _ in range(n):
            r, c = (int(v) for v in rng.integers(0, p.size - 2, size=2))
            motifs.append(Motif(str(rng.integers(10)), (slice(r, r + 2), slice(c, c + 3))))
        return Sample(x=x, tokens=[m.symbol for m in motifs], motifs=motifs)


class _FloatParams(DomainParams):
    frames: int = 7
    mels: int = 4


class FakeFloat(Domain):
    """Float32 (frames, mels) features with 1-D motifs (frame spans)."""

    name: ClassVar[str] = "test-shards-float"
    Params: ClassVar[type[DomainParams]] = _FloatParams
    kind: ClassVar[Literal["image", "audio"]] = "audio"
    storage: ClassVar[Literal["bits", "float32"]] = "float32"

    vocabulary = property(lambda self: list("0123456789"))
    motif_symbols = property(lambda self: list("0123456789"))
    paper_channels = property(lambda self: 10)
    expected_motifs = property(lambda self: 1.0)

    @property
    def input_shape(self) -> tuple[int, ...]:
        p: Any = self.params
        return (p.frames, p.mels)

    def sample(self, seed: int, index: int) -> Sample:
        rng = self.rng(seed, index)
        x = rng.standard_normal(self.input_shape).astype(np.float32)
        x[0, 0] = np.nan  # odd values must survive byte for byte
        x[0, 1] = -0.0
        d = str(rng.integers(10))
        return Sample(x=x, tokens=[d], motifs=[Motif(d, (slice(1, 3),))])


for _cls in (FakeBits, FakeFloat):
    if _cls.name not in domains._REGISTRY:  # tolerate a second import of this module
        domains.register(_cls)


def assert_same_sample(a: Sample, b: Sample) -> None:
    """Byte-for-byte equality of x (dtype and shape too), tokens and motifs."""
    assert a.x.dtype == b.x.dtype
    assert a.x.shape == b.x.shape
    assert a.x.tobytes() == b.x.tobytes()
    assert list(a.tokens) == list(b.tokens)
    assert [(m.symbol, tuple(m.slices)) for m in a.motifs] == [
        (m.symbol, tuple(m.slices)) for m in b.motifs
    ]
    assert all(isinstance(m, Motif) for m in a.motifs)


# ---------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x",
    [
        np.array([[True, False, True]]),
        np.zeros((0, 5), dtype=bool),
        np.eye(13, 11, dtype=np.uint8),
        np.eye(4, dtype=np.float32),
        (np.arange(100).reshape(10, 10) % 3 == 0).astype(np.int64),
        np.ones((3, 3, 3), dtype=bool),
    ],
)
def test_bits_round_trip(x: np.ndarray) -> None:
    payload, shape, dtype = encode_x(x, "bits")
    assert len(payload) == (x.size + 7) // 8  # really bit-packed
    y = decode_x(payload, shape, dtype, "bits")
    assert y.dtype == x.dtype and y.shape == x.shape and y.tobytes() == x.tobytes()


def test_float32_round_trip_is_bit_exact() -> None:
    x = np.array([[1.5, -0.0, np.nan], [np.inf, -np.inf, 1e-45]], dtype=np.float32)
    payload, shape, dtype = encode_x(x, "float32")
    y = decode_x(payload, shape, dtype, "float32")
    assert y.dtype == np.float32 and y.shape == x.shape and y.tobytes() == x.tobytes()
    y[0, 0] = 7  # decoded arrays are writable (not views of Arrow buffers)


def test_encode_refuses_lossy_inputs() -> None:
    with pytest.raises(ValueError, match="only 0 and 1"):
        encode_x(np.array([0, 2]), "bits")
    with pytest.raises(ValueError, match="only 0 and 1"):
        encode_x(np.array([-0.0, 1.0]), "bits")
    with pytest.raises(ValueError, match="float32"):
        encode_x(np.zeros(3, dtype=np.float64), "float32")
    with pytest.raises(ValueError, match="unknown storage"):
        encode_x(np.zeros(3, dtype=np.float32), "png")  # type: ignore[arg-type]


def test_sample_round_trip_through_parquet(tmp_path: Path) -> None:
    samples = [
        # 2-D motifs, one with open bounds
        Sample(
            np.eye(5, dtype=bool),
            ["1", "+", "x"],
            [Motif("1", (slice(0, 2), slice(1, 4))), Motif("x", (slice(None, 3), slice(2, None)))],
        ),
        # nothing at all: empty token and motif lists
        Sample(np.zeros((5, 5), dtype=bool), [], []),
        # 1-D motifs
        Sample(np.ones((5, 5), dtype=bool), ["7"], [Motif("7", (slice(3, 5),))]),
    ]
    table = samples_to_table(enumerate(samples), "bits", {"k": "v"})
    pq.write_table(table, tmp_path / "t.parquet")
    back = pq.read_table(tmp_path / "t.parquet")
    assert back.schema.metadata[b"k"] == b"v"
    decoded = table_to_samples(back)
    assert [i for i, _ in decoded] == [0, 1, 2]
    for (_, a), b in zip(decoded, samples):
        assert_same_sample(a, b)
    # Row dicts (the pyarrow / Ray Data view) decode the same way.
    for row, b in zip(back.to_pylist(), samples):
        assert_same_sample(decode_row(row), b)


def test_float_samples_round_trip() -> None:
    d = domains.make("test-shards-float")
    rows = [encode_sample(d.sample(3, i), i, "float32") for i in range(4)]
    for i, row in enumerate(rows):
        assert_same_sample(decode_row(row), d.sample(3, i))


def test_motif_steps_are_refused() -> None:
    s = Sample(np.zeros((4, 4), dtype=bool), ["a"], [Motif("a", (slice(0, 4, 2),))])
    with pytest.raises(ValueError, match="step"):
        encode_sample(s, 0, "bits")


# ---------------------------------------------------------------------------------------
# Planning and identity
# ---------------------------------------------------------------------------------------


def test_shard_ranges_cover_everything() -> None:
    for count, shards in [(1, 1), (10, 3), (7, 7), (100, 6)]:
        ranges = shard_ranges(count, shards)
        assert ranges[0][0] == 0 and ranges[-1][1] == count
        assert all(a < b for a, b in ranges)
        assert all(r[1] == q[0] for r, q in zip(ranges, ranges[1:]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"count": 0}, "count must be at least 1"),
        ({"shards": 0}, "shards must be at least 1"),
        ({"shards": 11, "count": 10}, r"shards \(11\) must not exceed count \(10\)"),
        ({"split": "dev"}, "split must be one of"),
        ({"domain": "no-such-domain"}, "unknown domain 'no-such-domain'"),
        ({"params": {"bogus": 1}}, "bad parameters"),
        ({"seed": -1}, "seed must be in"),
    ],
)
def test_plan_rejects_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {
        "domain": "test-shards-bits",
        "params": {},
        "split": "train",
        "seed": 0,
        "count": 10,
        "shards": 2,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        plan_dataset(**args)


def test_hash_and_dataset_dir() -> None:
    base = plan_dataset("test-shards-bits", {}, "train", 0, 10, 2)
    # Spelling out a default param names the same dataset (the hash uses resolved params).
    assert plan_dataset("test-shards-bits", {"size": 9}, "train", 0, 10, 2).dataset_hash == (
        base.dataset_hash
    )
    others = [
        plan_dataset("test-shards-bits", {"size": 8}, "train", 0, 10, 2),
        plan_dataset("test-shards-bits", {}, "val", 0, 10, 2),
        plan_dataset("test-shards-bits", {}, "train", 1, 10, 2),
        plan_dataset("test-shards-bits", {}, "train", 0, 11, 2),
        plan_dataset("test-shards-bits", {}, "train", 0, 10, 5),
    ]
    assert len({base.dataset_hash, *(p.dataset_hash for p in others)}) == 6
    d = dataset_dir("/cache", "test-shards-bits", {}, "train", 0, 10, 2)
    assert d == Path("/cache") / f"test-shards-bits-train-{base.dataset_hash[:12]}"


# ---------------------------------------------------------------------------------------
# Writer + reader (a dataset written without Ray, shard by shard)
# ---------------------------------------------------------------------------------------


def write_dataset(folder: Path, domain: str, count: int, shards: int, seed: int = 5) -> None:
    plan = plan_dataset(domain, {}, "train", seed, count, shards)
    folder.mkdir(parents=True, exist_ok=True)
    infos = [
        write_shard(
            plan.domain, seed, a, b, folder, shard=k, num_shards=shards, ds_hash=plan.dataset_hash
        )
        for k, (a, b) in enumerate(plan.ranges)
    ]
    write_manifest(folder, plan.manifest(infos))


@pytest.fixture
def bits_dataset(tmp_path: Path) -> Path:
    write_dataset(tmp_path / "ds", "test-shards-bits", count=23, shards=4)
    return tmp_path / "ds"


def test_reader_matches_direct_sampling(bits_dataset: Path) -> None:
    ds = ShardedDataset(bits_dataset)
    d = domains.make("test-shards-bits")
    assert len(ds) == 23 and ds.num_shards == 4 and ds.storage == "bits"
    for i in range(len(ds)):
        assert_same_sample(ds[i], d.sample(5, i))
    assert_same_sample(ds[-1], d.sample(5, 22))
    with pytest.raises(IndexError):
        ds[23]
    assert ds.make_domain().spec() == d.spec()
    # Temp files never linger next to the shards.
    assert sorted(p.name for p in bits_dataset.iterdir()) == [MANIFEST_NAME] + [
        f"shard-{k:05d}-of-00004.parquet" for k in range(4)
    ]


def test_float_dataset(tmp_path: Path) -> None:
    write_dataset(tmp_path, "test-shards-float", count=5, shards=2, seed=1)
    ds = ShardedDataset(tmp_path)
    d = domains.make("test-shards-float")
    for i in range(5):
        assert_same_sample(ds[i], d.sample(1, i))
    batch = next(ds.iter_batches(5))
    assert batch.x.shape == (5, 7, 4) and batch.x.dtype == np.float32


def test_manifest_contents(bits_dataset: Path) -> None:
    m = json.loads((bits_dataset / MANIFEST_NAME).read_text())
    plan = plan_dataset("test-shards-bits", {}, "train", 5, 23, 4)
    assert m["format"] == "sparling-shards" and m["format_version"] == 1
    assert m["dataset_hash"] == plan.dataset_hash and m["complete"] is True
    assert m["domain"] == {
        "name": "test-shards-bits",
        "version": 1,
        "split": "train",
        "params": {"size": 9, "max_motifs": 3},
    }
    assert (m["split"], m["seed"], m["count"], m["num_shards"], m["storage"]) == (
        "train",
        5,
        23,
        4,
        "bits",
    )
    assert [(s["start"], s["stop"], s["rows"]) for s in m["shards"]] == [
        (0, 5, 5),
        (5, 11, 6),
        (11, 17, 6),
        (17, 23, 6),
    ]
    assert all(len(s["sha256"]) == 64 and s["bytes"] > 0 for s in m["shards"])


def test_iteration_orders(bits_dataset: Path) -> None:
    ds = ShardedDataset(bits_dataset)
    seq = [i for i, _ in ds.iter_samples(with_index=True)]
    assert seq == list(range(23))

    def order(**kw: Any) -> list[int]:
        return [i for i, _ in ds.iter_samples(shuffle=True, with_index=True, **kw)]

    a = order(seed=1, epoch=0)
    assert sorted(a) == list(range(23)) and a != seq
    assert order(seed=1, epoch=0) == a  # deterministic
    assert order(seed=1, epoch=1) != a  # reshuffled per epoch
    assert order(seed=2, epoch=0) != a
    # Shard by shard: each shard's indices come out contiguously in the stream.
    shard_of = [next(k for k, (s, e) in enumerate(shard_ranges(23, 4)) if s <= i < e) for i in a]
    assert sum(1 for p, q in zip(shard_of, shard_of[1:]) if p != q) == 3
    # Parts split the pass into disjoint pieces whatever their number.
    parts = [order(seed=1, epoch=0, part=p, num_parts=3) for p in range(3)]
    assert sorted(sum(parts, [])) == list(range(23))
    # A sample's content does not depend on how it was reached.
    for i, s in ds.iter_samples(shuffle=True, seed=3, with_index=True):
        assert_same_sample(s, ds[i])


def test_iter_batches(bits_dataset: Path) -> None:
    ds = ShardedDataset(bits_dataset)
    batches = list(ds.iter_batches(10))
    assert [len(b) for b in batches] == [10, 10, 3]
    assert batches[0].x.shape == (10, 9, 11) and batches[0].x.dtype == bool
    assert list(batches[1].indices) == list(range(10, 20))
    assert [len(b) for b in ds.iter_batches(10, drop_last=True)] == [10, 10]
    d = domains.make("test-shards-bits")
    assert batches[2].tokens[0] == d.sample(5, 20).tokens


def test_torch_iterable(bits_dataset: Path) -> None:
    torch = pytest.importorskip("torch")
    ds = ShardedDataset(bits_dataset)
    it = ds.torch_iterable(shuffle=True, seed=0)
    loader = torch.utils.data.DataLoader(it, batch_size=None, num_workers=0)
    assert len(list(loader)) == 23


def test_shard_cache_is_bounded(bits_dataset: Path) -> None:
    ds = ShardedDataset(bits_dataset, cache_shards=2)
    for i in range(len(ds)):
        ds[i]
    assert len(ds._cache) == 2
    import pickle

    clone = pickle.loads(pickle.dumps(ds))
    assert len(clone._cache) == 0 and clone[3].tokens == ds[3].tokens


# ---------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    pos = len(data) // 2 if offset is None else offset
    data[pos] ^= 0x01
    path.write_bytes(bytes(data))


def test_flipped_byte_is_caught(bits_dataset: Path) -> None:
    shard = bits_dataset / "shard-00002-of-00004.parquet"
    # Flip a byte inside the compressed image data (not the footer) so that the
    # reader's own Parquet page checksums have something to find too.
    chunk = pq.ParquetFile(shard).metadata.row_group(0).column(1)
    assert chunk.path_in_schema == "x"
    flip_byte(shard, chunk.data_page_offset + chunk.total_compressed_size - 8)
    with pytest.raises(DatasetError, match=r"shard-00002-of-00004\.parquet: sha256"):
        ShardedDataset(bits_dataset)
    # Without verification the reader opens, but Parquet page checksums still catch it
    # when the damaged shard is read, naming the file.
    ds = ShardedDataset(bits_dataset, verify=False)
    ds[0]
    with pytest.raises(DatasetError, match=r"shard-00002-of-00004\.parquet"):
        for i in range(len(ds)):
            ds[i]


def test_truncated_file_is_caught(bits_dataset: Path) -> None:
    shard = bits_dataset / "shard-00001-of-00004.parquet"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 10])
    with pytest.raises(DatasetError, match=r"shard-00001-of-00004\.parquet: size .*truncated"):
        ShardedDataset(bits_dataset)


def test_missing_shard_is_caught(bits_dataset: Path) -> None:
    (bits_dataset / "shard-00003-of-00004.parquet").unlink()
    with pytest.raises(DatasetError, match=r"shard-00003-of-00004\.parquet: missing"):
        ShardedDataset(bits_dataset)


def test_manifest_problems_are_caught(bits_dataset: Path) -> None:
    path = bits_dataset / MANIFEST_NAME
    good = json.loads(path.read_text())

    def expect(obj: Any, match: str) -> None:
        path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
        with pytest.raises(DatasetError, match=match) as e:
            ShardedDataset(bits_dataset)
        assert str(path) in str(e.value)

    expect("{not json", "not valid JSON")
    expect({**good, "format": "other"}, "not a sparling dataset manifest")
    expect({**good, "format_version": 99}, "format version 99")
    expect({**good, "count": 24}, "does not match its own content")
    expect(
        {**good, "domain": {**good["domain"], "params": {"size": 8, "max_motifs": 3}}},
        "own content",
    )
    expect({**good, "shards": good["shards"][:3]}, "marked complete but lists 3 of 4")
    expect({**good, "shards": good["shards"][:3], "complete": False}, "incomplete")
    bad_file = [dict(s) for s in good["shards"]]
    bad_file[0]["file"] = "../elsewhere.parquet"
    expect({**good, "shards": bad_file}, "unexpected file name")
    del good["seed"]
    expect(good, "malformed manifest")
    path.unlink()
    with pytest.raises(DatasetError, match="missing; not a generated dataset"):
        ShardedDataset(bits_dataset)


def test_expected_hash(bits_dataset: Path) -> None:
    m = read_manifest(bits_dataset)
    assert m is not None
    ShardedDataset(bits_dataset, expected_hash=m.dataset_hash)
    with pytest.raises(DatasetConflictError, match="expected 0000"):
        ShardedDataset(bits_dataset, expected_hash="0000")


def test_atomic_write_leaves_no_temp_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = plan_dataset("test-shards-bits", {}, "train", 0, 4, 1)

    def boom(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OSError, match="disk full"):
        write_shard(
            plan.domain, 0, 0, 4, tmp_path, shard=0, num_shards=1, ds_hash=plan.dataset_hash
        )
    assert os.listdir(tmp_path) == []
