"""Sweep files: expansion, validation errors naming file and path, dry run."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, SHARED, tiny_config

from pipelines import cli
from pipelines.plan import SweepError, build_sweep, describe, load_sweep


def _sweep(**kw: Any) -> dict[str, Any]:
    return {"name": "t", "base": tiny_config(), **kw}


def test_methods_seeds_and_axes_are_crossed_and_zipped() -> None:
    sweep = build_sweep(
        _sweep(
            methods=["sparling", {"name": "l1", "params": {"coefficient": 2.0}}],
            seeds=[0, 1, 2],
            axes=[
                {"field": "schedule.delta_update", "values": [0.5, 0.9]},
                {
                    "zip": [
                        {"field": "optim.lr", "values": [1e-3, 1e-4]},
                        {"field": "batch_size", "values": [4, 8]},
                    ]
                },
            ],
        )
    )
    assert len(sweep.runs) == 2 * 3 * 2 * 2
    assert len({r.key for r in sweep.runs}) == len(sweep.runs)
    assert sweep.swept_fields == ["schedule.delta_update", "optim.lr", "batch_size"]
    pairs = {(r.config.optim.lr, r.config.batch_size) for r in sweep.runs}
    assert pairs == {(1e-3, 4), (1e-4, 8)}  # zipped, not crossed
    l1 = [r for r in sweep.runs if r.config.bottleneck.name == "l1"]
    assert len(l1) == 12 and all(r.config.bottleneck.params == {"coefficient": 2.0} for r in l1)
    assert l1[0].method == "l1(coefficient=2.0)" and "seed=" in l1[0].name


def test_method_specific_settings_and_labels() -> None:
    sweep = build_sweep(
        _sweep(
            methods=[
                "sparling",
                {
                    "name": "sparling",
                    "label": "no-ast",
                    "params": {"density": 0.01},
                    "set": {"schedule.enabled": False},
                },
            ]
        )
    )
    a, b = sweep.runs
    assert (a.method, b.method) == ("sparling", "no-ast")
    assert a.config.schedule.enabled and not b.config.schedule.enabled
    assert b.config.bottleneck.params["density"] == 0.01


def test_a_method_may_have_its_own_seeds() -> None:
    sweep = build_sweep(_sweep(methods=["sparling", {"name": "l1", "seeds": [4]}], seeds=[0, 1, 2]))
    assert [(r.method, r.seed) for r in sweep.runs] == [
        ("sparling", 0),
        ("sparling", 1),
        ("sparling", 2),
        ("l1", 4),
    ]
    # the same run as when the sweep's seeds give it
    alone = build_sweep(_sweep(methods=[{"name": "l1"}], seeds=[4])).runs[0]
    assert sweep.runs[3].key == alone.key


def test_adding_seeds_keeps_the_old_keys() -> None:
    small = {r.key for r in build_sweep(_sweep(seeds=[0, 1])).runs}
    large = {r.key for r in build_sweep(_sweep(seeds=[0, 1, 2])).runs}
    assert small < large and len(large - small) == 1


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"methods": []}, "methods: List should have at least 1 item"),
        ({"methods": ["sparling", "nope"]}, "methods[1].name: unknown method 'nope'"),
        ({"seeds": ["a"]}, "seeds[0]: Input should be a valid integer"),
        ({"bogus": 1}, "bogus: unknown key; accepted here: name, description, base, set,"),
        ({"method": ["sparling"]}, "method: unknown key (did you mean 'methods'?)"),
        (
            {"methods": [{"name": "sparling", "param": {}}]},
            "methods[0].param: unknown key (did you mean 'params'?); accepted here: name, "
            "params, label, set, seeds, from, density",
        ),
        (
            {"axes": [{"field": "optim.lr", "values": [1e-3], "valus": [1]}]},
            "axes[0].valus: unknown key (did you mean 'values'?); accepted here: field, values",
        ),
        (
            {"axes": [{"field": "schedule.delta", "values": [1]}]},
            "axes[0].field: unknown config field 'schedule.delta'",
        ),
        (
            {"axes": [{"field": "schedule.delta_update", "values": []}]},
            "axes[0].values: List should have at least 1 item",
        ),
        (
            {"axes": [{"field": "schedule.delta_update", "values": [2]}]},
            "schedule.delta_update: Input should be less than 1",
        ),
        ({"axes": [{"field": "seed", "values": [1]}]}, "'seed' has its own key (seeds)"),
        (
            {
                "axes": [
                    {
                        "zip": [
                            {"field": "batch_size", "values": [1]},
                            {"field": "optim.lr", "values": [1, 2]},
                        ]
                    }
                ]
            },
            "axes[0].zip: value lists differ in length",
        ),
        ({"methods": [{"name": "l1", "params": {"coef": 1}}]}, "bottleneck.params for 'l1': coef"),
        ({"set": {"model.overrides.heads": 3}}, "heads (3) must divide d_model"),
        ({"methods": ["sparling", "sparling"]}, "two entries give the same run"),
    ],
)
def test_bad_sweep_files_name_file_and_path(
    patch: dict[str, Any], message: str, tmp_path: Path
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_sweep(**patch)))
    with pytest.raises(SweepError) as info:
        load_sweep(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_shipped_sweeps_validate() -> None:
    files = sorted((REPO / "pipelines" / "sweeps").glob("*.yaml"))
    assert files
    for f in files:
        assert load_sweep(f).runs


def test_dry_run_lists_runs_with_hashes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_sweep(seeds=[0, 1])))
    assert cli.main(["sweep", str(path), "--dry-run", "--work-dir", str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out
    for run in load_sweep(path).runs:
        assert run.key in out and run.name in out
    assert out.count("to run") == 2
    assert cli.main(["sweep", str(tmp_path / "missing.yaml"), "--dry-run"]) == 2
    assert "shipped sweeps: " in capsys.readouterr().err


def test_retrained_runs_take_g_from_their_source_run() -> None:
    sweep = build_sweep(
        _sweep(
            methods=[
                {"name": "retrained", "from": "sparling", "density": 0.01},
                "sparling",
                {"name": "retrained", "from": "l1", "label": "rt-l1"},
                "l1",
            ],
            seeds=[0, 1],
            axes=[{"field": "schedule.delta_update", "values": [0.5, 0.9]}],
        )
    )
    by_key = {r.key: r for r in sweep.runs}
    retrained = [r for r in sweep.runs if r.after]
    plan = describe(sweep)
    assert all(f"(after {r.after})" in plan for r in retrained)
    assert len(sweep.runs) == 16 and len(retrained) == 8
    # sources come first in the plan, so a scheduler can take runs in order
    assert all(sweep.runs.index(by_key[r.after]) < sweep.runs.index(r) for r in retrained)
    for r in retrained:
        src = by_key[r.after]
        assert (src.seed, src.swept) == (r.seed, r.swept)
        assert src.method == ("sparling" if r.method == "retrained(density=0.01)" else "l1")
        assert r.config.bottleneck.name == "non-sparse" and r.config.freeze_motif_model
        suffix = "@density=0.01" if src.method == "sparling" else ""
        assert r.config.init_from == f"run:{src.key}{suffix}"


@pytest.mark.parametrize(
    ("methods", "message"),
    [
        (["sparling", {"name": "retrained"}], "retrained needs 'from'"),
        (["sparling", {"name": "retrained", "from": "l1"}], "no method labelled 'l1'"),
        (
            ["sparling", {"name": "retrained", "from": "sparling", "params": {"a": 1}}],
            "retrained takes no params",
        ),
        ([{"name": "sparling", "from": "l1"}], "'from' and 'density' belong to 'retrained'"),
        (
            ["sparling", {"name": "retrained", "from": "sparling", "density": 2}],
            "density: Input should be less than or equal to 1",
        ),
        (
            [{"name": "sparling", "seeds": [1]}, {"name": "retrained", "from": "sparling"}],
            "seed 0 has no run of 'sparling' to take g from",
        ),
        ([{"name": "sparling", "seeds": []}], "seeds: List should have at least 1 item"),
    ],
)
def test_bad_retrained_methods(methods: list[Any], message: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_sweep(methods=methods)))
    with pytest.raises(SweepError) as info:
        load_sweep(path)
    assert message in str(info.value)


def test_sweeps_over_the_run_limit_are_refused_before_they_are_expanded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    axis = [{"field": f, "values": list(range(1, 10_001))} for f in ("batch_size", "val_interval")]
    huge = _sweep(methods=["sparling", "l1"], seeds=[0, 1, 2], axes=axis)
    start = time.monotonic()
    with pytest.raises(SweepError) as info:
        build_sweep(huge, source="huge.yaml")
    assert time.monotonic() - start < 5  # counted, never expanded (600,000,000 runs)
    message = str(info.value)
    assert "huge.yaml: the sweep plans 600,000,000 runs" in message
    assert "limit of 10,000 runs" in message and "SPARLING_SWEEP_MAX_RUNS" in message
    # a method's own seeds count as its own; a vary axis: the base once, then each value
    # other than the base's (tiny_config's lr is 3e-3)
    at_limit = _sweep(
        methods=["sparling", {"name": "l1", "seeds": [0]}],
        seeds=[0, 1],
        axes=[{"vary": [{"field": "optim.lr", "values": [1e-3, 2e-3, 3e-3, 4e-3]}]}],
    )
    monkeypatch.setenv("SPARLING_SWEEP_MAX_RUNS", "12")  # (2 + 1) seeds x 4 choices
    assert len(build_sweep(at_limit).runs) == 12
    monkeypatch.setenv("SPARLING_SWEEP_MAX_RUNS", "11")
    with pytest.raises(SweepError, match="plans 12 runs .* limit of 11 runs"):
        build_sweep(at_limit)
    monkeypatch.setenv("SPARLING_SWEEP_MAX_RUNS", "0")
    with pytest.raises(SweepError, match="SPARLING_SWEEP_MAX_RUNS must be at least 1, got 0"):
        build_sweep(at_limit)


def test_the_dry_run_checks_the_recordings_folder_as_the_real_run_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run checks its domain before its first step (an audio domain: its recordings
    folder); the dry run makes the same check, so a missing folder is refused there."""
    fsdd = SHARED / "data" / "fsdd"
    if not (fsdd / "recordings").is_dir():
        pytest.skip(f"the FSDD recordings are not at {fsdd}")
    monkeypatch.delenv("SPARLING_AUDIO_ROOT", raising=False)
    base = REPO / "pipelines" / "configs" / "audio-digits-paper.yaml"
    work = tmp_path / "w"
    for root, code in ((fsdd, 0), (tmp_path / "missing", 2), (None, 2)):
        # the paper config's GPU and 4 CPUs would be refused here first (a 2-core machine
        # without a GPU)
        sweep = {"name": "a", "base": str(base), "seeds": [0, 1]}
        sweep["set"] = {"compute.gpus_per_worker": 0, "compute.cpus_per_worker": 1}
        if root is not None:
            sweep["set"]["domain.params.root"] = str(root)
        path = tmp_path / "a.yaml"
        path.write_text(yaml.safe_dump(sweep))
        assert cli.main(["sweep", str(path), "--dry-run", "--work-dir", str(work)]) == code
        out, err = capsys.readouterr()
        if code == 0:
            assert out.count("to run") == 2 and not err
        elif root is not None:
            assert f"audio-digits: folder {root} does not exist; expected either" in err
        else:
            assert "no recordings folder: pass root=DIR or set $SPARLING_AUDIO_ROOT" in err
    assert not work.exists()


