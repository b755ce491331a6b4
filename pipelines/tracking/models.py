"""A run's exported model as its MLflow logged model (MLflow 3's Models view).

``sparling export`` writes a checkpoint as one safetensors file with the resolved run
config in its metadata (:mod:`sparling.export`). :func:`log_exported_model` makes such a
file the logged model of an MLflow run: a ``LoggedModel`` with the run as its source,
listed among the run's outputs (the run page's "Logged models") and in the experiment's
Models tab, holding an MLflow model folder::

    MLmodel              flavors: sparling (the file, its format, how to load it) and
                         python_function (mlflow.pyfunc.load_model works)
    model.safetensors    the export itself

and tagged with the run's config hash, method, seed, checkpoint, density and samples.
One logged model per run and checkpoint: logging the same checkpoint again finds it and
changes nothing (one left unfinished, its process killed, is completed). The run's
metrics at the checkpoint's step (its ``test/`` metrics) can be linked to it, with the
test dataset, so the Models view shows them.

``mlflow.pyfunc.load_model("models:/<model id>")`` loads it through :func:`_load_pyfunc`:
``predict(x)`` takes inputs shaped as the domain's (``(N, H, W)`` images, ``(N, frames,
mels)`` spectrograms) and returns each one's decoded token sequence.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from pipelines.tracking.limits import METRICS_PER_BATCH, tag_value

#: The file name of the export inside the model folder.
MODEL_FILE = "model.safetensors"
#: The flavor naming the export format in ``MLmodel``.
FLAVOR = "sparling"
#: ``model_type`` of every logged model of the project.
MODEL_TYPE = "sparling"
TAG_CHECKPOINT = "sparling.checkpoint"
TAG_DENSITY = "sparling.density"
TAG_SAMPLES = "sparling.samples"

_BAD_NAME = ("/", ":", ".", "%", '"', "'")


def model_name(run_name: str) -> str:
    """A logged model's name from its run's (MLflow refuses ``/ : . % " '`` in one)."""
    name = "".join("_" if c in _BAD_NAME else c for c in run_name).strip()
    return name or "sparling"


def _write_model_folder(export: Path, folder: Path, run_id: str, model_id: str) -> None:
    """The MLflow model folder of an export: the file and its ``MLmodel``."""
    import mlflow
    from mlflow.models import Model

    from sparling.export import FORMAT

    folder.mkdir(parents=True)
    shutil.copyfile(export, folder / MODEL_FILE)
    model = Model(run_id=run_id, model_id=model_id)
    model.add_flavor(
        FLAVOR,
        format=FORMAT,
        file=MODEL_FILE,
        loader="sparling.load_model",
    )
    mlflow.pyfunc.add_to_model(model, loader_module=__name__, data=MODEL_FILE)
    model.save(str(folder / "MLmodel"))


def find_logged_model(client: Any, run: Any, checkpoint: str) -> Any | None:
    """The logged model of MLflow run ``run`` for ``checkpoint``, if there is one."""
    page_token = None
    while True:
        page = client.search_logged_models(
            [run.info.experiment_id],
            filter_string=f"source_run_id = '{run.info.run_id}'",
            page_token=page_token,
        )
        for model in page:
            if model.tags.get(TAG_CHECKPOINT) == checkpoint:
                return model
        page_token = page.token
        if not page_token:
            return None


def log_exported_model(
    client: Any,
    run_id: str,
    export: Path,
    metadata: Mapping[str, str],
    *,
    link_metrics: Collection[str] = (),
    dataset: tuple[str, str] | None = None,
) -> tuple[str, bool]:
    """Make the exported model ``export`` (its ``metadata``:
    :func:`sparling.export.export_model`'s) the logged model of MLflow run ``run_id``;
    ``(model id, existed)``. ``link_metrics``: names of the run's metrics whose points at
    the checkpoint's step are linked to the model (with ``dataset``, ``(name, digest)``
    of the data they were measured on)."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    run = client.get_run(run_id)
    checkpoint = metadata["checkpoint"]
    step = int(metadata["samples"])
    model = find_logged_model(client, run, checkpoint)
    if model is not None and model.status == LoggedModelStatus.READY:
        return str(model.model_id), True
    tags = run.data.tags
    if model is None:
        model = client.create_logged_model(
            run.info.experiment_id,
            name=model_name(run.info.run_name or tags.get("sparling.method", "")),
            source_run_id=run_id,
            tags={
                k: tag_value(v)
                for k, v in {
                    "sparling.run_id": metadata["run_id"],
                    "sparling.method": tags.get("sparling.method", ""),
                    "sparling.seed": tags.get("sparling.seed", ""),
                    TAG_CHECKPOINT: checkpoint,
                    TAG_DENSITY: metadata["density"],
                    TAG_SAMPLES: metadata["samples"],
                }.items()
            },
            params={k: tag_value(v) for k, v in run.data.params.items()},
            model_type=MODEL_TYPE,
        )
    try:
        with tempfile.TemporaryDirectory(prefix="sparling-model-") as tmp:
            folder = Path(tmp) / "model"
            _write_model_folder(export, folder, run_id, model.model_id)
            client.log_model_artifacts(model.model_id, str(folder))
        # An earlier attempt ended before the model was READY (its process killed) may
        # have listed it among the run's outputs already: MLflow refuses it a second time.
        outputs = run.outputs.model_outputs if run.outputs is not None else []
        if all(o.model_id != model.model_id for o in outputs):
            client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step)])
        if link_metrics:
            _link_metrics(client, run_id, model.model_id, step, link_metrics, dataset)
    except BaseException:
        client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    return str(model.model_id), False


def _link_metrics(
    client: Any,
    run_id: str,
    model_id: str,
    step: int,
    names: Collection[str],
    dataset: tuple[str, str] | None,
) -> None:
    """The run's points of metrics ``names`` at ``step`` linked to the model (logged again
    with its id; the run's own points stay as they are)."""
    from mlflow.entities import Metric

    dataset_name, dataset_digest = dataset or (None, None)
    points = [
        Metric(
            m.key,
            m.value,
            m.timestamp,
            m.step,
            model_id=model_id,
            dataset_name=dataset_name,
            dataset_digest=dataset_digest,
            run_id=run_id,
        )
        for name in names
        for m in client.get_metric_history(run_id, name)
        if m.step == step and m.model_id is None
    ]
    for i in range(0, len(points), METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=points[i : i + METRICS_PER_BATCH])


class _PyfuncModel:
    """What ``mlflow.pyfunc.load_model`` returns the model as: ``predict`` decodes."""

    def __init__(self, path: str) -> None:
        import sparling

        self.model = sparling.load_model(path)
        config = self.model.run_config
        self.max_len = int(config.max_output_len) if config is not None else 32

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> list[list[str]]:
        import numpy as np
        import torch

        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            return self.model.decode(x, max_len=self.max_len)


def _load_pyfunc(path: str) -> _PyfuncModel:
    """The ``python_function`` flavor's loader: ``path`` is the model folder's
    ``model.safetensors``."""
    return _PyfuncModel(path)


__all__ = [
    "FLAVOR",
    "MODEL_FILE",
    "MODEL_TYPE",
    "TAG_CHECKPOINT",
    "find_logged_model",
    "log_exported_model",
    "model_name",
]
