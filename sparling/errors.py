"""Errors whose message already says what went wrong and what to do.

The command line prints these without a traceback; anything else is a bug and keeps its
traceback. :func:`format_validation_errors` turns what pydantic found wrong into such
messages, one ``path: problem`` per problem.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError


class SparlingError(RuntimeError):
    """Base of the project's user-facing errors."""


def format_validation_errors(
    error: ValidationError,
    *,
    root: str = "<root>",
    union_tags: Collection[str] = (),
    model: type[BaseModel] | None = None,
) -> list[str]:
    """``"path: message"`` for each problem in ``error``, the path written as in the file:
    keys joined by dots, list positions in brackets (``axes[0].values``).

    ``root`` stands for the path of a problem with the object as a whole. ``union_tags``
    are the tags of tagged unions in lists: pydantic puts the tag of the member it tried
    right after the list position, but it is no key of the file, so it is left out.
    ``model``, the class that was validated, lets an unknown key's line say which keys
    are accepted there, and the nearest one (``method``: did you mean ``methods``?).
    """
    lines = []
    for problem in error.errors():
        path = ""
        loc = problem["loc"]
        for i, part in enumerate(loc):
            if part in union_tags and i > 0 and isinstance(loc[i - 1], int):
                continue
            if isinstance(part, int):
                path += f"[{part}]"
            else:
                path += f".{part}" if path else str(part)
        message = problem["msg"]
        if problem["type"] == "extra_forbidden" and model is not None and loc:
            accepted = accepted_keys(model, loc[:-1], union_tags)
            if accepted:
                message = f"unknown key{suggestion(str(loc[-1]), accepted)}; accepted here: "
                message += ", ".join(accepted)
        if problem["type"] == "value_error":
            # a validator's own words: pydantic's "Value error, " prefix says nothing more
            message = message.removeprefix("Value error, ")
            if not path or message.startswith(f"{path}."):
                # the validator of a whole object names its fields itself
                lines.append(message)
                continue
        lines.append(f"{path or root}: {message}")
    return lines


def nearest(key: str, accepted: Sequence[str]) -> str | None:
    """The accepted name closest to a misspelt ``key`` (``difflib``), or None."""
    import difflib

    near = difflib.get_close_matches(key, accepted, n=1, cutoff=0.6)
    return near[0] if near else None


def suggestion(key: str, accepted: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the nearest accepted name, or an empty string."""
    near = nearest(key, accepted)
    return f" (did you mean {near!r}?)" if near else ""


def accepted_keys(
    model: type[BaseModel], loc: Sequence[str | int], union_tags: Collection[str] = ()
) -> list[str]:
    """The keys that the (nested) model at ``loc`` inside ``model`` accepts, in declaration
    order (a field's alias where it has one); empty where ``loc`` leads to no model (a
    free-form mapping, a list of scalars). ``union_tags`` as for
    :func:`format_validation_errors`: such a part right after a list position picks the
    union member that has a field of that name."""
    candidates: list[Any] = [model]
    for i, part in enumerate(loc):
        if part in union_tags and i > 0 and isinstance(loc[i - 1], int):
            tagged = [c for c in candidates if _is_model(c) and part in c.model_fields]
            candidates = tagged or candidates
            continue
        following: list[Any] = []
        for c in candidates:
            if isinstance(part, int):
                following += [a for a in _members(c) if a is not None]
            elif _is_model(c) and part in c.model_fields:
                following += _members(c.model_fields[part].annotation)
            elif _is_model(c):
                continue
            else:  # a union tag, or a key of a mapping: look inside the member types
                following += [m for m in _members(c) if _is_model(m) and m is not c] or [c]
        candidates = [c for c in following if c is not None]
    models = [c for c in candidates for c in _members(c) if _is_model(c)]
    keys: list[str] = []
    for m in models:
        names = [f.alias or k for k, f in m.model_fields.items()]
        keys += [k for k in names if k not in keys]
    return keys


def _is_model(t: Any) -> bool:
    from pydantic import BaseModel

    return isinstance(t, type) and issubclass(t, BaseModel)


def _members(t: Any) -> list[Any]:
    """The types a value of annotation ``t`` may hold: union members, list items, mapping
    values, unwrapped from ``Annotated``; ``t`` itself when it is none of those."""
    import typing

    origin = typing.get_origin(t)
    if origin is None:
        return [t]
    args = typing.get_args(t)
    if origin is typing.Annotated:
        return _members(args[0])
    if origin in (list, tuple, set, frozenset, Sequence):
        return [m for a in args if a is not Ellipsis for m in _members(a)]
    if origin is dict or origin is Mapping:
        return _members(args[1]) if len(args) == 2 else []
    return [m for a in args for m in _members(a)]  # Union, Optional, X | Y


def describe_os_error(error: OSError) -> str:
    """One line for an operating-system error on a path: the path and the cause, e.g.
    ``cannot write /data/out: Read-only file system`` or ``/data/out is a file, where a
    folder is expected``. An error the project raised with a message of its own (no errno)
    is that message."""
    import errno
    import os
    from pathlib import Path

    names = [str(n) for n in (error.filename, error.filename2) if n is not None]
    if error.errno is None or not names:
        return str(error)
    path = names[-1] if error.errno == errno.EISDIR else names[0]
    cause = error.strerror or os.strerror(error.errno)
    code = error.errno
    if code in (errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"cannot write {path}: {cause}"
    if code in (errno.EACCES, errno.EPERM):
        return f"cannot access {path}: {cause}"
    if code == errno.ENOENT:
        if os.path.islink(path):
            return f"{path} is a symbolic link to {os.readlink(path)}, which does not exist"
        return f"no such file or folder: {path}"
    if code == errno.ELOOP:
        loop = next((a for a in (Path(path), *Path(path).parents) if _loops(a)), Path(path))
        return (
            f"{loop} is a loop of symbolic links (they lead to one another, never to a file "
            "or folder)"
        )
    if code == errno.EISDIR:
        folder = next((n for n in names if Path(n).is_dir()), path)
        return f"{folder} is a folder, where a file is expected"
    if code in (errno.EEXIST, errno.ENOTDIR):
        p = Path(path)
        looping = next((a for a in (p, *p.parents) if _loops(a)), None)
        if looping is not None:
            return describe_os_error(OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(looping)))
        blocker = next((a for a in (p, *p.parents) if a.exists() and not a.is_dir()), None)
        if blocker is not None:
            held = "" if blocker == p else f" (to hold {p})"
            return f"{blocker} is a file, where a folder is expected{held}"
        if code == errno.EEXIST:
            return f"{path} already exists"
    return f"{path}: {cause}"


def _loops(path: object) -> bool:
    """Whether ``path`` is a symbolic link that never reaches a file or folder."""
    import errno
    import os

    try:
        os.stat(str(path))
    except OSError as e:
        return os.path.islink(str(path)) and e.errno == errno.ELOOP
    return False


class TrainingFailed(SparlingError):
    """The run stopped on an error it can name (e.g. a non-finite loss)."""