# -- the command line's overrides: --set, --seeds, --methods, SPARLING_WORK_DIR -------------

OVERRIDDEN = _sweep(
    set={"optim.lr": 1e-3, "budget_samples": 64},
    methods=[
        "sparling",
        {"name": "l1", "params": {"coefficient": 2.0}, "seeds": [0]},
        {"name": "l1", "label": "l1-strong", "params": {"coefficient": 10.0}},
        {"name": "retrained", "from": "sparling"},
    ],
    seeds=[0, 1],
    axes=[{"field": "schedule.delta_update", "values": [0.5, 0.9]}],
)


def test_overrides_give_the_runs_of_the_equivalent_sweep_file() -> None:
    from pipelines.plan import SweepOverrides

    overrides = SweepOverrides(
        set={"optim.lr": 3e-3, "val_interval": 8}, seeds=[3, 4, 5], methods=["l1", "sparling"]
    )
    sweep = build_sweep(OVERRIDDEN, overrides=overrides)
    # the same file written with those values: the same runs, the same keys
    written = {
        **OVERRIDDEN,
        "set": {"optim.lr": 3e-3, "budget_samples": 64, "val_interval": 8},
        "methods": OVERRIDDEN["methods"][:3],
        "seeds": [3, 4, 5],
    }
    written["methods"][1] = {"name": "l1", "params": {"coefficient": 2.0}}  # its seeds replaced
    assert [r.key for r in sweep.runs] == [r.key for r in build_sweep(written).runs]
    # "l1" names both l1 methods; every method gets the seeds given
    assert {r.method for r in sweep.runs} == {"sparling", "l1(coefficient=2.0)", "l1-strong"}
    assert sorted({r.seed for r in sweep.runs}) == [3, 4, 5] and len(sweep.runs) == 3 * 3 * 2
    assert {(r.config.optim.lr, r.config.val_interval) for r in sweep.runs} == {(3e-3, 8)}
    assert sweep.overrides.describe() == {
        "set": {"optim.lr": 3e-3, "val_interval": 8},
        "seeds": [3, 4, 5],
        "methods": ["l1", "sparling"],
    }
    # by label, and a retrained method with its source
    labelled = build_sweep(OVERRIDDEN, overrides=SweepOverrides(methods=["l1-strong"]))
    assert {r.method for r in labelled.runs} == {"l1-strong"}
    with_source = SweepOverrides(methods=["retrained", "sparling"])
    assert {r.method for r in build_sweep(OVERRIDDEN, overrides=with_source).runs} == {
        "sparling",
        "retrained",
    }


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"methods": ["sparlin"]}, "--methods: no method 'sparlin' in <dict> (did you mean"),
        (
            {"methods": ["topk"]},
            "accepted: sparling, l1, retrained, l1(coefficient=2.0), l1-strong",
        ),
        ({"methods": ["retrained"]}, "retrained takes g from 'sparling', which is not selected"),
        ({"set": {"optim.lrr": 1}}, "--set: optim.lrr: unknown config field 'optim.lrr' (did"),
        ({"set": {"schedule.delta_update": 0.7}}, "varies it per run (the axes vary it)"),
        ({"set": {"seed": 3}}, "--set seed: a sweep gives each run its seed; use --seeds"),
        ({"set": {"bottleneck.params.coefficient": 3}}, "choose methods with --methods"),
        ({"set": {"optim.lr": -1.0}}, "optim.lr"),  # the run config refuses it
    ],
)
def test_bad_overrides_name_what_is_accepted(overrides: dict[str, Any], message: str) -> None:
    from pipelines.plan import SweepOverrides

    with pytest.raises(SweepError) as info:
        build_sweep(OVERRIDDEN, overrides=SweepOverrides(**overrides))
    assert message in str(info.value)


