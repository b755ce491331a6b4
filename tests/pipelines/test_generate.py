"""Tests of pipelines.generate on a small local Ray (2 CPUs, started once for the module)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pytest

import pipelines.generate as gen
from sparling import domains
from sparling.domains import Domain, DomainParams, Motif, Sample
from sparling.shards import (
    MANIFEST_NAME,
    DatasetConflictError,
    ShardedDataset,
    decode_row,
    plan_dataset,
    read_manifest,
)

pytestmark = pytest.mark.integration

NAME = "test-generate-bits"


class _Params(DomainParams):
    size: int = 10
    #: if this file exists when a sample with index 3 is drawn, sampling fails
    #: (lets a test make one shard fail, then succeed on the rerun with the same hash)
    fail_flag: str = ""


class FakeGen(Domain):
    """Small binary images with 2-D motifs; samples are cheap so tests time Ray, not sampling."""

    name: ClassVar[str] = NAME
    Params: ClassVar[type[DomainParams]] = _Params
    kind: ClassVar[Literal["image", "audio"]] = "image"
    storage: ClassVar[Literal["bits", "float32"]] = "bits"

    vocabulary = property(lambda self: list("abc"))
    motif_symbols = property(lambda self: list("abc"))
    paper_channels = property(lambda self: 3)
    expected_motifs = property(lambda self: 1.0)

    @property
    def input_shape(self) -> tuple[int, ...]:
        p: Any = self.params
        return (p.size, p.size)

    def sample(self, seed: int, index: int) -> Sample:
        p: Any = self.params
        if index == 3 and p.fail_flag and os.path.exists(p.fail_flag):
            raise RuntimeError("injected failure at sample 3")
        rng = self.rng(seed, index)
        x = rng.random((p.size, p.size)) < 0.5
        motifs = [
            Motif(str(rng.choice(["a", "b", "c"])), (slice(i, i + 2), slice(0, 3)))
            for i in range(int(rng.integers(0, 3)))
        ]
        return Sample(x=x, tokens=[m.symbol for m in motifs], motifs=motifs)


if NAME not in domains._REGISTRY:  # Ray workers import this module too
    domains.register(FakeGen)


def same(a: Sample, b: Sample) -> bool:
    return (
        a.x.dtype == b.x.dtype
        and a.x.shape == b.x.shape
        and a.x.tobytes() == b.x.tobytes()
        and list(a.tokens) == list(b.tokens)
        and [(m.symbol, tuple(m.slices)) for m in a.motifs]
        == [(m.symbol, tuple(m.slices)) for m in b.motifs]
    )


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """One local Ray for the whole module (ray.init costs ~15 s on the shared CPUs)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    # Workers must be able to import this test module (the fake domain's class is sent
    # by reference): they inherit the raylet's environment, hence PYTHONPATH.
    here = str(Path(__file__).resolve().parent)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = here + (os.pathsep + old if old else "")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


class Launches:
    """Records which shards got a task (wraps pipelines.generate._submit)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.shards: list[int] = []
        real = gen._submit

        def submit(plan: Any, out: Path, k: int) -> Any:
            self.shards.append(k)
            return real(plan, out, k)

        monkeypatch.setattr(gen, "_submit", submit)


def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any attempt to use Ray fail loudly."""

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("Ray was used")

    monkeypatch.setattr(gen, "ensure_ray", boom)
    monkeypatch.setattr(gen, "_submit", boom)


