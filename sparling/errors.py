"""Errors whose message already says what went wrong and what to do.

The command line prints these without a traceback; anything else is a bug and keeps its
traceback. :func:`format_validation_errors` turns what pydantic found wrong into such
messages, one ``path: problem`` per problem.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class SparlingError(RuntimeError):
    """Base of the project's user-facing errors."""


def format_validation_errors(
    error: ValidationError, *, root: str = "<root>", union_tags: Collection[str] = ()
) -> list[str]:
    """``"path: message"`` for each problem in ``error``, the path written as in the file:
    keys joined by dots, list positions in brackets (``axes[0].values``).

    ``root`` stands for the path of a problem with the object as a whole. ``union_tags``
    are the tags of tagged unions in lists: pydantic puts the tag of the member it tried
    right after the list position, but it is no key of the file, so it is left out.
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
        lines.append(f"{path or root}: {problem['msg']}")
    return lines


class TrainingFailed(SparlingError):
    """The run stopped on an error it can name (e.g. a non-finite loss)."""
