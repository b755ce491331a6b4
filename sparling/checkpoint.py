"""Self-describing, safely loadable checkpoints.

A checkpoint is a folder holding ``state.pt`` (tensors, numbers, strings, lists and
dicts only, so ``torch.load(weights_only=True)`` loads it without unpickling arbitrary
objects), ``config.json`` (the resolved run config) and ``meta.json`` (samples seen,
density, sha256 of ``state.pt``). The checksum is verified on load: a truncated or
corrupted file is refused with its path instead of being trained on.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import SparlingError

STATE_FILE = "state.pt"
META_FILE = "meta.json"
CONFIG_FILE = "config.json"


class CheckpointError(SparlingError):
    """A checkpoint that is missing, corrupted or of another run."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(
    folder: Path, state: dict[str, Any], meta: dict[str, Any], config_json: str
) -> Path:
    """Write a checkpoint atomically: built in a temp folder, then renamed into place."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        # Serialised in memory, then written by Python: a full disk or a failing device
        # then raises OSError with its errno (torch's own file writer reports only an
        # opaque RuntimeError), and a checkpoint is never half-written in place.
        buffer = io.BytesIO()
        torch.save(state, buffer)
        with open(tmp / STATE_FILE, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        del buffer
        meta = {**meta, "sha256": sha256_file(tmp / STATE_FILE)}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        (tmp / CONFIG_FILE).write_text(config_json)
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def read_meta(folder: Path) -> dict[str, Any]:
    """A checkpoint's ``meta.json``; a :class:`CheckpointError` naming the file when it is
    missing, unreadable or corrupt (not UTF-8, not JSON, not a JSON object)."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise CheckpointError(f"not a checkpoint (no {META_FILE}): {folder}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise CheckpointError(
            f"{path}: corrupt checkpoint metadata, not UTF-8 text ({e.reason} at byte {e.start})"
        ) from None
    except json.JSONDecodeError as e:
        raise CheckpointError(
            f"{path}: corrupt checkpoint metadata, not valid JSON ({e.msg}: line {e.lineno}, "
            f"column {e.colno})"
        ) from None
    except OSError as e:
        raise CheckpointError(f"{path}: unreadable ({e.strerror or e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(
            f"{path}: corrupt checkpoint metadata, a JSON object is expected, got "
            f"{type(meta).__name__}"
        )
    return meta


def load_checkpoint(folder: Path, *, verify: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load ``(state, meta)``; refuses a checkpoint whose checksum does not match."""
    folder = Path(folder)
    meta = read_meta(folder)
    state_path = folder / STATE_FILE
    if not state_path.is_file():
        raise CheckpointError(f"checkpoint has no {STATE_FILE}: {folder}")
    if verify and sha256_file(state_path) != meta.get("sha256"):
        raise CheckpointError(
            f"checkpoint file is corrupted or truncated (sha256 mismatch): {state_path}"
        )
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    return state, meta
