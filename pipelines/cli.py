"""The ``sparling`` command line.

Subcommands import what they need lazily, so ``sparling --help`` stays fast and a
problem in one stage never breaks another.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sparling.errors import SparlingError, describe_os_error
from sparling.fileio import check_writable, load_yaml


class UsageError(SparlingError):
    """A bad command-line value; printed without a traceback."""


def parse_assignments(items: list[str] | None, flag: str) -> dict[str, Any]:
    """Parse ``key=value`` pairs; values are read as YAML scalars (``3`` -> int, ``a`` -> str)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag} expects key=value, got {item!r}")
        key = key.strip()
        if key in out:  # a later one would win silently, as a key twice in a YAML file
            raise UsageError(f"{flag} {key} is given twice; keep one")
        out[key] = load_yaml(raw, source=f"{flag} {key}") if raw.strip() else ""
    for key in out:  # one key inside another: which value wins would depend on the order
        inner = next((k for k in out if k.startswith(f"{key}.")), None)
        if inner is not None:
            raise UsageError(
                f"{flag} {key} and {flag} {inner} both set {inner} ({key} replaces the whole "
                f"of {key}); keep one, or give {key}'s other fields one by one"
            )
    return out


# -- argument types: a bad value is refused by argparse, before any command runs ------------
def path_arg(text: str) -> str:
    """A path argument: anything but an empty string (which would mean the current
    folder, silently)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "an empty path; give a file or folder name (. for the current folder)"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # bytes the file system's encoding does not decode (Python keeps them as lone
        # surrogates): no file, tag or JSON record the project writes could hold the name
        shown = text.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")
        raise argparse.ArgumentTypeError(
            f"the path {shown} is not UTF-8 text; rename the file or folder to a UTF-8 name"
        ) from None
    return text


def whole(low: int, high: int | None = None, hint: str = "") -> Any:
    """A whole-number argument type accepting ``low`` to ``high`` (inclusive)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expects a whole number, got {text!r}{hint}"
            ) from None
        if value < low or (high is not None and value > high):
            accepted = f"from {low:,} to {high:,}" if high is not None else f"at least {low:,}"
            raise argparse.ArgumentTypeError(f"must be {accepted}, got {value}{hint}")
        return value

    return parse


def positive_number(what: str) -> Any:
    """A finite number above 0 (``what``: its unit, for the message)."""

    def parse(text: str) -> float:
        value = _number(text)
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be a positive number of {what}, got {text}")
        return value

    return parse


def density_arg(text: str) -> float:
    """A density: the fraction of motif activations kept, above 0 and at most 1."""
    value = _number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(
            f"a density is a fraction above 0 and at most 1 (e.g. 5e-5), got {text}"
        )
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects a number, got {text!r}") from None


SEED_ARG = whole(0, 2**32 - 1)
PORT_ARG = whole(1, 65535, hint="; leave --port out for a free one")


def work_dir_path(text: str) -> Path:
    """The work dir, absolute, once it is known to be no file (a file or a loop of
    symbolic links there is refused with its path, before anything looks inside)."""
    import errno

    path = Path(text)
    try:
        resolved = path.resolve()
    except RuntimeError:  # Python < 3.13: a loop of symbolic links
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path)) from None
    if resolved.exists() and not resolved.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
    return resolved


#: The work dir when ``--work-dir`` is not given (the flag wins over it).
WORK_DIR_ENV = "SPARLING_WORK_DIR"
DEFAULT_WORK_DIR = "sparling-work"


def default_work_dir() -> str:
    """``$SPARLING_WORK_DIR`` (``~`` expanded: no shell expands it in a variable's value
    set in a file), else ``sparling-work``."""
    return os.path.expanduser(os.environ.get(WORK_DIR_ENV, "").strip()) or DEFAULT_WORK_DIR


def parse_seeds(text: str | None) -> list[int] | None:
    """``--seeds``: seeds ``N``, ranges ``N-M`` (both ends included) and comma lists of
    them, e.g. ``0-8`` or ``0,2,5-7``, in the order given, each once."""
    if text is None:
        return None
    from pipelines.plan import MAX_SWEEP_RUNS
    from sparling.config import MAX_SEED
    from sparling.fileio import env_limit

    limit = env_limit("SPARLING_SWEEP_MAX_RUNS", MAX_SWEEP_RUNS, error=UsageError)
    form = "seeds as N, N-M or a comma list of them, e.g. 0-8 or 0,2,5-7"
    seeds: list[int] = []
    for part in text.split(","):
        first, sep, last = part.strip().partition("-")
        if not first.isdigit() or (sep and not last.isdigit()):
            raise UsageError(f"--seeds expects {form}; got {text!r} ({part.strip()!r})")
        low, high = int(first), int(last) if sep else int(first)
        if high > MAX_SEED:
            raise UsageError(
                f"--seeds {text!r}: seed {high} is too large; seeds go from 0 to "
                f"{MAX_SEED:,} (2**32 - 1)"
            )
        if high < low:
            raise UsageError(
                f"--seeds {text!r}: the range {part.strip()} goes down; write {high}-{low}"
            )
        if len(seeds) + high - low + 1 > limit:
            raise UsageError(
                f"--seeds {text!r} names more than {limit:,} seeds, the most runs a sweep may "
                "plan (SPARLING_SWEEP_MAX_RUNS raises it)"
            )
        for seed in range(low, high + 1):
            if seed in seeds:
                raise UsageError(f"--seeds {text!r}: seed {seed} is given twice")
            seeds.append(seed)
    return seeds