def test_seeds_accept_ranges_and_comma_lists() -> None:
    assert cli.parse_seeds("0-8") == list(range(9))
    assert cli.parse_seeds("7") == [7]
    assert cli.parse_seeds("0,2, 5-7") == [0, 2, 5, 6, 7]
    assert cli.parse_seeds(None) is None
    for bad, message in [
        ("3-1", "the range 3-1 goes down; write 1-3"),
        ("0-3,2", "seed 2 is given twice"),
        ("a", "--seeds expects seeds as N, N-M or a comma list"),
        ("1,,2", "--seeds expects"),
        ("-1", "--seeds expects"),
        ("0-99999999", "names more than 10,000 seeds"),
    ]:
        with pytest.raises(cli.UsageError, match=re.escape(message)):
            cli.parse_seeds(bad)
    assert cli.parse_methods("sparling, l1") == ["sparling", "l1"]
    with pytest.raises(cli.UsageError, match="l1 given twice"):
        cli.parse_methods("l1,sparling,l1")


def test_the_work_dir_comes_from_the_environment_unless_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_sweep(seeds=[0, 1])))
    first = load_sweep(path).runs[0]
    env_dir, flag_dir = tmp_path / "from-env", tmp_path / "from-flag"
    folder = env_dir / "runs" / first.key  # a finished run there (result and evaluation)
    folder.mkdir(parents=True)
    (folder / "result.json").write_text('{"status": "budget-exhausted", "samples": 48}')
    (folder / "evaluation.json").write_text('{"test_ce": 0.1}')
    monkeypatch.setenv("SPARLING_WORK_DIR", str(env_dir))
    assert cli.main(["sweep", str(path), "--dry-run"]) == 0
    assert f"{first.key}  {first.name}  done" in capsys.readouterr().out
    assert cli.main(["sweep", str(path), "--dry-run", "--work-dir", str(flag_dir)]) == 0
    assert capsys.readouterr().out.count("to run") == 2  # the flag wins
    monkeypatch.setenv("SPARLING_WORK_DIR", "")
    assert cli.default_work_dir() == "sparling-work"
    assert not flag_dir.exists()  # a dry run writes nothing
