"""One run, trained in this process: ``sparling.fit(config, work_dir)``.

For notebooks and scripts: no Ray, no MLflow. ``fit`` generates the datasets the run
reads (in this process, into ``<work_dir>/data`` unless the config names a
``data.root``), trains with :class:`~sparling.train.Trainer` in the run's folder
``<work_dir>/runs/<run id>/`` (:class:`~sparling.runs.RunFolder`), and returns its
:class:`~sparling.train.RunResult`::

    import sparling
    result = sparling.fit("pipelines/configs/digit-circle-fast.yaml", "sparling-work")
    print(result.density, result.val_accuracy, result.samples, result.run_dir)

The run folder is the one the ``sparling`` command line and sweeps use: a run stopped
part-way resumes from its last checkpoint, and calling ``fit`` again for a run that
finished returns its result without training.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import RunConfig, load_config
from .runs import RunFolder, continue_from_shorter_budget, resolve_init_from
from .train import Callbacks, RunResult, make_trainer


def fit(
    config: RunConfig | Mapping[str, Any] | str | Path,
    work_dir: str | Path,
    *,
    progress: bool = True,
) -> RunResult:
    """Train (or resume, or look up) the run ``config`` describes, in ``work_dir``.

    ``config``: a :class:`~sparling.config.RunConfig`, a dict of the same fields, or the
    path of a YAML or JSON config file. ``progress``: show progress bars (dataset
    generation, training). Training runs where ``compute.gpus_per_worker`` says (a GPU
    when it is above 0, else the CPU).

    Writes the run folder as the pipeline does (``config.json``, checkpoints,
    ``history.json`` at every validation, ``result.json`` at the end).
    """
    from .datasets import prepare_datasets
    from .shards import ShardedDataset

    cfg = config if isinstance(config, RunConfig) else load_config(_plain(config))
    folder = RunFolder.for_config(cfg, work_dir)
    done = finished_result(folder)
    if done is not None:
        return done
    if cfg.init_from:
        # A missing source of g is the config's error: say so before generating data.
        resolve_init_from(cfg.init_from, folder.path)
    folder.write_config(cfg)
    continued = continue_from_shorter_budget(folder, cfg)
    if continued is not None and progress:
        print(continued.message(f"run {cfg.run_id()}", cfg.budget_samples))
    if continued is not None and continued.ended is not None:
        done = finished_result(folder)  # the shorter run's result, which is this run's
        if done is not None:
            return done
    data = prepare_datasets(cfg, work_dir, progress=progress, splits=("train", "val"))

    def on_validation(_record: dict[str, Any], _checkpoint: Path | None) -> None:
        # every validation so far (the trainer's history survives resumption)
        folder.write_history(trainer.history)

    trainer = make_trainer(
        cfg,
        ShardedDataset(data["train"]),
        ShardedDataset(data["val"]),
        folder.path,
        callbacks=Callbacks(on_validation=on_validation),
        progress=progress,
    )
    result = trainer.fit()
    folder.write_history(result.history)  # also when it resumed with nothing left to train
    folder.write_result(result)
    return result


def finished_result(folder: RunFolder) -> RunResult | None:
    """The result of the run in ``folder`` if it finished (``result.json``, with every
    validation in ``history.json`` and its last checkpoint there); else ``None``."""
    summary = folder.read_result()
    if summary is None or not folder.has_checkpoint():
        return None
    history = folder.read_history()
    if len(history) != summary.get("validations"):
        return None  # e.g. trained by the Ray pipeline, which keeps no history.json
    return RunResult(
        status=str(summary["status"]),
        samples=int(summary["samples"]),
        density=float(summary["density"]),
        history=history,
        density_checkpoints=dict(summary["density_checkpoints"]),
        run_dir=folder.path,
        wall_seconds=float(summary["wall_seconds"]),
    )


def _plain(config: Mapping[str, Any] | str | Path) -> dict[str, Any] | str | Path:
    return config if isinstance(config, (str, Path)) else dict(config)
