"""File-system pieces shared by the library and the pipelines.

* Atomic writes (:func:`atomic_write_bytes`, :func:`atomic_write_text`,
  :func:`atomic_write_json`, and :func:`atomic_write` for writers that want a path): the
  content goes to a temp file in the target's folder, which then replaces the target in
  one ``os.replace``. A reader sees the old file or the new one, never half of one; a
  failed write leaves the old file and no temp file behind. With ``fsync=True`` the data
  and the rename are flushed to disk before returning (for files that must survive a
  power cut, such as dataset shards and manifests).
* :func:`file_lock`: an exclusive lock between processes (``flock`` on POSIX, through
  the ``filelock`` package), released when its holder exits, however it exits.
* :func:`load_yaml`: safe YAML loading whose errors name the file (or the option the
  text came from), the line and the column; :func:`load_yaml_mapping` for the files that
  must hold a mapping (run configs, sweeps, MLflow settings), refusing a folder, a missing
  file, an empty file and a list or a scalar in one way for all of them.
* :func:`why_missing`: why a path names no file, in words (absent, a link to nothing, a
  loop of symbolic links).

No Ray, no MLflow, no torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import SparlingError

__all__ = [
    "TMP_MARK",
    "LockTimeout",
    "YAMLLoadError",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_writable",
    "env_limit",
    "file_lock",
    "fsync_dir",
    "load_yaml",
    "load_yaml_mapping",
    "why_missing",
]

TMP_MARK = ".tmp."
"""Temp files of the atomic writes are named ``<name>.tmp.<pid>.<random>``: unique per
writer, and never ending in the target's suffix, so readers that glob ``*.parquet`` or
``*.json`` never pick one up."""


# -- atomic writes ------------------------------------------------------------------------------
def atomic_write(path: str | Path, write: Callable[[Path], object], *, fsync: bool = False) -> Path:
    """Run ``write(tmp)`` to fill a temp file beside ``path``, then move it onto ``path``.

    For writers that take a file name (Parquet, safetensors). ``fsync=True`` flushes the
    file and then the folder entry to disk. Returns ``path``. An ``OSError`` of the write
    (a read-only folder, a full disk, a folder at ``path``) names ``path``, not the temp
    file, which is gone.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}.{secrets.token_hex(4)}")
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if e.errno is not None and e.filename in (None, str(tmp), tmp):
            # the error names the file being written, never its temp file
            raise type(e)(e.errno, e.strerror or os.strerror(e.errno), str(path)) from e
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if fsync:
        fsync_dir(path.parent)
    return path


def atomic_write_bytes(
    path: str | Path, data: bytes | bytearray | memoryview, *, fsync: bool = False
) -> Path:
    """Replace ``path`` by ``data`` atomically (see the module docstring)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), fsync=fsync)


def atomic_write_text(
    path: str | Path, text: str, *, fsync: bool = False, encoding: str = "utf-8"
) -> Path:
    """Replace ``path`` by ``text`` atomically (see the module docstring)."""
    return atomic_write_bytes(path, text.encode(encoding), fsync=fsync)


def atomic_write_json(
    path: str | Path,
    obj: Any,
    *,
    indent: int | None = None,
    sort_keys: bool = False,
    default: Callable[[Any], Any] | None = None,
    fsync: bool = False,
) -> Path:
    """Replace ``path`` by the JSON of ``obj`` atomically.

    Indented JSON is written as a text file (ending in a newline); compact JSON
    (``indent=None``) as one line without one.
    """
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, default=default)
    return atomic_write_text(path, text + "\n" if indent is not None else text, fsync=fsync)


def fsync_dir(folder: str | Path) -> None:
    """Flush a folder's entries (a rename in it) to disk; best effort, as not every
    platform can open a folder."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def check_writable(path: str | Path, *, folder: bool) -> None:
    """Raise the ``OSError`` that writing ``path`` (a folder to create or fill when
    ``folder``, else a file) would raise, naming ``path``, without creating anything: a
    read-only filesystem or a folder without write permission (a probe file, removed at
    once, in the nearest existing folder), a file where a folder is expected or the other
    way round. For checks before long work whose result goes to ``path``."""
    import errno
    import tempfile

    path = Path(path)
    for part in (path, *path.parents):
        if part.is_symlink() and not part.exists():  # a loop of links, or a link to nothing
            code = errno.ELOOP if _loops(part) else errno.ENOENT
            raise OSError(code, os.strerror(code), str(part))
    if path.exists() and path.is_dir() != folder:
        code = errno.EEXIST if folder else errno.EISDIR
        raise OSError(code, os.strerror(code), str(path))
    if path.exists():
        existing = path if folder else path.parent
    else:
        existing = next((p for p in path.parents if p.exists()), Path("/"))
    if not existing.is_dir():
        raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=existing)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
    os.close(fd)
    os.unlink(probe)