def shard_stats(out: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.parquet")}


# ---------------------------------------------------------------------------------------
# Without Ray
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"count": 0}, "count must be at least 1"),
        ({"shards": 0}, "shards must be at least 1"),
        ({"count": 3, "shards": 4}, r"shards \(4\) must not exceed count \(3\)"),
        ({"split": "dev"}, "split must be one of"),
        ({"domain": "no-such-domain"}, "unknown domain 'no-such-domain'"),
        ({"params": {"nope": 1}}, "bad parameters for domain"),
    ],
)
def test_bad_arguments_fail_before_ray(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, Any], match: str
) -> None:
    no_ray(monkeypatch)
    args: dict[str, Any] = {
        "domain": NAME,
        "params": {},
        "split": "train",
        "seed": 0,
        "count": 10,
        "shards": 2,
        "out": tmp_path / "out",
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        gen.generate_dataset(**args, progress=False)
    assert not (tmp_path / "out").exists()


def test_ensure_ray_connects_to_ray_address(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(gen.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(gen.ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.delenv("SPARLING_RAY_LOGS", raising=False)
    import socket

    with socket.create_server(("127.0.0.1", 0)) as head:  # something answers there
        address = f"127.0.0.1:{head.getsockname()[1]}"
        monkeypatch.setenv("RAY_ADDRESS", address)
        gen.ensure_ray()
    monkeypatch.delenv("RAY_ADDRESS")
    gen.ensure_ray()
    assert calls == [
        {"address": address, "log_to_driver": False},
        {
            "include_dashboard": False,
            "num_cpus": None,
            "_node_ip_address": "127.0.0.1",
            "log_to_driver": False,
        },
    ]
    monkeypatch.setattr(gen.ray, "is_initialized", lambda: True)
    gen.ensure_ray()  # reuses the running Ray
    assert len(calls) == 2


def test_refuses_foreign_files_without_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_ray(monkeypatch)
    (tmp_path / "shard-00000-of-00002.parquet").write_bytes(b"someone else's")
    with pytest.raises(DatasetConflictError, match="no manifest.json but already holds"):
        gen.generate_dataset(NAME, {}, "train", 0, 10, 2, tmp_path, progress=False)
    assert (tmp_path / "shard-00000-of-00002.parquet").read_bytes() == b"someone else's"
    assert not (tmp_path / gen.LOCK_NAME).exists()  # not even a lock file left behind
    (tmp_path / "shard-00000-of-00002.parquet").unlink()
    (tmp_path / MANIFEST_NAME).write_text("{garbage")
    with pytest.raises(DatasetConflictError, match="unreadable manifest.json"):
        gen.generate_dataset(NAME, {}, "train", 0, 10, 2, tmp_path, progress=False)
    assert (tmp_path / MANIFEST_NAME).read_text() == "{garbage"


# ---------------------------------------------------------------------------------------
# On Ray
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generated(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 22-sample, 4-shard dataset generated once on Ray and shared by the tests below."""
    root = tmp_path_factory.mktemp("gen")
    out = gen.dataset_dir(root, NAME, {}, "val", 7, 22, 4)
    assert gen.generate_dataset(NAME, {}, "val", 7, 22, 4, out, progress=True) == out
    return out


def test_generate_end_to_end(generated: Path) -> None:
    ds = ShardedDataset(generated)
    d = domains.make(NAME, split="val")
    assert len(ds) == 22
    for i in range(22):
        assert same(ds[i], d.sample(7, i)), i
    m = json.loads((generated / MANIFEST_NAME).read_text())
    plan = plan_dataset(NAME, {}, "val", 7, 22, 4)
    assert generated.name == f"{NAME}-val-{plan.dataset_hash[:12]}"
    assert m["dataset_hash"] == plan.dataset_hash and m["complete"] is True
    assert m["domain"] == d.spec() and m["split"] == "val" and m["storage"] == "bits"
    assert [s["file"] for s in m["shards"]] == [f"shard-{k:05d}-of-00004.parquet" for k in range(4)]
    # Nothing but our files: no temp leftovers.
    names = sorted(p.name for p in generated.iterdir())
    assert names == sorted([MANIFEST_NAME, gen.LOCK_NAME, *(s["file"] for s in m["shards"])])


def test_second_call_is_a_no_op(generated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = shard_stats(generated)
    manifest_mtime = (generated / MANIFEST_NAME).stat().st_mtime_ns
    no_ray(monkeypatch)  # no task, not even a Ray connection
    gen.generate_dataset(NAME, {"size": 10}, "val", 7, 22, 4, generated, progress=False)
    assert shard_stats(generated) == before
    assert (generated / MANIFEST_NAME).stat().st_mtime_ns == manifest_mtime


def test_refuses_a_different_dataset(generated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_ray(monkeypatch)
    before = shard_stats(generated)
    mine = plan_dataset(NAME, {}, "val", 7, 22, 4).dataset_hash
    other = plan_dataset(NAME, {}, "val", 8, 22, 4).dataset_hash
    with pytest.raises(DatasetConflictError) as e:
        gen.generate_dataset(NAME, {}, "val", 8, 22, 4, generated, progress=False)
    msg = str(e.value)
    assert str(generated) in msg and mine in msg and other in msg
    assert shard_stats(generated) == before


def test_ray_data_reads_the_shards(generated: Path) -> None:
    import ray.data

    rows = ray.data.read_parquet(str(generated)).take_all()
    assert len(rows) == 22
    d = domains.make(NAME, split="val")
    for row in rows:
        assert same(decode_row(row), d.sample(7, int(row["index"])))


def test_partial_dataset_redoes_only_bad_shards(
    ray_local: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "ds"
    gen.generate_dataset(NAME, {}, "train", 1, 20, 4, out, progress=False)
    (out / "shard-00001-of-00004.parquet").unlink()
    bad = out / "shard-00002-of-00004.parquet"
    data = bytearray(bad.read_bytes())
    data[len(data) // 3] ^= 0xFF
    bad.write_bytes(bytes(data))
    truncated = out / "shard-00003-of-00004.parquet"
    truncated.write_bytes(truncated.read_bytes()[:-100])
    before = shard_stats(out)

    launches = Launches(monkeypatch)
    gen.generate_dataset(NAME, {}, "train", 1, 20, 4, out, progress=False)
    assert sorted(launches.shards) == [1, 2, 3]
    after = shard_stats(out)
    assert after["shard-00000-of-00004.parquet"] == before["shard-00000-of-00004.parquet"]
    assert after[bad.name] != before[bad.name]  # replaced by a new file (new inode)
    ds = ShardedDataset(out)
    d = domains.make(NAME)
    assert all(same(ds[i], d.sample(1, i)) for i in range(20))


def test_failed_task_is_reported_and_completed_shards_kept(
    ray_local: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flag = tmp_path / "fail"
    flag.touch()
    params = {"fail_flag": str(flag)}
    out = tmp_path / "ds"
    with pytest.raises(gen.ShardGenerationError) as e:
        gen.generate_dataset(NAME, params, "train", 2, 9, 3, out, progress=False)
    # Sample 3 lives in shard 1 (samples [3, 6)); the message names it and the cause.
    assert e.value.failures.keys() == {1}
    assert "shard 1 (samples [3, 6))" in str(e.value)
    assert "injected failure at sample 3" in str(e.value)
    m = read_manifest(out)
    assert m is not None and not m.complete and [s.shard for s in m.shards] == [0, 2]
    with pytest.raises(Exception, match="incomplete"):
        ShardedDataset(out)

    flag.unlink()
    launches = Launches(monkeypatch)
    gen.generate_dataset(NAME, params, "train", 2, 9, 3, out, progress=False)
    assert launches.shards == [1]
    d = domains.make(NAME, **params)
    ds = ShardedDataset(out)
    assert all(same(ds[i], d.sample(2, i)) for i in range(9))


def test_digit_circle(ray_local: None, tmp_path: Path) -> None:
    if "digit-circle" not in domains.names():
        pytest.skip("digit-circle domain not available yet")
    out = gen.generate_dataset("digit-circle", {}, "test", 0, 6, 2, tmp_path, progress=False)
    ds = ShardedDataset(out)
    d = domains.make("digit-circle", split="test")
    for i in range(6):
        assert same(ds[i], d.sample(0, i)), i
    batch = next(ds.iter_batches(6))
    assert batch.x.shape == (6, *d.input_shape)
    assert np.array_equal(batch.x[0], d.sample(0, 0).x)


def test_cli_generate_then_read_back(ray_local: None, tmp_path: Path) -> None:
    """`sparling data generate` end to end; the output re-reads identically."""
    from pipelines import cli
    from sparling import domains
    from sparling.shards import ShardedDataset

    out = tmp_path / "dc"
    args = ["data", "generate", "--domain", "digit-circle", "--param", "max_digits=4"]
    args += ["--split", "test", "--seed", "3", "--count", "6", "--shards", "2"]
    assert cli.main([*args, "--out", str(out), "--quiet"]) == 0
    ds = ShardedDataset(out)
    d = domains.make("digit-circle", split="test", max_digits=4)
    for i in range(6):
        ref = d.sample(3, i)
        assert ds[i].x.tobytes() == ref.x.tobytes() and ds[i].tokens == ref.tokens
    assert cli.main([*args, "--out", str(out), "--quiet", "--param", "min_digits=9"]) == 2
