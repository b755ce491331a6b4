"""The plan: a sweep file (a base run config crossed with methods, seeds and any config
field), validated and expanded into planned runs (:class:`PlannedRun`), one per run.

A sweep file is YAML::

    name: quickstart                  # names the sweep (its MLflow parent run)
    base: ../configs/digit-circle-fast.yaml   # a run config file (relative to this file)
    set:                              # dotted overrides of the base
      budget_samples: 6000
    methods:                          # bottleneck names, or mappings with params
      - sparling
      - {name: l1, params: {coefficient: 1.0}, seeds: [0]}   # its own seeds
      - {name: retrained, from: sparling, density: 5.0e-5}  # g of the sparling run
                                      # (same seed and swept values), frozen; h retrained
      - {name: sparling, label: no-ast-1.5x, params: {density: 6.7e-5},
         set: {schedule.enabled: false}}
    seeds: [0, 1]
    axes:                             # crossed with each other, the methods and the seeds
      - {field: schedule.delta_update, values: [0.5, 0.75, 0.9]}
      - zip:                          # these advance together
          - {field: schedule.threshold_decay, values: [1.0e-7, 1.0e-6]}
          - {field: val_interval, values: [2000, 4000]}
      - vary:                         # one at a time around the base (sensitivity)
          - {field: bottleneck.params.momentum, values: [0.05, 0.1, 0.2]}
          - {field: schedule.delta_update, values: [0.5, 0.75, 0.9]}

The whole file is validated before anything runs: an unknown key, a wrong type, an empty
axis or a value the run config refuses is reported with the file, the path in the file
and what is accepted.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from sparling.bottlenecks import bottleneck_names
from sparling.config import RunConfig, flatten, load_config, set_path
from sparling.domains.base import canonical_hash
from sparling.errors import SparlingError, format_validation_errors, nearest
from sparling.fileio import YAMLLoadError, env_limit, load_yaml_mapping


class SweepError(SparlingError, ValueError):
    """A sweep file that cannot run; the message names the file and the place in it."""


#: The most runs a sweep may plan; ``SPARLING_SWEEP_MAX_RUNS`` raises it. Expanding a
#: sweep takes about 0.2 ms a run, so a sweep at the limit is listed in a few seconds;
#: one axis of 650,000 values would keep the command silent for minutes.
MAX_SWEEP_RUNS = 10_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


RETRAINED = "retrained"
"""The Retrained method: g frozen from another method's run, bottleneck removed, h retrained."""


class MethodSpec(_Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str
    """A bottleneck name from the registry, or ``retrained``."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Its parameters."""
    label: str | None = None
    """How tables and MLflow name this method (default: name plus params)."""
    set: dict[str, Any] = Field(default_factory=dict)
    """Further dotted config overrides that belong to this method (e.g. schedule.enabled)."""
    seeds: list[int] | None = Field(None, min_length=1)
    """This method's run seeds (default: the sweep's), e.g. one seed for a baseline."""

    from_: str | None = Field(None, alias="from")
    """``retrained`` only: the method (its label) whose run, with the same seed and swept
    values, gives g. That run trains first."""
    density: float | None = Field(None, gt=0.0, le=1.0)
    """``retrained`` only: take g at the lowest density >= this that the run kept
    (default: the domain's reported density if the run got there, else its lowest)."""

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in bottleneck_names() and v != RETRAINED:
            accepted = ", ".join([*bottleneck_names(), RETRAINED])
            raise ValueError(f"unknown method {v!r}; accepted: {accepted}")
        return v

    @model_validator(mode="after")
    def _retrained_fields(self) -> MethodSpec:
        if self.name == RETRAINED:
            if not self.from_:
                raise ValueError("retrained needs 'from': the label of the method whose g it takes")
            if self.params:
                raise ValueError("retrained takes no params (its bottleneck is removed)")
        elif self.from_ is not None or self.density is not None:
            raise ValueError(
                f"'from' and 'density' belong to {RETRAINED!r} methods, not {self.name!r}"
            )
        return self

    def display(self) -> str:
        if self.label:
            return self.label
        if self.name == RETRAINED:
            parts = [] if self.from_ == "sparling" else [f"from={self.from_}"]
            parts += [] if self.density is None else [f"density={self.density:g}"]
            return f"{RETRAINED}({','.join(parts)})" if parts else RETRAINED
        if not self.params:
            return self.name
        inner = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.name}({inner})"


class FieldAxis(_Strict):
    field: str
    """A dotted run-config path, e.g. ``schedule.delta_update``."""
    values: list[Any] = Field(min_length=1)
    """The values it takes (at least one)."""