def parse_methods(text: str | None) -> list[str] | None:
    """``--methods``: comma-separated method names or labels, each once."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise UsageError(
            f"--methods expects comma-separated method names, e.g. sparling,l1; got {text!r}"
        )
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"--methods {text!r}: {', '.join(twice)} given twice")
    return names


def tracking_settings(args: argparse.Namespace, work_dir: Path) -> Any:
    """The command's MLflow settings: ``--mlflow-config FILE`` if given, else those found
    for the work dir (:func:`pipelines.tracking.settings.load_settings`); ``None`` with
    ``--no-tracking`` (refused with ``--mlflow-config``, which it would contradict)."""
    from pipelines.tracking.settings import load_settings

    named = getattr(args, "mlflow_config", None)
    if getattr(args, "no_tracking", False):
        if named is not None:
            raise UsageError("--mlflow-config names where to track; --no-tracking tracks nothing")
        return None
    settings = load_settings(work_dir, Path(named) if named is not None else None)
    settings.check_reachable()  # a shared server that does not answer: now, not in minutes
    return settings


def tracking_line(settings: Any, experiment: str) -> str:
    """The line a command prints about where it tracks (the local server's URI if one runs
    now; nothing is started)."""
    from pipelines.tracking.server import running_server_uri

    return str(settings.summary(running_server_uri(settings), experiment))


# -- data ---------------------------------------------------------------------------------
def _cmd_data_generate(args: argparse.Namespace) -> int:
    from pipelines.generate import generate_dataset

    path = generate_dataset(
        args.domain,
        parse_assignments(args.param, "--param"),
        args.split,
        args.seed,
        args.count,
        args.shards,
        Path(args.out),
        progress=not args.quiet,
    )
    print(f"dataset ready: {path}")
    return 0


def _cmd_data_fetch(args: argparse.Namespace) -> int:
    from pipelines.fetch import PINNED, fetch_dataset

    path = fetch_dataset(args.name, Path(args.to), url=args.url, sha256=args.sha256 or PINNED)
    print(f"{args.name} ready in {path}")
    return 0


# -- train / evaluate -------------------------------------------------------------------------
def _relative(path: str | Path) -> str:
    """``path`` relative to the current folder where it is inside it (as MLflow's Source)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except (ValueError, OSError):
        return str(path)


def _load_run_config(path: str, sets: list[str] | None) -> Any:
    from sparling.config import load_config

    config = load_config(Path(path))
    updates = parse_assignments(sets, "--set")
    return config.with_updates(updates) if updates else config


def _train_tracked(
    args: argparse.Namespace,
    config: Any,
    work_dir: Path,
    settings: Any,
    experiment: str | None,
) -> dict[str, Any]:
    """``run_training`` inside the run's own MLflow run (none with ``--no-tracking``)."""
    from pipelines.train_job import run_training

    with contextlib.ExitStack() as stack:
        tracking = None
        if settings is not None:
            from pipelines.sync import standalone_tracking

            source = f"sparling train {_relative(args.config)}"
            tracking = stack.enter_context(
                standalone_tracking(
                    config, work_dir, settings, experiment=experiment, source=source
                )
            )
            print(
                f"MLflow: run {tracking['run_id']} in experiment {tracking['experiment']!r} "
                f"({settings.source})"
            )
        return run_training(config, work_dir=work_dir, progress=not args.quiet, tracking=tracking)


def _cmd_train(args: argparse.Namespace) -> int:
    from pipelines.sweep import run_is_finished
    from pipelines.train_job import RunStopped
    from sparling.runs import RunFolder

    config = _load_run_config(args.config, args.set)
    work_dir = work_dir_path(args.work_dir)
    settings = tracking_settings(args, work_dir)
    folder = RunFolder.for_config(config, work_dir)
    print(
        f"run {config.run_id()}  ({config.domain.name}, {config.model.preset} preset, "
        f"{config.bottleneck.name}, seed {config.seed})"
    )
    experiment = None
    if settings is not None:
        experiment = args.experiment or settings.experiment_for(domain=config.domain.name)
    elif args.experiment:
        raise UsageError("--experiment names where to track; --no-tracking tracks nothing")
    if args.dry_run:
        from pipelines.ray_env import on_cluster
        from pipelines.train_job import check_run_can_start

        check_run_can_start(config, work_dir)  # all that the real run checks first
        result = folder.read_result()
        state = (
            "finished and evaluated"
            if run_is_finished(config, work_dir)
            else f"trained ({result['status']}, {result['samples']} samples)"
            if result
            else "resumes from its last checkpoint"
            if folder.has_checkpoint()
            else "to train"
        )
        print(f"  {state}: {folder.path}")
        print(
            tracking_line(settings, str(experiment))
            if settings is not None
            else "MLflow: not tracked (--no-tracking)"
        )
        if config.compute.gpus_per_worker > 0 and on_cluster():
            need = config.compute.gpus_per_worker * config.compute.workers
            print(
                f"the run asks for {need:g} GPU(s) (compute.gpus_per_worker): on the cluster "
                "at RAY_ADDRESS it waits for a node with free GPUs, which its autoscaler adds "
                "where it may"
            )
        return 0
    if settings is not None:
        # what the run refuses before it writes anything, refused before the MLflow run
        # (and a local store) is made for it
        from pipelines.train_job import check_run_can_start

        check_run_can_start(config, work_dir)
        folder.write_config(config)  # what the run writes first: a read-only work dir said
    try:
        result = _train_tracked(args, config, work_dir, settings, experiment)
    except RunStopped as stopped:  # SIGTERM/SIGINT: checkpointed, resumable; not an error
        print(stopped, file=sys.stderr)
        return stopped.exit_code
    last = result.get("last") or {}
    print(
        f"{result['status']}: {result['samples']} samples, density {result['density']:.3e}, "
        f"last validation accuracy {last.get('val_accuracy', float('nan')):.3f}"
    )
    if result["status"] == "collapsed":
        print(
            f"  the bottleneck's output was zero on every validation input at the last "
            f"{config.collapse_validations} validations, and no gradient reaches g through "
            "it: training longer cannot change the run (--set collapse_validations=0 "
            "trains it to the budget anyway)"
        )
    print(f"checkpoints: {RunFolder.for_config(config, args.work_dir).checkpoints_dir}")
    return 0


def _run_path(text: str, args: argparse.Namespace) -> Path:
    """The run or checkpoint folder ``text`` names. A run's id alone names no folder: where
    the work dir holds that run, the message says which folder to pass."""
    from sparling.runs import RUNS_DIR

    path = Path(text)
    if not os.path.lexists(path) and len(path.parts) == 1:
        work_dir = Path(getattr(args, "work_dir", None) or default_work_dir())
        candidate = work_dir / RUNS_DIR / text
        if candidate.is_dir():
            raise UsageError(
                f"no folder {text!r} here; run {text} of the work dir {work_dir} is the folder "
                f"{candidate}: pass that"
            )
    return path


def _cmd_export(args: argparse.Namespace) -> int:
    from sparling.export import export_model
    from sparling.runs import RunFolder, select_checkpoint

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise UsageError(f"--out must name a .safetensors file, got {out}")
    if os.path.lexists(out) and not out.is_dir() and not args.force:
        raise UsageError(f"{out} already exists; pass --force to replace it (or another --out)")
    checkpoint = select_checkpoint(_run_path(args.path, args), args.density)
    run = RunFolder.of_checkpoint(checkpoint)
    in_run = checkpoint.parent == run.checkpoints_dir and run.in_work_dir()
    settings = None
    if in_run:
        settings = tracking_settings(args, run.work_dir)  # bad settings: said before writing
    elif args.mlflow_config:
        raise UsageError(
            "--mlflow-config applies to a run in its work dir (a checkpoint copied out of "
            "one is tracked nowhere)"
        )
    meta = export_model(Path(args.path), out, density=args.density)
    print(
        f"exported {meta['checkpoint']} of run {meta['run_id']} (density "
        f"{float(meta['density']):.3e}, {meta['samples']} training samples) to {out} "
        f"({out.stat().st_size / 1e6:.1f} MB)"
    )
    if settings is not None:
        print(_log_export(settings, run, out))
    return 0


def _log_export(settings: Any, run: Any, out: Path) -> str:
    """The exported file as the logged model of each MLflow run of its run, where the run's
    work dir is tracked; what to print about it."""
    from pipelines.sync import log_model
    from pipelines.tracking.finder import Tracker
    from pipelines.tracking.metrics import METRICS
    from pipelines.tracking.server import tracking_uri
    from pipelines.tracking.settings import missing_local_store

    if missing_local_store(settings) is not None:
        return f"MLflow: not logged (nothing is tracked in {run.work_dir})"
    test = [m for m in METRICS if m.startswith("test/")]
    with tracking_uri(settings) as uri:
        tracker = Tracker(uri)
        runs = [r.info.run_id for r in tracker.runs_of(run.run_id)]
        models = [log_model(tracker, r, run, export=out, link_metrics=test) for r in runs]
    if not runs:
        return f"MLflow: not logged (run {run.run_id} is not tracked there)"
    return "MLflow: logged model(s) " + ", ".join(
        f"{m} of run {r}" for m, r in zip(models, runs, strict=True)
    )


def _print_evaluation(result: Any, where: str, out: Path, as_json: bool) -> None:
    import json

    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    m = result.metrics
    print(
        f"{where} (density {m['checkpoint_density']:.3e}, "
        f"{int(m['checkpoint_samples'])} training samples)"
    )
    print(
        f"test samples {int(m['samples'])}: FPE {m['fpe']:.2%}  FNE {m['fne']:.2%}  "
        f"CE {m['ce']:.2%}  E2EE {m['e2ee']:.2%}  exact match {m['accuracy']:.2%}  "
        f"measured density {m['density']:.3e}"
    )
    print(f"report: {out}")


def _evaluate_file(args: argparse.Namespace) -> int:
    """``sparling evaluate FILE.safetensors``: score an exported model on test images
    generated now (the test split of the model's data seed, or ``--data-seed``)."""
    from sparling.evaluate import write_report
    from sparling.export import evaluate_export
    from sparling.shards import max_dataset_samples

    path = Path(args.path)
    limit = max_dataset_samples()
    if args.samples is not None and args.samples > limit:
        raise UsageError(
            f"--samples {args.samples:,} is over the limit of {limit:,} test images generated "
            "for one evaluation (set SPARLING_MAX_DATASET_SAMPLES to raise it)"
        )
    out = Path(args.out) if args.out else Path(args.work_dir) / "evaluation" / path.stem
    check_writable(out, folder=True)  # before the evaluation, not after it
    _, domain, result = evaluate_export(
        path, samples=args.samples, data_seed=args.data_seed, device=args.device
    )
    write_report(result, domain, out)
    _print_evaluation(result, f"model {path}", out, args.json)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from pipelines.train_job import prepare_datasets
    from sparling.checkpoint import CONFIG_FILE
    from sparling.config import load_config
    from sparling.devices import resolve_device
    from sparling.evaluate import evaluate_checkpoint
    from sparling.runs import RunFolder, select_checkpoint
    from sparling.shards import ShardedDataset

    resolve_device(args.device, what="--device")  # before any data is generated
    if Path(args.path).suffix == ".safetensors":
        if args.density is not None:
            raise UsageError("--density selects among a run's checkpoints; a file has one")
        return _evaluate_file(args)
    if args.data_seed is not None:
        raise UsageError("--data-seed applies to an exported .safetensors file only")
    checkpoint = select_checkpoint(_run_path(args.path, args), args.density)
    config = load_config(checkpoint / CONFIG_FILE)
    run = RunFolder.of_checkpoint(checkpoint)
    in_run = checkpoint.parent == run.checkpoints_dir and run.in_work_dir()
    settings = None
    if in_run:
        settings = tracking_settings(args, run.work_dir)  # said before any data is made
    elif args.mlflow_config:
        raise UsageError(
            "--mlflow-config applies to a run in its work dir (a checkpoint copied out of "
            "one is tracked nowhere)"
        )
    if args.out:
        out = Path(args.out)
    elif in_run:
        out = run.evaluation_dir / checkpoint.name
    else:
        out = checkpoint.parent / f"evaluation-{checkpoint.name}"
    check_writable(out, folder=True)  # before any data is made or the model is run
    if args.samples is not None and args.samples > config.data.test_size:
        raise UsageError(
            f"--samples {args.samples:,} is more than the {config.data.test_size:,} samples of "
            f"the run's test split (data.test_size); give at most {config.data.test_size:,}, "
            "or leave --samples out for all of them"
        )
    test: Any
    if in_run:
        # a checkpoint of a run in its work dir: the work dir's test set, its folders
        test = ShardedDataset(
            prepare_datasets(config, run.work_dir, splits=("test",), progress=False)["test"]
        )
    else:
        # a checkpoint copied elsewhere: the same test samples, generated here, and the
        # report beside the checkpoint (nothing written anywhere else)
        from sparling import domains
        from sparling.scoring import GeneratedSamples

        domain = domains.make(config.domain.name, split="test", **config.domain.params)
        test = GeneratedSamples(domain, config.data.seed, config.data.test_size)
    result = evaluate_checkpoint(
        checkpoint, test, samples=args.samples, out_dir=out, device=args.device
    )
    _print_evaluation(result, f"checkpoint {checkpoint}", out, args.json)
    if settings is not None:
        from pipelines.sync import log_evaluation

        logged = log_evaluation(settings, config, result.metrics, out, checkpoint.name)
        if logged is None:
            where = f"MLflow: not logged (nothing is tracked in {run.work_dir})"
        elif not logged:
            where = f"MLflow: not logged (run {config.run_id()} is not tracked there)"
        else:
            where = f"MLflow: logged to run(s) {', '.join(logged)}"
        print(where, file=sys.stderr if args.json else sys.stdout)
    return 0


#: the exported models the demo shows first (written by `sparling export`)
SHOWCASE_MODELS = Path(__file__).resolve().parents[1] / "results" / "models" / "digit-circle"


def _cmd_demo(args: argparse.Namespace) -> int:
    from sparling.showcase import showcase

    models = sorted(SHOWCASE_MODELS.glob("*.safetensors"))
    # what the sweep would refuse (its work dir, its MLflow settings), refused before the
    # showcase writes into the work dir
    work_dir = work_dir_path(args.work_dir)
    tracking_settings(args, work_dir)
    check_writable(work_dir, folder=True)
    if models and args.showcase_samples > 0:
        print(
            f"What Sparling found: the {len(models)} DigitCircle model(s) in {SHOWCASE_MODELS}, "
            f"each scored on {args.showcase_samples} test images generated now."
        )
        showcase(models, Path(args.work_dir) / "showcase", samples=args.showcase_samples)
        print()
    elif not models:
        print(f"(no exported models in {SHOWCASE_MODELS} to show; going on to the sweep)")
    print(
        "Sparling demo: the quickstart sweep (DigitCircle, fast preset; Sparling, ST, L1 and "
        "non-sparse, 2 seeds), run as parallel Ray Train jobs, tracked in MLflow, then the "
        "comparison table. `sparling ui` opens the runs in the MLflow UI afterwards."
    )
    named = ["--mlflow-config", args.mlflow_config] if args.mlflow_config else []
    return main(["sweep", "quickstart", "--work-dir", args.work_dir, *named])


# -- sweeps ----------------------------------------------------------------------------------
def _resolve_sweep_file(name: str) -> Path:
    """A sweep file path, or the name of a shipped sweep (pipelines/sweeps/NAME.yaml)."""
    from importlib import resources

    path = Path(name)
    if path.exists():  # a folder, a pipe, a device: load_sweep says it is no sweep file
        return path
    shipped = Path(str(resources.files("pipelines") / "sweeps" / f"{name}.yaml"))
    if shipped.is_file():
        return shipped
    available = sorted(
        p.name.removesuffix(".yaml")
        for p in Path(str(resources.files("pipelines") / "sweeps")).glob("*.yaml")
    )
    shipped_list = f"shipped sweeps: {', '.join(available)}"
    if os.path.lexists(path):  # a link to nothing, or a loop of links
        from sparling.fileio import why_missing

        raise UsageError(f"{why_missing(path, 'sweep file')}; {shipped_list}")
    from sparling.errors import nearest

    near = nearest(name, available)
    hint = f" (did you mean {near!r}?)" if near else ""
    raise UsageError(f"no sweep file {name!r}{hint}; {shipped_list}")


def _local_options(args: argparse.Namespace) -> Any:
    from pipelines.executors.local import LocalOptions

    local_only = {
        "--parallel": args.parallel,
        "--threads": args.threads,
        "--device": args.device,
        "--deadline": args.deadline,
        "--seeds-first": args.seeds_first or None,
        "--pack": args.pack,
    }
    if args.executor != "local":
        given = [flag for flag, value in local_only.items() if value is not None]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise UsageError(f"{', '.join(given)} {verb} to --executor local only")
        return None
    for flag, value in (("--parallel", args.parallel), ("--threads", args.threads)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    if args.deadline is not None and args.deadline <= 0:
        raise UsageError(f"--deadline must be a positive number of seconds, got {args.deadline}")
    cpus = os.cpu_count() or 1
    on_cpu = (args.device or "cpu") == "cpu"  # runs sharing a GPU may outnumber the CPUs
    for flag, value in (
        ("--parallel", args.parallel if on_cpu else None),
        ("--threads", args.threads),
    ):
        # more than the machine's CPUs would only slow every run (and thousands of threads
        # or processes exhaust it)
        if value is not None and value > cpus:
            raise UsageError(
                f"{flag} {value} is more than this machine's {cpus} CPU(s); give at most {cpus}"
            )
    from sparling.devices import resolve_device

    device = args.device or "cpu"
    resolve_device(device, what="--device")
    return LocalOptions(
        parallel=args.parallel or 1,
        threads=args.threads or 1,
        device=device,
        deadline=args.deadline,
        seeds_first=args.seeds_first,
    )


def _sweep_overrides(args: argparse.Namespace) -> Any:
    """The command line's changes to the sweep file (``--set``, ``--seeds``, ``--methods``)."""
    from pipelines.plan import SweepOverrides

    return SweepOverrides(
        set=parse_assignments(args.set, "--set"),
        seeds=parse_seeds(args.seeds),
        methods=parse_methods(args.methods),
    )


def parse_rerun(text: str | None) -> set[str]:
    """``--rerun``: comma-separated kinds of finished runs to train again (``changed``)."""
    from pipelines.sweep import RERUN_KINDS

    if text is None:
        return set()
    kinds = {k.strip() for k in text.split(",")}
    unknown = sorted(kinds - set(RERUN_KINDS))
    if unknown or not text.strip():
        accepted = "; ".join(f"{k} ({what})" for k, what in RERUN_KINDS.items())
        raise UsageError(
            f"--rerun {text!r}: unknown {unknown[0]!r}; accepted: {accepted}"
            if unknown
            else f"--rerun expects one of: {accepted}"
        )
    return kinds


def _cmd_sweep(args: argparse.Namespace) -> int:
    from pipelines.plan import describe, load_sweep
    from pipelines.sweep import (
        changed_code,
        check_runs_can_start,
        continuations,
        gpu_note,
        run_is_finished,
        run_sweep,
        trained_unevaluated,
    )
    from pipelines.tracking.server import tracking_uri
    from pipelines.tracking.settings import missing_local_store

    local = _local_options(args)
    overrides = _sweep_overrides(args)
    rerun_kinds = parse_rerun(args.rerun)
    if rerun_kinds and args.no_tracking:
        raise UsageError(
            "--rerun changed compares the commit each run's MLflow runs record; "
            "--no-tracking reads none"
        )
    sweep = load_sweep(_resolve_sweep_file(args.file), overrides)
    work_dir = work_dir_path(args.work_dir)
    settings = tracking_settings(args, work_dir)
    where = (
        tracking_line(settings, settings.experiment_for(sweep=sweep.name))
        if settings is not None
        else "MLflow: not tracked (--no-tracking)"
    )
    done = {r.key for r in sweep.runs if run_is_finished(r.config, work_dir)}
    # what the runs to train refuse before their first step (a recordings folder, GPUs
    # this machine lacks), refused before anything is started, the dry run included
    check_runs_can_start([r for r in sweep.runs if r.key not in done], args.executor, work_dir)
    if args.pack:  # said now, not after the sweep
        check_writable(Path(f"{args.pack}-1.tgz"), folder=False)
    note = gpu_note([r for r in sweep.runs if r.key not in done], args.executor, args.device)
    with contextlib.ExitStack() as stack:
        if settings is not None and missing_local_store(settings) is None:
            # one server for the whole command (read the commits, run, report)
            stack.enter_context(tracking_uri(settings))
        changed = changed_code(settings, done) if settings is not None else {}
        rerun = {k: f"code changed {why}" for k, why in changed.items()} if rerun_kinds else {}
        if args.dry_run:
            # what the real run checks before its first step (e.g. a recordings folder)
            check_runs_can_start(
                [r for r in sweep.runs if r.key not in done - set(rerun)], args.executor, work_dir
            )
        notes = continuations(sweep, done, work_dir), trained_unevaluated(sweep, done, work_dir)
        print(describe(sweep, done, changed, rerun, *notes))
        print(where)
        if note:
            print(note)
        if args.dry_run:
            return 0
        summary = run_sweep(
            sweep,
            work_dir,
            progress=not args.quiet,
            track=settings is not None,
            executor=args.executor,
            local=local,
            settings=settings,
            rerun=rerun,
        )
        print(summary.table())
        if args.pack:
            from pipelines.executors.local import pack
            from sparling.runs import RunFolder

            pack(args.pack, [RunFolder.for_config(r.config, work_dir).path for r in sweep.runs])
        if settings is not None and not args.no_report:
            print(_report_text(sweep.name, work_dir, None, ("md", "csv", "tex"), settings))
    return 1 if summary.failed else 0


def _report_text(
    sweep_name: str,
    work_dir: Path,
    out: Path | None,
    formats: tuple[str, ...],
    settings: Any,
) -> str:
    from pipelines.report import report_command
    from pipelines.tracking.server import tracking_uri
    from pipelines.tracking.settings import missing_local_store

    if (store := missing_local_store(settings)) is not None:
        raise UsageError(
            f"no MLflow tracking store at {store}: nothing was tracked with --work-dir "
            f"{work_dir}; run the sweep first, or pass the --work-dir it ran with"
        )
    out_dir = out or work_dir / "reports" / sweep_name
    with tracking_uri(settings) as uri:
        return report_command(
            uri, settings.experiment_for(sweep=sweep_name), sweep_name, out_dir, formats
        )


def _cmd_report(args: argparse.Namespace) -> int:
    name = args.sweep
    if Path(name).is_file() or Path(name).is_dir() or name.endswith((".yaml", ".yml")):
        from pipelines.plan import load_sweep

        name = load_sweep(_resolve_sweep_file(name)).name
    formats = tuple(args.format) if args.format else ("md", "csv", "tex")
    out = Path(args.out) if args.out else None
    work_dir = work_dir_path(args.work_dir)
    settings = tracking_settings(args, work_dir)
    # before a server is started or anything is read: the report's folder can be written
    check_writable(out or work_dir / "reports" / name, folder=True)
    print(_report_text(name, work_dir, out, formats, settings))
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    from pipelines.ui import run_ui

    named = Path(args.mlflow_config) if args.mlflow_config else None
    run_ui(work_dir_path(args.work_dir), port=args.port, settings_path=named)
    return 0


class _DomainName(argparse.Action):
    """``--domain NAME``; its help lists the registered domains, read only when help is
    shown (reading the registry imports every domain)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)

    @property
    def help(self) -> str:
        from sparling import domains

        return "a registered domain: " + ", ".join(domains.names())

    @help.setter
    def help(self, value: str | None) -> None:
        pass  # the help is always the registry's list


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparling",
        description="Sparling experiments: data generation, training, sweeps and reports.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    work_dir = default_work_dir()
    work_help = f"default: ${WORK_DIR_ENV}, else {DEFAULT_WORK_DIR} (now {work_dir})"

    def mlflow_config(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--mlflow-config",
            metavar="FILE",
            help="MLflow settings file (default: $SPARLING_MLFLOW_CONFIG, else the first "
            "mlflow.yaml in the work dir, next to it, or in the current folder)",
        )

    data = sub.add_parser("data", help="generate or fetch datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)

    gen = data_sub.add_parser(
        "generate", help="generate a sharded dataset with one Ray task per shard"
    )
    gen.add_argument("--domain", required=True, action=_DomainName)
    gen.add_argument(
        "--param", action="append", metavar="K=V", help="a domain parameter (repeatable)"
    )
    gen.add_argument("--split", required=True, choices=["train", "val", "test"])
    gen.add_argument("--seed", type=SEED_ARG, default=0)
    gen.add_argument("--count", type=whole(1), required=True, help="number of samples")
    gen.add_argument(
        "--shards", type=whole(1), default=1, help="number of shards (one Ray task each)"
    )
    gen.add_argument("--out", required=True, help="dataset folder")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    gen.set_defaults(func=_cmd_data_generate)

    fetch = data_sub.add_parser("fetch", help="download a recorded-speech dataset")
    fetch.add_argument("name", choices=["audiomnist", "fsdd"])
    fetch.add_argument("--to", required=True, help="folder to put it in")
    fetch.add_argument(
        "--url", help="another source for the archive (e.g. file:// of a copy fetched elsewhere)"
    )
    fetch.add_argument(
        "--sha256",
        metavar="HEX",
        help="the checksum the recordings must have instead of the pinned one "
        "(pipelines/fetch.py, content_sha256)",
    )
    fetch.set_defaults(func=_cmd_data_fetch)

    train = sub.add_parser("train", help="run one training run as a Ray Train job")
    train.add_argument("config", help="run config YAML (see pipelines/configs/)")
    train.add_argument(
        "--set", action="append", metavar="K=V", help="override a field, e.g. seed=3 (repeatable)"
    )
    train.add_argument(
        "--work-dir", default=work_dir, help=f"datasets, runs, Ray storage; {work_help}"
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument(
        "--dry-run",
        action="store_true",
        help="print the run's id, state and where it is tracked; run nothing",
    )
    train.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    train.add_argument(
        "--experiment",
        metavar="NAME",
        help="the MLflow experiment (default: the settings' experiment_name with no sweep, "
        "e.g. sparling; a sweep's experiment makes the run that sweep's when it plans it)",
    )
    mlflow_config(train)
    train.set_defaults(func=_cmd_train)

    ev = sub.add_parser(
        "evaluate", help="motif errors, E2EE and figures for a run, checkpoint or exported model"
    )
    ev.add_argument(
        "path",
        help="a run folder (sparling-work/runs/ID), a checkpoint folder, or an exported "
        "model (.safetensors, scored on test images generated now)",
    )
    ev.add_argument(
        "--density", type=density_arg, help="evaluate the run's checkpoint at this density"
    )
    ev.add_argument(
        "--samples", type=whole(1), help="test samples to use (default: the whole split)"
    )
    ev.add_argument("--json", action="store_true", help="print the result as JSON")
    ev.add_argument("--out", help="folder for evaluation.json and the figures")
    ev.add_argument(
        "--device", default="cpu", help="where to run the model: cpu (default), cuda, cuda:N"
    )
    ev.add_argument(
        "--data-seed",
        type=SEED_ARG,
        help="exported models: the test images' seed (default: its run's)",
    )
    ev.add_argument(
        "--work-dir", default=work_dir, help=f"exported models: report folder; {work_help}"
    )
    ev.add_argument(
        "--no-tracking",
        action="store_true",
        help="do not log the results to the run's MLflow runs (logged where it is tracked)",
    )
    mlflow_config(ev)
    ev.set_defaults(func=_cmd_evaluate)

    ex = sub.add_parser("export", help="write a run's model as one safetensors file")
    ex.add_argument("path", help="a run folder (sparling-work/runs/ID) or a checkpoint folder")
    ex.add_argument("--density", type=density_arg, help="the run's checkpoint at this density")
    ex.add_argument("--out", required=True, help="the file to write (.safetensors)")
    ex.add_argument(
        "--force", action="store_true", help="replace the --out file if it exists already"
    )
    ex.add_argument(
        "--no-tracking",
        action="store_true",
        help="do not log the file as the logged model of the run's MLflow runs",
    )
    mlflow_config(ex)
    ex.set_defaults(func=_cmd_export)

    sw = sub.add_parser("sweep", help="run a sweep: methods x seeds x fields, tracked in MLflow")
    sw.add_argument("file", help="a sweep YAML file, or a shipped sweep's name (quickstart, ...)")
    sw.add_argument(
        "--dry-run", action="store_true", help="list the runs (with hashes); run nothing"
    )
    sw.add_argument(
        "--set",
        action="append",
        metavar="K=V",
        help="override a run-config field of every run, e.g. budget_samples=6000 (repeatable; "
        "not a field the sweep varies per run)",
    )
    sw.add_argument(
        "--seeds",
        metavar="SEEDS",
        help="the run seeds, replacing the file's (the sweep's and any method's own): "
        "0-8, 0,2,5 or 0-3,7",
    )
    sw.add_argument(
        "--methods",
        metavar="NAMES",
        help="run only these methods, by name or label, e.g. sparling,l1",
    )
    sw.add_argument("--work-dir", default=work_dir, help=work_help)
    sw.add_argument("--quiet", action="store_true", help="no live progress display")
    sw.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    sw.add_argument("--no-report", action="store_true", help="skip the report at the end")
    sw.add_argument(
        "--rerun",
        metavar="KIND",
        help="train again finished runs of this kind instead of reusing them: changed (those "
        "whose code changed since they finished, by the git commit their MLflow runs record; "
        "the dry run lists them); their folders are kept under <work-dir>/superseded/",
    )
    mlflow_config(sw)
    sw.add_argument(
        "--executor",
        choices=["ray", "local"],
        default="ray",
        help="ray: a Ray Train job per run (default); local: processes on this machine, no Ray",
    )
    sw.add_argument("--parallel", type=whole(1), help="local: runs at once (default 1)")
    sw.add_argument("--threads", type=whole(1), help="local: torch threads per run (default 1)")
    sw.add_argument("--device", help="local: cpu (default), cuda or cuda:N")
    sw.add_argument(
        "--deadline",
        type=positive_number("seconds"),
        help="local: seconds after which running runs stop (keeping their last checkpoint; "
        "they resume when the sweep runs again) and no new run starts",
    )
    sw.add_argument(
        "--seeds-first",
        action="store_true",
        default=None,
        help="local: every method's first seed before any second seed",
    )
    sw.add_argument(
        "--pack",
        metavar="PREFIX",
        help="local: afterwards, pack the run folders (no checkpoints) into PREFIX-<n>.tgz",
    )
    sw.set_defaults(func=_cmd_sweep)

    rep = sub.add_parser("report", help="comparison tables and plots of a sweep, read from MLflow")
    rep.add_argument("sweep", help="the sweep's name or file")
    rep.add_argument("--format", action="append", choices=["md", "csv", "tex"])
    rep.add_argument("--out", help="output folder (default: <work-dir>/reports/<sweep>)")
    rep.add_argument("--work-dir", default=work_dir, help=work_help)
    mlflow_config(rep)
    rep.set_defaults(func=_cmd_report)

    ui = sub.add_parser("ui", help="the MLflow UI on 127.0.0.1")
    ui.add_argument(
        "--port", type=PORT_ARG, help="port (default: a free one, or the running server's)"
    )
    ui.add_argument("--work-dir", default=work_dir, help=work_help)
    mlflow_config(ui)
    ui.set_defaults(func=_cmd_ui)

    demo = sub.add_parser("demo", help="the end-to-end demo: the quickstart sweep and its report")
    demo.add_argument("--work-dir", default=work_dir, help=work_help)
    mlflow_config(demo)
    demo.add_argument(
        "--showcase-samples",
        type=whole(0),
        default=500,
        help="test images to score each committed model on first (0: skip that part)",
    )
    demo.set_defaults(func=_cmd_demo)

    _refuse_empty_paths(parser)
    _refuse_repeats(parser)
    return parser


class _StoreOnce(argparse._StoreAction):
    """A single-value option given twice is refused (argparse keeps the last silently, so
    ``--parallel 2 ... --parallel 8`` would run 8 without a word)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        given: dict[str, Any] = namespace.__dict__.setdefault("_given_once", {})
        if self.dest in given:
            parser.error(
                f"argument {'/'.join(self.option_strings)}: given twice ({given[self.dest]!r}, "
                f"then {values!r}); give it once"
            )
        given[self.dest] = values
        super().__call__(parser, namespace, values, option_string)


def _refuse_repeats(parser: argparse.ArgumentParser) -> None:
    """Make every single-value option of every command a :class:`_StoreOnce`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                _refuse_repeats(sub)
        elif type(action) is argparse._StoreAction and action.option_strings:
            action.__class__ = _StoreOnce


#: the arguments that name a file or folder (every command's)
PATH_ARGS = {"config", "path", "file", "sweep", "work_dir", "out", "to", "mlflow_config", "pack"}


def _refuse_empty_paths(parser: argparse.ArgumentParser) -> None:
    """Give every path argument of every command (:data:`PATH_ARGS`) the type
    :func:`path_arg`, which refuses an empty path."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                _refuse_empty_paths(sub)
        elif action.dest in PATH_ARGS and action.type is None:
            action.type = path_arg


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a message is logged (not when the handler
    was made), so that a redirected stderr gets the messages."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


_LOG_HANDLER = _StderrHandler()


def configure_logging() -> None:
    """Show the project's log messages (INFO and above) on stderr, one plain line each.

    Idempotent: ``main`` calls it on every command.
    """
    for name in ("sparling", "pipelines"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        if _LOG_HANDLER not in logger.handlers:
            logger.addHandler(_LOG_HANDLER)


#: what an interrupted command has kept, where there is more to say than the rest
INTERRUPTED = {
    "": "what was completed is kept (files are written whole or not at all): run the same "
    "command again to go on from there",
    "data": "the shards already written are kept, listed in the dataset's manifest; run the "
    "same command again to write the others",
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging()
    try:
        return int(args.func(args))
    except BrokenPipeError:
        # the reader of the output went away (``sparling sweep --dry-run | head``): stop
        # quietly, as a shell command does, with 128 + SIGPIPE
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (UsageError, SparlingError, ValueError) as e:
        # Errors that name the bad input: show the message, not a traceback.
        print(f"sparling {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C: what was finished is kept (shards, checkpoints, run folders are written
        # whole or not at all), and the same command goes on from there.
        kept = INTERRUPTED.get(args.command, INTERRUPTED[""])
        print(f"sparling {args.command}: interrupted (Ctrl-C); {kept}", file=sys.stderr)
        return 130
    except RuntimeError as e:
        # pathlib (Python < 3.13) reports a loop of symbolic links as a RuntimeError
        loop = str(e).removeprefix("Symlink loop from ")
        if loop == str(e):
            raise
        import errno

        error = OSError(errno.ELOOP, os.strerror(errno.ELOOP), loop.strip("'\""))
        print(f"sparling {args.command}: error: {describe_os_error(error)}", file=sys.stderr)
        return 2
    except OSError as e:
        # A path the system refused (read-only, no permission, a file where a folder is
        # expected, missing): the path and the cause. An OSError naming no path (a
        # connection, a pipe) is no input of the user's and keeps its traceback.
        if e.filename is None and not isinstance(e, (FileNotFoundError, FileExistsError)):
            raise
        print(f"sparling {args.command}: error: {describe_os_error(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