# -- locks ------------------------------------------------------------------------------------------
class LockTimeout(SparlingError):
    """Another process held a lock longer than the caller would wait."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__(f"another process holds the lock {path} (waited {timeout:.0f} s)")
        self.path = path
        self.timeout = timeout


@contextlib.contextmanager
def file_lock(
    path: str | Path, *, timeout: float | None = None, poll_interval: float = 0.1
) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` for the ``with`` block.

    The lock is the operating system's (``flock`` on POSIX): other processes, and other
    threads of this one, wait for it, and it is released when the holder exits, even if
    it is killed. ``path`` is created if missing (its folder must exist; the file stays
    after release, so waiters share it). Waits up to ``timeout`` seconds (``None``: as
    long as it takes), checking every ``poll_interval`` seconds, then raises
    :class:`LockTimeout`. A lock file that cannot be created or opened raises ``OSError``
    (``PermissionError`` in a read-only folder).
    """
    from filelock import FileLock, Timeout

    path = Path(path)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=-1 if timeout is None else timeout, poll_interval=poll_interval)
    except Timeout:
        raise LockTimeout(path, timeout or 0.0) from None
    try:
        yield
    finally:
        lock.release()


# -- YAML ---------------------------------------------------------------------------------------------
class YAMLLoadError(SparlingError, ValueError):
    """YAML that cannot be read; the message names where it came from, the line and the column."""


#: The most values a YAML document may expand to (anchors and aliases count each time they
#: repeat); ``SPARLING_YAML_MAX_VALUES`` raises it.
MAX_YAML_VALUES = 1_000_000
#: The largest YAML text read, in bytes; ``SPARLING_YAML_MAX_BYTES`` raises it.
MAX_YAML_BYTES = 16 * 1024 * 1024
#: The deepest nesting of lists and mappings read; ``SPARLING_YAML_MAX_DEPTH`` raises it.
#: (No config of the project nests more than 5 deep; without a limit a few kilobytes of
#: ``[[[[...`` exhaust Python's recursion.)
MAX_YAML_DEPTH = 100