class ZipAxis(_Strict):
    zip: list[FieldAxis] = Field(min_length=2)
    """Fields whose values advance together (equal lengths)."""


def _axis_kind(v: Any) -> str:
    """``zip``/``vary`` keys mark groups; anything else is a single field."""
    for kind, cls in (("zip", ZipAxis), ("vary", VaryAxis)):
        if isinstance(v, cls) or (isinstance(v, dict) and kind in v):
            return kind
    return "field"


class VaryAxis(_Strict):
    vary: list[FieldAxis] = Field(min_length=1)
    """Fields varied one at a time around the base (the others keep their base values):
    a sensitivity study. The base configuration itself is one of the choices."""


class SweepSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    """The sweep's name (letters, digits, ``._-``)."""
    description: str = ""
    base: str | dict[str, Any] = Field(default_factory=dict)
    """A run config file (relative to the sweep file) or an inline run config."""
    set: dict[str, Any] = Field(default_factory=dict)
    """Dotted overrides of the base, applied to every run."""
    methods: list[MethodSpec] = Field(
        default_factory=lambda: [MethodSpec(name="sparling")], min_length=1
    )
    """The methods (bottlenecks) to compare: names, or mappings with params/label/set."""
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    """Run seeds."""
    axes: list[
        Annotated[
            Annotated[FieldAxis, Tag("field")]
            | Annotated[ZipAxis, Tag("zip")]
            | Annotated[VaryAxis, Tag("vary")],
            Discriminator(_axis_kind),
        ]
    ] = Field(default_factory=list)
    """Further axes, crossed with each other, the methods and the seeds."""

    @field_validator("methods", mode="before")
    @classmethod
    def _names_to_specs(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"name": m} if isinstance(m, str) else m for m in v]
        return v


