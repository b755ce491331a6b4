"""Trained models as single safetensors files that anyone can load and re-check.

``export_model`` writes a checkpoint's weights (and the sparsity layer's thresholds and
batch-norm statistics) in the safetensors format, with the resolved run config, the
density and the training sample count in the file's metadata, and the architecture
written out field by field (so that a later change to the preset the config names does
not change what the file builds). ``load_model`` rebuilds the model from that file
alone, in eval mode, at the density it was saved at::

    import sparling
    model = sparling.load_model("results/models/digit-circle/sparling-seed0.safetensors")
    acts = model.motifs(images)  # (N, C, H, W): the surviving activations

safetensors (rather than a pickle) so that loading a file runs no code from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import domains
from .config import RunConfig, load_config
from .devices import resolve_device
from .errors import SparlingError
from .fileio import atomic_write, check_writable, why_missing
from .models import SparlingModel
from .runs import architecture_overrides, build_run_model, load_weights, select_checkpoint

if TYPE_CHECKING:
    from .domains import Domain
    from .evaluate import Evaluation

#: the metadata key naming this file layout (bumped if it ever changes)
FORMAT = "sparling-model/1"
_EXTRA = "_extra_state"
#: what to do about an exported model whose weights do not fit (:func:`load_model`)
_EXPORT_MISFIT_HINT = (
    "the file was exported for another definition of the model preset (files exported "
    "before the architecture was recorded in their metadata name only the preset), or it "
    "was changed since: load it with the code that exported it, or export it again"
)


class ExportError(SparlingError, ValueError):
    """The file is not a Sparling model export (or is damaged); the message says which."""


def _split_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors for the file, and the modules' extra states (their tensors stored beside,
    under ``<key>/<field>``, their plain values in the metadata)."""
    tensors: dict[str, torch.Tensor] = {}
    extra: dict[str, Any] = {}
    for key, value in state.items():
        if key.endswith(_EXTRA):
            if not isinstance(value, dict):
                raise ExportError(f"extra state {key!r} is not a dict: {type(value).__name__}")
            plain = {}
            for field, item in value.items():
                if isinstance(item, torch.Tensor):
                    tensors[f"{key}/{field}"] = item.detach().cpu().contiguous()
                    plain[field] = {"tensor": f"{key}/{field}"}
                else:
                    plain[field] = item
            extra[key] = plain
        else:
            tensors[key] = value.detach().cpu().contiguous()
    return tensors, extra


def _join_state(tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, Any] = {k: v for k, v in tensors.items() if "/" not in k}
    for key, fields in extra.items():
        state[key] = {
            f: tensors[v["tensor"]] if isinstance(v, dict) and "tensor" in v else v
            for f, v in fields.items()
        }
    return state


def export_model(
    path: str | Path, out: str | Path, *, density: float | None = None
) -> dict[str, str]:
    """Write the checkpoint ``path`` names (a run folder, chosen as ``sparling evaluate``
    chooses, or a checkpoint folder) to the safetensors file ``out``; returns its metadata."""
    from safetensors.torch import save_file

    from .evaluate import load_model as load_checkpoint_model

    check_writable(out, folder=False)  # a read-only folder, a folder at out: said first
    checkpoint = select_checkpoint(Path(path), density)
    model, config, meta = load_checkpoint_model(checkpoint)
    tensors, extra = _split_state(model.state_dict())
    metadata = {
        "format": FORMAT,
        "config": config.to_json(),
        "run_id": config.run_id(),
        "density": repr(float(meta["density"])),
        "samples": str(int(meta["samples"])),
        "checkpoint": checkpoint.name,
        "extra_state": json.dumps(extra, sort_keys=True),
        "architecture": json.dumps(
            meta.get("architecture") or architecture_overrides(config), sort_keys=True
        ),
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # atomic: a failed export leaves no half-written file
    atomic_write(out, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return metadata


def read_export_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of an exported model (no weights are read)."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        raise ExportError(f"{path} is a folder; an exported model is a .safetensors file")
    if not path.is_file():
        raise FileNotFoundError(why_missing(path, "model file"))
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for damaged headers
        raise ExportError(f"{path} is not a readable safetensors file: {e}") from None
    if metadata.get("format") != FORMAT:
        raise ExportError(
            f"{path} is not a Sparling model export (metadata format "
            f"{metadata.get('format')!r}; expected {FORMAT!r}); write one with `sparling export`"
        )
    return metadata


def load_model(path: str | Path, device: torch.device | str = "cpu") -> SparlingModel:
    """The exported model in ``path``, in eval mode, on ``device``.

    The run config is at ``model.run_config``, the file's metadata (density, samples,
    run id) at ``model.export_metadata``.
    """
    from safetensors.torch import load_file

    metadata = read_export_metadata(path)
    config: RunConfig = load_config(json.loads(metadata["config"]), source=str(path))
    domain = domains.make(config.domain.name, **config.domain.params)
    # older files name only the preset
    pinned = json.loads(metadata["architecture"]) if "architecture" in metadata else None
    model = build_run_model(
        config.model_copy(update={"init_from": None}), domain, architecture=pinned
    )
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors' own error types, for a file cut short after its header
        raise ExportError(f"{path} is not a readable safetensors file: {e}") from None
    state = _join_state(tensors, json.loads(metadata["extra_state"]))
    load_weights(model, state, path, hint=_EXPORT_MISFIT_HINT, error=ExportError)
    bottleneck: Any = model.bottleneck
    if getattr(bottleneck, "adaptive", False):
        bottleneck.set_density(float(metadata["density"]))
    model.to(resolve_device(device))
    model.eval()
    model.run_config = config
    model.export_metadata = metadata
    return model


def evaluate_export(
    path: str | Path,
    *,
    samples: int | None = None,
    data_seed: int | None = None,
    device: torch.device | str = "cpu",
) -> tuple[SparlingModel, Domain, Evaluation]:
    """Score the exported model in ``path`` on ``samples`` test images generated now (the
    test split of its run's data seed, or ``data_seed``; by default its run's test size).
    Returns the model, the test domain and the evaluation, whose metrics also hold the
    file's ``checkpoint_density`` and ``checkpoint_samples``."""
    from .evaluate import evaluate_model
    from .scoring import GeneratedSamples

    model = load_model(path, device=device)
    config = model.run_config
    assert config is not None  # load_model sets it
    seed = config.data.seed if data_seed is None else data_seed
    domain = domains.make(config.domain.name, split="test", **config.domain.params)
    test = GeneratedSamples(domain, seed, config.data.test_size if samples is None else samples)
    result = evaluate_model(
        model, domain, test, max_len=config.max_output_len, checkpoint=Path(path)
    )
    result.metrics["checkpoint_density"] = float(model.export_metadata["density"])
    result.metrics["checkpoint_samples"] = float(model.export_metadata["samples"])
    return model, domain, result