def env_limit(name: str, default: int, *, error: type[Exception] = YAMLLoadError) -> int:
    """A resource limit: the environment variable ``name`` (a whole number, at least 1)
    where it is set, else ``default``; a malformed value raises ``error`` naming it."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise error(f"{name} must be a whole number, got {raw!r}") from None
    if value < 1:
        raise error(f"{name} must be at least 1, got {value}")
    return value


def load_yaml(path_or_text: str | Path, *, source: str | None = None) -> Any:
    """Parse YAML with the safe loader (plain data only: no Python objects).

    A :class:`~pathlib.Path` is read as a UTF-8 file; a ``str`` is the YAML text itself.
    ``source`` names it in error messages (default: the path, or ``<text>``), e.g. the
    command-line option a value came from. Returns what the YAML holds (``None`` for an
    empty document). Raises :class:`YAMLLoadError` for a syntax error, a key given twice
    in one mapping (naming both lines), a text over :data:`MAX_YAML_BYTES` or a document
    that expands to over :data:`MAX_YAML_VALUES` values (nested anchors can make a few
    hundred bytes expand to billions); a missing file raises ``FileNotFoundError``.
    """
    import yaml

    max_bytes = env_limit("SPARLING_YAML_MAX_BYTES", MAX_YAML_BYTES)
    if isinstance(path_or_text, Path):
        source = source or str(path_or_text)
        size = path_or_text.stat().st_size
        if size > max_bytes:
            raise YAMLLoadError(
                f"{source}: {size:,} bytes is over the limit of {max_bytes:,} bytes for a "
                "YAML file (set SPARLING_YAML_MAX_BYTES to raise it)"
            )
        try:
            text = path_or_text.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise YAMLLoadError(
                f"{source}: not UTF-8 text ({e.reason} at byte {e.start})"
            ) from None
    else:
        source, text = source or "<text>", path_or_text
        if len(text.encode("utf-8", "surrogatepass")) > max_bytes:
            raise YAMLLoadError(
                f"{source}: over the limit of {max_bytes:,} bytes for YAML text "
                "(set SPARLING_YAML_MAX_BYTES to raise it)"
            )
    max_depth = env_limit("SPARLING_YAML_MAX_DEPTH", MAX_YAML_DEPTH)
    loader = None
    try:
        loader = _strict_loader()(text)  # reads the text: refuses a character YAML forbids
        loader.max_depth = max_depth
        data = loader.get_single_data()
    except _DuplicateKey as e:
        raise YAMLLoadError(f"{source}: {e}") from None
    except _TooDeep as e:
        raise YAMLLoadError(
            f"{source}: {e}: lists and mappings nest deeper than the limit of {max_depth} "
            "(set SPARLING_YAML_MAX_DEPTH to raise it)"
        ) from None
    except yaml.YAMLError as e:
        raise YAMLLoadError(
            f"{source}: not valid YAML: {_describe_yaml_error(e, source, text)}"
        ) from None
    finally:
        if loader is not None:
            loader.dispose()
    max_values = env_limit("SPARLING_YAML_MAX_VALUES", MAX_YAML_VALUES)
    if _expanded_values(data, max_values) > max_values:
        raise YAMLLoadError(
            f"{source}: the YAML expands to more than {max_values:,} values (its anchors "
            "and aliases repeat their content); refusing to read it (set "
            "SPARLING_YAML_MAX_VALUES to raise the limit)"
        )
    return data


class _DuplicateKey(Exception):
    pass


class _TooDeep(Exception):
    pass


_LOADER: Any = None


def _strict_loader() -> Any:
    """yaml's SafeLoader, refusing a key given twice in one mapping (built once)."""
    global _LOADER
    if _LOADER is not None:
        return _LOADER
    import yaml

    class StrictLoader(yaml.SafeLoader):
        max_depth = MAX_YAML_DEPTH
        _depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            # a nesting counter: PyYAML composes (and later constructs) recursively
            self._depth += 1
            try:
                if self._depth > self.max_depth:
                    mark = self.peek_event().start_mark
                    raise _TooDeep(f"line {mark.line + 1}, column {mark.column + 1}")
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[Any, str] = {}
            if isinstance(node, yaml.MappingNode):
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    mark = key_node.start_mark
                    line = f"line {mark.line + 1}, column {mark.column + 1}"
                    try:
                        first = seen.get(key)
                    except TypeError:  # an unhashable key: the base class reports it
                        continue
                    if first is not None:
                        raise _DuplicateKey(
                            f"the key {key!r} is given twice in one mapping, at {first} and "
                            f"at {line}; keep one"
                        )
                    seen[key] = line
            return super().construct_mapping(node, deep=deep)

    _LOADER = StrictLoader
    return _LOADER


def _expanded_values(data: Any, limit: int) -> int:
    """How many values ``data`` holds with every shared (aliased) part counted each time it
    appears; stops counting once over ``limit``. Linear in the distinct objects."""
    sizes: dict[int, int] = {}

    def size(obj: Any) -> int:
        if not isinstance(obj, (dict, list)):
            return 1
        key = id(obj)
        if key in sizes:
            return sizes[key]
        sizes[key] = limit + 1  # a cycle (a recursive alias) counts as over the limit
        items = list(obj.items()) if isinstance(obj, dict) else [(None, v) for v in obj]
        total = 1
        for k, v in items:
            total += (0 if k is None else 1) + size(v)
            if total > limit:
                break
        sizes[key] = min(total, limit + 1)
        return sizes[key]

    return size(data)


def _describe_yaml_error(e: Exception, source: str, text: str = "") -> str:
    """One line: where (line and column, 1-based) and what, with the construct being read."""
    import yaml

    if isinstance(e, yaml.reader.ReaderError):  # a character YAML does not allow
        before = text[: e.position]
        line, column = before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1
        char = chr(e.character) if isinstance(e.character, int) else str(e.character)
        return (
            f"line {line}, column {column}: the character {char!r} (U+{ord(char[:1] or ' '):04X})"
            " is not allowed in YAML (control characters other than tab and newline are not);"
            " remove it"
        )
    if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:
        mark = e.problem_mark
        text = f"line {mark.line + 1}, column {mark.column + 1}: {e.problem or 'invalid'}"
        if e.context:
            ctx = e.context_mark
            same = ctx is not None and (ctx.line, ctx.column) == (mark.line, mark.column)
            where = (
                "" if ctx is None or same else f", at line {ctx.line + 1}, column {ctx.column + 1}"
            )
            text += f" ({e.context}{where})"
        return text
    # e.g. a character YAML does not allow; pyyaml names the text "<unicode string>"
    return " ".join(str(e).replace('"<unicode string>"', f'"{source}"').split())


