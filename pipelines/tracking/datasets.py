"""A run's datasets as MLflow dataset inputs (the UI's Dataset column), from their manifests.

Each run reads a train, a val and a test dataset (:mod:`sparling.shards`): folders named by
their content hash, described by a ``manifest.json``. Each is logged to the run's child
through :mod:`mlflow.data` as a :class:`ManifestDataset`, a metadata-only dataset (its
samples are never loaded):

- name: the dataset's folder name, ``<domain>-<split>-<hash12>``, e.g.
  ``digit-circle-train-3f2a9c0d1e4b``;
- digest: the first 12 characters of the dataset hash (:func:`sparling.shards.dataset_hash`);
- source: the manifest file (a local path on the machine that planned the sweep);
- profile: what the manifest says of it (rows, shards, seed, split, domain and params,
  storage, the full hash);
- the input's ``mlflow.data.context`` tag: the split (``train``, ``val``, ``test``).

All of it follows from the run config, so a child gets its inputs when it is created,
before the datasets are generated. Logging the same inputs again adds nothing.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparling.config import RunConfig
from sparling.datasets import SPLITS, data_root
from sparling.shards import MANIFEST_NAME, DatasetPlan, plan_dataset

if TYPE_CHECKING:
    from mlflow.entities import DatasetInput

#: How many characters of the dataset hash the digest (and the folder name) keep.
DIGEST_CHARS = 12


def dataset_profile(plan: DatasetPlan) -> dict[str, Any]:
    """What a dataset's manifest says of it, as the MLflow dataset profile."""
    spec = plan.spec
    return {
        "num_rows": plan.count,
        "num_shards": plan.shards,
        "seed": plan.seed,
        "split": spec["split"],
        "domain": spec["name"],
        "params": spec.get("params", {}),
        "storage": plan.domain.storage,
        "dataset_hash": plan.dataset_hash,
    }


def manifest_dataset(plan: DatasetPlan, folder: Path) -> Any:
    """The dataset of ``plan`` in ``folder`` as an :mod:`mlflow.data` dataset (metadata
    only: name, digest, the manifest as its source, the manifest's summary as profile)."""
    from mlflow.data.meta_dataset import MetaDataset

    # made at import time, one per artifact repository scheme: unknown to type checkers
    from mlflow.data.sources import LocalArtifactDatasetSource  # type: ignore[attr-defined]

    class ManifestDataset(MetaDataset):
        """A sharded dataset described by its manifest: nothing of it is loaded."""

        @property
        def profile(self) -> Any:
            return dataset_profile(plan)

        def to_dict(self) -> dict[str, str]:
            return {**super().to_dict(), "profile": json.dumps(self.profile, sort_keys=True)}

    source = LocalArtifactDatasetSource((folder / MANIFEST_NAME).resolve().as_uri())
    return ManifestDataset(source, name=plan.folder_name, digest=plan.dataset_hash[:DIGEST_CHARS])


@functools.lru_cache(maxsize=64)
def _plans(domain_json: str, data_json: str) -> tuple[DatasetPlan, ...]:
    """The run's three dataset plans (building a domain may read a recordings folder: the
    runs of a sweep share them)."""
    domain, data = json.loads(domain_json), json.loads(data_json)
    sizes = {"train": data["train_size"], "val": data["val_size"], "test": data["test_size"]}
    return tuple(
        plan_dataset(
            domain["name"],
            domain["params"],
            split,
            data["seed"],
            sizes[split],
            max(1, min(data["shards"], sizes[split])),
        )
        for split in SPLITS
    )


def run_dataset_inputs(config: RunConfig, work_dir: Path) -> list[DatasetInput]:
    """The run's train, val and test datasets as MLflow dataset inputs (context: the split),
    in the folders :func:`sparling.datasets.prepare_datasets` finds or makes them in."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    root = data_root(config, work_dir)
    plans = _plans(config.domain.model_dump_json(), json.dumps(config.data.model_dump(mode="json")))
    inputs = []
    for split, plan in zip(SPLITS, plans, strict=True):
        d = manifest_dataset(plan, root / plan.folder_name).to_dict()
        entity = Dataset(
            name=d["name"],
            digest=d["digest"],
            source_type=d["source_type"],
            source=d["source"],
            schema=d.get("schema"),
            profile=d.get("profile"),
        )
        inputs.append(DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, split)]))
    return inputs
