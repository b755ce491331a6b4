"""Download the spoken-digit recordings the ``audio-digits`` domain reads.

``sparling data fetch audiomnist|fsdd --to DIR`` calls :func:`fetch_dataset`, which
downloads the dataset's GitHub archive (zip) of a pinned commit with urllib, shows a
progress bar, unpacks it beside ``DIR``, checks it with the very check the domain runs
(:func:`sparling.domains.audio_digits.find_recordings`) and against the recordings'
pinned sha256 (:func:`content_sha256`), and only then moves it into ``DIR`` (dropping the
archive's top folder). Afterwards ``make("audio-digits", root=DIR)`` works.

The checksum covers the recordings rather than the zip: GitHub makes archives on request
and does not promise the same bytes twice, while the files of a commit never change. It
is the sha256 of ``sha256sum``'s listing of every file under the recordings folder,
sorted by path, so anyone can recompute it::

    cd DIR && find recordings -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum

Without network access it fails within ``timeout`` seconds with a :class:`FetchError`
that says which URL to download and how to lay it out under ``DIR`` by hand. A
``file://`` URL to an archive downloaded elsewhere also works (``url=``).
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from tqdm import tqdm

from sparling.domains.audio_digits import RecordingIndex, find_recordings
from sparling.errors import SparlingError

DatasetName = Literal["audiomnist", "fsdd"]


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset comes from and what it looks like once unpacked under DIR."""

    repo: str
    """The GitHub repository, ``owner/name``."""
    commit: str
    """The pinned commit: its archive is what is downloaded."""
    layout: Literal["audiomnist", "fsdd"]
    recordings: str
    """The folder under DIR holding the recordings, which :attr:`sha256` covers."""
    sha256: str | None
    """:func:`content_sha256` of :attr:`recordings` at :attr:`commit`; ``None`` where no
    copy was at hand to compute it from (the fetch then prints the one it finds)."""
    #: the layout under DIR, for messages
    expected: str
    about: str

    @property
    def url(self) -> str:
        return f"https://github.com/{self.repo}/archive/{self.commit}.zip"


DATASETS: dict[str, DatasetSource] = {
    "audiomnist": DatasetSource(
        repo="soerenab/AudioMNIST",
        # the newest commit known here (its README cites the 2023 journal paper); the
        # recordings are those added in 2018 (data/ has had no other version since)
        commit="8d77a2d8754105541742115cefec1e537040a6cf",
        layout="audiomnist",
        recordings="data",
        # no copy of the recordings was at hand to compute it from: the first fetch on a
        # connected machine prints it, for here
        sha256=None,
        expected="DIR/data/NN/{digit}_NN_{take}.wav (60 speaker folders 01..60, 30,000 WAVs at 48 kHz)",
        about="AudioMNIST (well over 1 GB to download)",
    ),
    "fsdd": DatasetSource(
        # the commit of the project's reference copy (FSDD grows over time); the checksum
        # was computed from that commit's files and matches the reference copy
        repo="Jakobovski/free-spoken-digit-dataset",
        commit="26eb9aaf76e81b692f806f9140c2d2777410d7a1",
        layout="fsdd",
        recordings="recordings",
        sha256="04e1baae96c6a26e39c623f2b01d0182ddae627ba0ac02a3cdc17ba2af99fd9b",
        expected="DIR/recordings/{digit}_{speaker}_{take}.wav (3,000 WAVs at 8 kHz, 6 speakers)",
        about="Free Spoken Digit Dataset (about 10 MB to download)",
    ),
}

#: bytes read per network read
_CHUNK = 1 << 16


class FetchError(SparlingError):
    """A dataset could not be downloaded, unpacked or verified; the message says what to do."""


#: ``sha256=`` of :func:`fetch_dataset`: the dataset's pinned checksum
PINNED = "pinned"


def content_sha256(folder: Path) -> str:
    """The sha256 of ``sha256sum``'s listing (``<hex>  <path>`` lines) of every file under
    ``folder``, paths relative to ``folder``'s parent and sorted bytewise: what ``find
    NAME -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum`` prints in
    the parent folder."""
    folder = Path(folder)
    files = sorted(
        (p.relative_to(folder.parent).as_posix().encode(), p)
        for p in folder.rglob("*")
        if p.is_file()
    )
    listing = hashlib.sha256()
    for rel, path in files:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        listing.update(digest.hexdigest().encode() + b"  " + rel + b"\n")
    return listing.hexdigest()