@dataclass(frozen=True)
class SweepOverrides:
    """What the command line changes in a sweep file (``sparling sweep FILE --set ...
    --seeds ... --methods ...``), applied before the sweep is expanded."""

    set: dict[str, Any] = field(default_factory=dict)
    """Dotted run-config overrides for every run (after the file's ``set``, which they
    replace key by key); a field the sweep varies or a method sets is refused."""
    seeds: list[int] | None = None
    """The run seeds of every method, replacing the file's (the sweep's and a method's own)."""
    methods: list[str] | None = None
    """The methods to run, by name (``l1``: every l1 method) or label (``l1(coefficient=2.0)``,
    a ``label:``); the others are left out."""

    def describe(self) -> dict[str, Any]:
        """The overrides given, as plain data (for the plan); empty when none were."""
        out: dict[str, Any] = {}
        if self.set:
            out["set"] = dict(self.set)
        if self.seeds is not None:
            out["seeds"] = list(self.seeds)
        if self.methods is not None:
            out["methods"] = list(self.methods)
        return out


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: its config and how tables label it."""

    config: RunConfig
    method: str
    seed: int
    swept: dict[str, Any] = field(default_factory=dict)
    after: str | None = None
    """Key of the run that must finish first (a Retrained run's source of g)."""

    @property
    def key(self) -> str:
        return self.config.run_id()

    @property
    def name(self) -> str:
        extra = " ".join(f"{k.split('.')[-1]}={v}" for k, v in self.swept.items())
        return " ".join(x for x in (self.method, f"seed={self.seed}", extra) if x)


@dataclass
class Sweep:
    spec: SweepSpec
    source: str
    runs: list[PlannedRun]
    overrides: SweepOverrides = field(default_factory=SweepOverrides)
    """What the command line changed in the file (already applied to ``spec`` and ``runs``)."""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def swept_fields(self) -> list[str]:
        out: list[str] = []
        for axis in self.spec.axes:
            out += [m.field for m in _members(axis)]
        return out

    def fingerprint(self) -> str:
        return canonical_hash(sorted(r.key for r in self.runs))[:16]


def _check_field(path: str, source: str, where: str) -> None:
    """An axis or override must name an existing run-config field."""
    probe = RunConfig().model_dump(mode="json")
    parts = path.split(".")
    node: Any = probe
    for i, p in enumerate(parts):
        # free-form sections (params dicts, model overrides) accept any key below them
        if (
            isinstance(node, dict)
            and p not in node
            and i > 0
            and parts[i - 1]
            in (
                "params",
                "overrides",
            )
        ):
            return
        if not isinstance(node, dict) or p not in node:
            accepted = ", ".join(sorted(node)) if isinstance(node, dict) else "(none: a value)"
            near = nearest(p, sorted(node)) if isinstance(node, dict) else None
            hint = f" (did you mean {near!r}?)" if near else ""
            raise SweepError(
                f"{source}: {where}: unknown config field {'.'.join(parts[: i + 1])!r}{hint}; "
                f"accepted here: {accepted}"
            )
        node = node[p]
        if node is None and i < len(parts) - 1:
            return


def _members(axis: FieldAxis | ZipAxis | VaryAxis) -> list[FieldAxis]:
    if isinstance(axis, ZipAxis):
        return axis.zip
    if isinstance(axis, VaryAxis):
        return axis.vary
    return [axis]


def _kind(axis: FieldAxis | ZipAxis | VaryAxis) -> str:
    return "zip" if isinstance(axis, ZipAxis) else "vary" if isinstance(axis, VaryAxis) else "field"


#: a line of a run config, for the messages about a sweep's ``base`` file
_BASE_EXAMPLE = "domain: {name: digit-circle}"


def load_sweep(path: str | Path, overrides: SweepOverrides | None = None) -> Sweep:
    """Read, validate and expand a sweep file (with the command line's ``overrides``);
    raises :class:`SweepError` naming the problem."""
    path = Path(path)
    try:
        data = load_yaml_mapping(
            path,
            "a sweep",
            kind="sweep file",
            example="name: my-sweep",
            error=SweepError,
            defaults=False,
        )
    except YAMLLoadError as e:
        raise SweepError(str(e)) from None
    return build_sweep(data, source=str(path), base_dir=path.parent, overrides=overrides)


def _apply_overrides(spec: SweepSpec, overrides: SweepOverrides, source: str) -> None:
    """Apply the command line's overrides to a validated sweep file; refuse what they
    cannot mean (an unknown field or method, a field the file varies per run)."""
    if overrides.methods is not None:
        labels = [m.display() for m in spec.methods]
        accepted = list(dict.fromkeys([*(m.name for m in spec.methods), *labels]))
        for name in overrides.methods:
            if name not in accepted:
                near = nearest(name, accepted)
                hint = f" (did you mean {near!r}?)" if near else ""
                raise SweepError(
                    f"--methods: no method {name!r} in {source}{hint}; accepted: "
                    f"{', '.join(accepted)}"
                )
        chosen = [
            m
            for m in spec.methods
            if m.name in overrides.methods or m.display() in overrides.methods
        ]
        for m in chosen:
            if m.name == RETRAINED and str(m.from_) not in {c.display() for c in chosen}:
                raise SweepError(
                    f"--methods: {m.display()} takes g from {m.from_!r}, which is not selected; "
                    f"add {m.from_!r} to --methods"
                )
        spec.methods = chosen
    if overrides.seeds is not None:
        spec.seeds = list(overrides.seeds)
        for m in spec.methods:
            m.seeds = None
    varied = {member.field: "the axes vary it" for a in spec.axes for member in _members(a)}
    for m in spec.methods:
        varied.update({k: f"method {m.display()} sets it" for k in m.set})
    for key, value in overrides.set.items():
        if key == "seed":
            raise SweepError("--set seed: a sweep gives each run its seed; use --seeds")
        if key == "bottleneck" or key.startswith("bottleneck."):
            raise SweepError(
                f"--set {key}: a sweep gives each run its method's bottleneck; choose methods "
                "with --methods, or give their params in the sweep file"
            )
        _check_field(key, "--set", key)
        if key in varied:
            raise SweepError(
                f"--set {key}: {source} varies it per run ({varied[key]}); change it there"
            )
        spec.set[key] = value


def build_sweep(
    data: dict[str, Any],
    *,
    source: str = "<dict>",
    base_dir: Path = Path("."),
    overrides: SweepOverrides | None = None,
) -> Sweep:
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as e:
        lines = [f"{source}: invalid sweep:"]
        # the axes' tags (field, zip, vary) are no keys of the file
        problems = format_validation_errors(
            e, root="<top>", union_tags=("field", "zip", "vary"), model=SweepSpec
        )
        lines += [f"  {problem}" for problem in problems]
        raise SweepError("\n".join(lines)) from None
    overrides = overrides or SweepOverrides()
    _apply_overrides(spec, overrides, source)

    if isinstance(spec.base, str):
        base_path = base_dir / spec.base
        with contextlib.suppress(RuntimeError):  # a loop of links: said below
            base_path = base_path.resolve()
        try:
            base = load_yaml_mapping(
                base_path, "a run config", kind="run config file", example=_BASE_EXAMPLE
            )
        except YAMLLoadError as e:
            raise SweepError(f"{source}: base: {e}") from None
        if "methods" in base or "base" in base:
            raise SweepError(
                f"{source}: base: {base_path} is a sweep (it has "
                f"{'methods' if 'methods' in base else 'base'}:), not a run config; a sweep's "
                "base is a run config such as pipelines/configs/digit-circle-fast.yaml"
            )
        base_source = str(base_path)
    else:
        base, base_source = dict(spec.base), f"{source}: base"
    try:
        base_config = load_config(base, source=base_source)
    except ValueError as e:
        raise SweepError(str(e)) from None

    for key in spec.set:
        _check_field(key, source, f"set.{key}")
    for i, axis in enumerate(spec.axes):
        for j, member in enumerate(_members(axis)):
            where = f"axes[{i}]" + ("" if isinstance(axis, FieldAxis) else f".{_kind(axis)}[{j}]")
            _check_field(member.field, source, f"{where}.field")
            if member.field in ("seed", "bottleneck.name"):
                raise SweepError(
                    f"{source}: {where}.field: {member.field!r} has its own key "
                    f"({'seeds' if member.field == 'seed' else 'methods'})"
                )
        if isinstance(axis, ZipAxis) and len({len(m.values) for m in axis.zip}) != 1:
            lengths = [len(m.values) for m in axis.zip]
            raise SweepError(f"{source}: axes[{i}].zip: value lists differ in length {lengths}")

    methods = spec.methods
    for i, m in enumerate(methods):
        for key in m.set:
            _check_field(key, source, f"methods[{i}].set.{key}")

    base_dict = base_config.model_dump(mode="json")
    for key, value in spec.set.items():
        set_path(base_dict, key, value)
    base_flat = flatten(base_dict)

    axis_choices: list[list[dict[str, Any]]] = []
    for axis in spec.axes:
        if isinstance(axis, ZipAxis):
            axis_choices.append(
                [{m.field: m.values[k] for m in axis.zip} for k in range(len(axis.zip[0].values))]
            )
        elif isinstance(axis, VaryAxis):
            # One at a time around the base: the base once, then each other value alone.
            choices: list[dict[str, Any]] = [{}]
            for member in axis.vary:
                choices += [
                    {member.field: v} for v in member.values if v != base_flat.get(member.field)
                ]
            axis_choices.append(choices)
        else:
            axis_choices.append([{axis.field: v} for v in axis.values])

    labels = [m.display() for m in methods]
    for i, m in enumerate(methods):
        if m.name == RETRAINED:
            sources = [lab for lab, mm in zip(labels, methods, strict=True) if mm.name != RETRAINED]
            if m.from_ not in sources:
                raise SweepError(
                    f"{source}: methods[{i}].from: no method labelled {m.from_!r} in this sweep "
                    f"to take g from; accepted: {', '.join(sources) or '(none)'}"
                )
            if sources.count(str(m.from_)) > 1:
                raise SweepError(
                    f"{source}: methods[{i}].from: {m.from_!r} labels several methods; "
                    "give them distinct labels"
                )

    # counted before anything is expanded: the product of the axes can be astronomical
    per_seed = math.prod(len(choices) for choices in axis_choices)
    count = sum(len(m.seeds if m.seeds is not None else spec.seeds) for m in methods) * per_seed
    max_runs = env_limit("SPARLING_SWEEP_MAX_RUNS", MAX_SWEEP_RUNS, error=SweepError)
    if count > max_runs:
        raise SweepError(
            f"{source}: the sweep plans {count:,} runs (methods x seeds x axes), over the "
            f"limit of {max_runs:,} runs; refusing to expand it (set SPARLING_SWEEP_MAX_RUNS "
            "to raise the limit)"
        )

    runs: list[PlannedRun] = []
    seen: dict[str, str] = {}
    source_keys: dict[tuple[str, int, int], str] = {}  # (label, combo, seed) -> run key
    # Retrained methods last: they refer to the runs of the methods they take g from.
    order = sorted(enumerate(methods), key=lambda im: im[1].name == RETRAINED)
    planned = [
        (mi, method, ci, combo, seed)
        for mi, method in order
        for ci, combo in enumerate(itertools.product(*axis_choices))
        for seed in (method.seeds if method.seeds is not None else spec.seeds)
    ]
    for mi, method, ci, combo, seed in planned:
        d = json.loads(json.dumps(base_dict))
        after: str | None = None
        if method.name == RETRAINED:
            if (str(method.from_), ci, seed) not in source_keys:
                raise SweepError(
                    f"{source}: methods[{mi}] {method.display()}: seed {seed} has no run of "
                    f"{method.from_!r} to take g from; give both methods the same seeds"
                )
            after = source_keys[(str(method.from_), ci, seed)]
            ref = f"run:{after}" + (
                "" if method.density is None else f"@density={method.density!r}"
            )
            d["bottleneck"] = {"name": "non-sparse", "params": {}}
            d["init_from"] = ref
            d["freeze_motif_model"] = True
        else:
            d["bottleneck"] = {"name": method.name, "params": dict(method.params)}
        for key, value in method.set.items():
            set_path(d, key, value)
        swept: dict[str, Any] = {}
        for choice in combo:
            for key, value in choice.items():
                set_path(d, key, value)
                swept[key] = value
        d["seed"] = seed
        where = f"methods[{mi}] {method.display()}, seed {seed}" + "".join(
            f", {k}={v}" for k, v in swept.items()
        )
        try:
            config = load_config(d, source=f"{source}: {where}")
        except ValueError as e:
            raise SweepError(str(e)) from None
        run = PlannedRun(config, method.display(), seed, swept, after)
        source_keys[(method.display(), ci, seed)] = run.key
        if run.key in seen:
            raise SweepError(
                f"{source}: two entries give the same run ({seen[run.key]} and {run.name}); "
                "give them different settings or remove one"
            )
        seen[run.key] = run.name
        runs.append(run)
    return Sweep(spec, source, runs, overrides)


def plan_document(sweep: Sweep) -> dict[str, Any]:
    """The resolved plan as plain JSON data: the sweep's name, file, fingerprint and swept
    fields, and each run's key, name, method, seed, swept values, ``after`` and resolved
    config (what the sweep's MLflow parent keeps as ``sweep/plan.json``)."""
    return {
        "name": sweep.name,
        "source": sweep.source,
        "fingerprint": sweep.fingerprint(),
        "swept_fields": sweep.swept_fields,
        "overrides": sweep.overrides.describe(),
        "runs": [
            {
                "key": r.key,
                "name": r.name,
                "method": r.method,
                "seed": r.seed,
                "swept": r.swept,
                "after": r.after,
                "config": r.config.model_dump(mode="json"),
            }
            for r in sweep.runs
        ],
    }


def describe(
    sweep: Sweep,
    done: set[str] | None = None,
    changed: Mapping[str, str] | None = None,
    rerun: Collection[str] = (),
    continues: Mapping[str, str] | None = None,
    to_evaluate: Collection[str] = (),
) -> str:
    """The plan as a table: one line per run with its hash and whether it already finished;
    ``changed``: finished runs whose code changed since (key -> how), said on their line,
    and reused unless in ``rerun`` (then trained again); ``continues``: runs to train that
    start from a shorter-budget run's checkpoint (key -> from where); ``to_evaluate``:
    runs trained whose test evaluation is missing (they are only evaluated)."""
    done = done or set()
    changed = changed or {}
    continues = continues or {}
    lines = [f"sweep {sweep.name!r}: {len(sweep.runs)} runs ({sweep.source})"]
    width = max(len(r.name) for r in sweep.runs)
    for r in sweep.runs:
        if r.key in rerun:
            state = f"to rerun: code changed ({changed.get(r.key, '?')})"
        elif r.key in changed and r.key in done:
            state = f"done, code changed since ({changed[r.key]})"
        else:
            state = "done" if r.key in done else "to run"
            if r.key not in done and r.key in to_evaluate:
                state = "trained, to evaluate"
            elif r.key not in done and r.key in continues:
                state += f", {continues[r.key]}"
        after = f"  (after {r.after})" if r.after else ""
        lines.append(f"  {r.key}  {r.name:<{width}}  {state}{after}")
    reused = [k for k in changed if k in done and k not in rerun]
    if reused:
        lines.append(
            f"{len(reused)} finished run(s) trained by code that has changed since are reused; "
            "--rerun changed trains them again"
        )
    return "\n".join(lines)


__all__ = [
    "MAX_SWEEP_RUNS",
    "FieldAxis",
    "MethodSpec",
    "PlannedRun",
    "RETRAINED",
    "Sweep",
    "SweepError",
    "SweepOverrides",
    "SweepSpec",
    "VaryAxis",
    "ZipAxis",
    "build_sweep",
    "describe",
    "flatten",
    "load_sweep",
    "plan_document",
]
