"""What every executor shares: a run's outcome, and a trained run's evaluation.

Whatever starts a run (a Ray task, a local process), it ends the same way: the run's
checkpoint at the reported density (or the lowest reached) is scored on the test split
(:func:`evaluate_run`, which writes ``evaluation.json`` and the figures into the run
folder), and the driver records a :class:`RunOutcome`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipelines.plan import PlannedRun
from pipelines.train_job import prepare_datasets
from sparling.runs import RunFolder, init_from_density


@dataclass
class RunOutcome:
    key: str
    name: str
    #: "finished" | "failed" | "skipped" | "stopped" (asked to stop, or the local
    #: executor's deadline: it resumes from its checkpoint when the sweep runs again)
    status: str
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


def evaluate_run(
    run: PlannedRun,
    work_dir: Path,
    *,
    test_dir: Path | None = None,
    device: str = "cpu",
) -> dict[str, float]:
    """Evaluate the run's checkpoint at the reported density (or the lowest reached) on the
    test split (``test_dir``: its dataset folder, already generated; by default prepared
    here), the model on ``device``; writes ``evaluation.json`` and the figures.

    ``test_checkpoint_density`` (and whether it reached the domain's reported density) is
    that of the checkpoint tested, or, for a run whose g is frozen from another run's
    checkpoint (Retrained), that of the checkpoint its g came from."""
    from sparling import domains
    from sparling.evaluate import evaluate_checkpoint
    from sparling.shards import ShardedDataset

    folder = RunFolder.for_config(run.config, work_dir)
    checkpoint = folder.select_checkpoint()
    if test_dir is None:
        test_dir = prepare_datasets(run.config, work_dir, splits=("test",), progress=False)["test"]
    test = ShardedDataset(test_dir)
    result = evaluate_checkpoint(checkpoint, test, out_dir=folder.evaluation_dir, device=device)
    domain = domains.make(run.config.domain.name, **run.config.domain.params)
    m = result.metrics
    tested_density = m["checkpoint_density"]
    if run.config.freeze_motif_model and run.config.init_from:
        # g frozen from another run's checkpoint (Retrained), its bottleneck removed: the
        # density its motifs were found at is that checkpoint's; its own is the schedule's
        # nominal one, which it steps through but never applies
        tested_density = init_from_density(run.config.init_from, folder.path)
    summary = folder.read_result() or {}
    metrics = {
        "test_fpe": m["fpe"],
        "test_fne": m["fne"],
        "test_ce": m["ce"],
        "test_e2ee": m["e2ee"],
        "test_accuracy": m["accuracy"],
        "test_density": m["density"],
        "test_checkpoint_density": tested_density,
        "test_checkpoint_samples": m["checkpoint_samples"],
        "test_reached_reported": float(tested_density <= domain.reported_density * 1.000001),
        # the run's training wall time, once; ``wall_seconds`` is each validation's
        "total_wall_seconds": float(summary.get("wall_seconds", 0.0)),
    }
    folder.write_evaluation(metrics)
    return metrics