# -- files that must hold a mapping ----------------------------------------------------------------
def why_missing(path: str | Path, kind: str) -> str:
    """Why ``path`` is no file that can be read, in words, for a message: ``<kind> not
    found: <path>``, or that it is a symbolic link to something that does not exist, or
    a loop of symbolic links (links that lead to one another and never to a file)."""
    import errno

    path = Path(path)
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return (
                f"{path} is a loop of symbolic links (they lead to one another, never to a "
                f"file); a {kind} is expected there"
            )
        if e.errno in (errno.EACCES, errno.EPERM):
            return f"cannot access {path}: {e.strerror}"
        if e.errno == errno.ENOTDIR:
            blocker = next((a for a in path.parents if a.exists() and not a.is_dir()), None)
            if blocker is not None:
                return f"{kind} not found: {path} ({blocker} is a file, not a folder)"
    if path.is_symlink():
        return f"{kind} not found: {path} is a symbolic link to {os.readlink(path)}, which does not exist"
    return f"{kind} not found: {path}"


def _loops(path: Path) -> bool:
    """Whether the symbolic link ``path`` is part of a loop (it never reaches anything)."""
    import errno

    try:
        os.stat(path)
    except OSError as e:
        return e.errno == errno.ELOOP
    return False


def _special_file(path: Path) -> str:
    """What ``path`` is if it exists and is neither a regular file nor a folder (a named
    pipe, a device, a socket), in words; an empty string otherwise."""
    import stat

    try:
        mode = path.stat().st_mode
    except OSError:
        return ""
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return ""


def _what_it_holds(value: Any) -> str:
    if isinstance(value, list):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the text {shown!r}"
    return f"the {type(value).__name__} {value!r}"


def load_yaml_mapping(
    path: str | Path,
    what: str,
    *,
    kind: str,
    error: Callable[[str], Exception] = YAMLLoadError,
    missing_error: Callable[[str], Exception] | None = None,
    example: str = "",
    allow_empty: bool = False,
    defaults: bool = True,
) -> dict[str, Any]:
    """The mapping a YAML file holds (a run config, a sweep, MLflow settings).

    Raises ``error(message)`` for a folder (``<path> is a folder; <what> is a YAML
    file``), a path that names no file (:func:`why_missing`, with ``kind`` such as
    ``config file``), a file with no YAML in it (empty, or only comments: ``{}`` is how a
    file says "every default") and a file holding a list or a scalar instead of a mapping;
    the YAML's own errors are :func:`load_yaml`'s. ``missing_error``: what to raise for a
    folder or a missing file instead (e.g. ``FileNotFoundError``). ``example``: a line of
    such a file, for the messages. ``allow_empty``: an empty file is ``{}`` (for files
    that are optional anyway, where an empty one means the same as none); ``defaults``:
    whether ``{}`` is valid (every key has a default), which the message then says.
    """
    path = Path(path)
    missing = missing_error or error
    if path.is_dir():
        raise missing(f"{path} is a folder; {what} is a YAML file")
    special = _special_file(path)
    if special:
        # reading a named pipe would wait for a writer forever; a device never ends
        raise error(f"{path} is {special}, not a regular file; {what} is a YAML file")
    if not path.is_file():
        raise missing(why_missing(path, kind))
    try:
        loaded = load_yaml(path)
    except PermissionError as e:
        raise error(f"cannot access {path}: {e.strerror}") from None
    like = f" such as `{example}`" if example else ""
    if loaded is None and allow_empty:
        return {}
    if loaded is None:
        every_default = "; write {} to use every default" if defaults else ""
        raise error(
            f"{path}: the file is empty (no YAML in it); {what} is a mapping of keys{like}"
            + every_default
        )
    if not isinstance(loaded, dict):
        raise error(
            f"{path}: {what} must be a mapping of keys{like}, but the file holds "
            f"{_what_it_holds(loaded)}"
        )
    return loaded
