"""Download the spoken-digit recordings the ``audio-digits`` domain reads.

``sparling data fetch audiomnist|fsdd --to DIR`` calls :func:`fetch_dataset`, which
downloads the dataset's GitHub archive (zip) with urllib, shows a progress bar, unpacks it
into ``DIR`` (dropping the archive's top folder) and checks the result with the very check
the domain runs (:func:`sparling.domains.audio_digits.find_recordings`). Afterwards
``make("audio-digits", root=DIR)`` works.

Without network access it fails within ``timeout`` seconds with a :class:`FetchError`
that says which URL to download and how to lay it out under ``DIR`` by hand. A
``file://`` URL to an archive downloaded elsewhere also works (``url=``).
"""

from __future__ import annotations

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

    url: str
    layout: Literal["audiomnist", "fsdd"]
    #: the layout under DIR, for messages
    expected: str
    about: str


DATASETS: dict[str, DatasetSource] = {
    "audiomnist": DatasetSource(
        url="https://github.com/soerenab/AudioMNIST/archive/refs/heads/master.zip",
        layout="audiomnist",
        expected="DIR/data/NN/{digit}_NN_{take}.wav (60 speaker folders 01..60, 30,000 WAVs at 48 kHz)",
        about="AudioMNIST (well over 1 GB to download)",
    ),
    "fsdd": DatasetSource(
        # pinned to the commit of the project's reference copy: FSDD grows over time
        url=(
            "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/"
            "26eb9aaf76e81b692f806f9140c2d2777410d7a1.zip"
        ),
        layout="fsdd",
        expected="DIR/recordings/{digit}_{speaker}_{take}.wav (3,000 WAVs at 8 kHz, 6 speakers)",
        about="Free Spoken Digit Dataset (about 10 MB to download)",
    ),
}

#: bytes read per network read
_CHUNK = 1 << 16


class FetchError(SparlingError):
    """A dataset could not be downloaded, unpacked or verified; the message says what to do."""


def fetch_dataset(
    name: DatasetName,
    to: Path,
    *,
    url: str | None = None,
    timeout: float = 15.0,
    progress: bool = True,
) -> Path:
    """Download dataset ``name`` into folder ``to`` and return the root to pass as ``root=``.

    ``url`` overrides the download address (e.g. a ``file://`` archive or a mirror);
    ``timeout`` bounds connecting and every read, in seconds. When ``to`` already holds
    the dataset nothing is downloaded. ``to`` must otherwise be empty or not exist, so that
    nothing of the user's is overwritten.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; accepted: {', '.join(sorted(DATASETS))}")
    source = DATASETS[name]
    url = url or source.url
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
            # move the archive's contents (its single top folder, if any, dropped) into `to`
            top = _single_top_folder(unpacked)
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


def _describe(index: RecordingIndex) -> str:
    return (
        f"{len(index.recordings)} recordings, {len(index.speakers)} speakers, "
        f"{index.layout} layout in {index.recordings_dir}"
    )


def _verified(
    to: Path, source: DatasetSource, *, raise_errors: bool = False
) -> RecordingIndex | None:
    """The domain's own layout check; ``None`` (or FetchError) when it fails."""
    try:
        index = find_recordings(to)
    except ValueError as e:
        if raise_errors:
            raise FetchError(f"the downloaded archive did not unpack as expected: {e}") from e
        return None
    if index.layout != source.layout:
        if raise_errors:
            raise FetchError(
                f"{to} holds the {index.layout} layout, expected {source.layout}: {source.expected}"
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


__all__ = ["DATASETS", "DatasetName", "DatasetSource", "FetchError", "fetch_dataset"]