def fetch_dataset(
    name: DatasetName,
    to: Path,
    *,
    url: str | None = None,
    sha256: str | None = PINNED,
    timeout: float = 15.0,
    progress: bool = True,
) -> Path:
    """Download dataset ``name`` into folder ``to`` and return the root to pass as ``root=``.

    ``url`` overrides the download address (e.g. a ``file://`` archive or a mirror);
    ``sha256`` is the :func:`content_sha256` the recordings must have (default: the
    dataset's pinned one; ``None``: none, the one found is printed); ``timeout`` bounds
    connecting and every read, in seconds. When ``to`` already holds the dataset nothing
    is downloaded. ``to`` must otherwise be empty or not exist, so that nothing of the
    user's is overwritten; an archive that fails a check leaves nothing in it.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; accepted: {', '.join(sorted(DATASETS))}")
    source = DATASETS[name]
    url = url or source.url
    expected = source.sha256 if sha256 == PINNED else (sha256 or "").strip().lower() or None
    if expected is not None and not _is_sha256(expected):
        raise FetchError(f"sha256 must be 64 hexadecimal digits, got {expected!r}")
    to = Path(to).expanduser().resolve()

    existing = _verified(to, source)
    if existing is not None:
        print(f"{name}: already present at {to} ({_describe(existing)})")
        return to
    if to.exists() and not to.is_dir():
        raise FetchError(f"{to} exists and is not a folder")
    if to.exists() and any(to.iterdir()):
        raise FetchError(
            f"{to} is not empty and does not hold {source.about} laid out as {source.expected}; "
            "choose an empty or new folder"
        )
    created = not to.exists()
    to.mkdir(parents=True, exist_ok=True)

    try:
        # the archive is downloaded and unpacked beside its destination (same file system,
        # so the final moves are renames) and vanishes with the temporary folder
        with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=to) as tmp:
            archive = Path(tmp) / "archive.zip"
            _download(
                url, archive, timeout=timeout, progress=progress, name=name, to=to, source=source
            )
            unpacked = Path(tmp) / "unpacked"
            _extract(archive, unpacked, url=url)
            # checked where it was unpacked: an archive that fails leaves nothing in `to`
            top = _single_top_folder(unpacked)
            _verified(top, source, raise_errors=True, shown=to)
            _check_sha256(name, top / source.recordings, expected, url=url, to=to)
            # move the archive's contents (its single top folder, if any, dropped) into `to`
            for entry in sorted(top.iterdir()):
                shutil.move(str(entry), str(to / entry.name))
    except FetchError:
        if created and not any(to.iterdir()):
            to.rmdir()  # leave no empty folder behind when nothing arrived
        raise

    index = _verified(to, source, raise_errors=True)
    assert index is not None
    print(f"{name}: {_describe(index)} at {to}; use it as make('audio-digits', root='{to}')")
    return to


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def _check_sha256(name: str, folder: Path, expected: str | None, *, url: str, to: Path) -> None:
    """Refuse recordings whose :func:`content_sha256` is not ``expected`` (``None``: print
    the one found, there being none to check it against)."""
    found = content_sha256(folder)
    if expected is None:
        print(
            f"{name}: no checksum to check the recordings against; theirs is sha256 {found}",
            file=sys.stderr,
        )
    elif found != expected:
        raise FetchError(
            f"{name}: the recordings from {url} do not match the checksum: sha256 {found}, "
            f"expected {expected}; nothing was put in {to}"
        )


def _describe(index: RecordingIndex) -> str:
    return (
        f"{len(index.recordings)} recordings, {len(index.speakers)} speakers, "
        f"{index.layout} layout in {index.recordings_dir}"
    )


def _verified(
    to: Path, source: DatasetSource, *, raise_errors: bool = False, shown: Path | None = None
) -> RecordingIndex | None:
    """The domain's own layout check; ``None`` (or FetchError) when it fails. ``shown``:
    the folder to name in messages (where ``to`` will be moved)."""
    try:
        index = find_recordings(to)
    except ValueError as e:
        if raise_errors:
            message = str(e).replace(str(to), str(shown)) if shown else str(e)
            raise FetchError(f"the downloaded archive did not unpack as expected: {message}") from e
        return None
    if index.layout != source.layout:
        if raise_errors:
            raise FetchError(
                f"{shown or to} would hold the {index.layout} layout, expected "
                f"{source.layout}: {source.expected}"
            )
        return None
    return index


def _download(
    url: str,
    dest: Path,
    *,
    timeout: float,
    progress: bool,
    name: str,
    to: Path,
    source: DatasetSource,
) -> None:
    """Stream ``url`` to ``dest`` with a progress bar; FetchError with instructions on failure."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, dest.open("wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"fetch {name}",
                file=sys.stderr,
                disable=not progress,
            ) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as e:
        # URLError covers DNS failure and refused connections; OSError/TimeoutError covers
        # resets and reads timing out; ValueError an unparsable URL.
        reason = getattr(e, "reason", e)
        raise FetchError(
            f"could not download {source.about} from {url}: {reason}.\n"
            f"Without network access: download {url} on a machine that has it, unpack it so "
            f"that the recordings lie at {source.expected.replace('DIR', str(to))}, and pass "
            f"root={to} (or run this again with url='file:///path/to/the.zip')."
        ) from e


def _extract(archive: Path, dest: Path, *, url: str) -> None:
    """Unpack a zip, refusing members that would land outside ``dest`` (zip-slip)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            dest.mkdir(parents=True)
            base = dest.resolve()
            for member in zf.infolist():
                parts = PurePosixPath(member.filename).parts
                if member.filename.startswith("/") or ".." in parts:
                    raise FetchError(f"archive from {url} has an unsafe member {member.filename!r}")
                target = (base / member.filename).resolve()
                if not target.is_relative_to(base):
                    raise FetchError(f"archive from {url} has an unsafe member {member.filename!r}")
            zf.extractall(dest)
    except zipfile.BadZipFile as e:
        raise FetchError(f"{url} did not yield a zip archive: {e}") from e


def _single_top_folder(folder: Path) -> Path:
    """GitHub archives hold one folder ``repo-ref/``; return it, or ``folder`` otherwise."""
    entries = list(folder.iterdir())
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return folder


__all__ = [
    "DATASETS",
    "PINNED",
    "DatasetName",
    "DatasetSource",
    "FetchError",
    "content_sha256",
    "fetch_dataset",
]
