"""``pipelines.fetch``: download, unpack and verify, served from 127.0.0.1; never the internet."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import time
import urllib.error
import urllib.request
import wave
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED

from pipelines.fetch import DATASETS, FetchError, content_sha256, fetch_dataset
from sparling import domains
from sparling.domains.audio_digits import find_recordings

FSDD = SHARED / "data" / "fsdd"
SPEAKERS = ("george", "theo")  # theo is FSDD's default held-out speaker


def _wav_bytes(digit: int) -> bytes:
    """A stand-in recording, used only when the FSDD copy is absent."""
    import io

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        t = np.arange(2400) / 8000
        w.writeframes((8000 * np.sin(2 * np.pi * (200 + 40 * digit) * t)).astype("<i2").tobytes())
    return buf.getvalue()


def listing_sha256(files: dict[str, bytes]) -> str:
    """The checksum ``sha256sum`` gives for the listing of these files (path -> bytes), as
    ``find recordings -type f | LC_ALL=C sort | xargs sha256sum | sha256sum`` prints it."""
    lines = "".join(
        f"{hashlib.sha256(data).hexdigest()}  {path}\n" for path, data in sorted(files.items())
    )
    return hashlib.sha256(lines.encode()).hexdigest()


def build_archive(path: Path, top: str = "free-spoken-digit-dataset-master") -> str:
    """A GitHub-style FSDD archive: one top folder, README.md and recordings/ (20 WAVs);
    returns its recordings' checksum."""
    files = {}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{top}/README.md", "# tiny FSDD\n")
        for speaker in SPEAKERS:
            for digit in range(10):
                name = f"{digit}_{speaker}_0.wav"
                source = FSDD / "recordings" / name
                data = source.read_bytes() if source.is_file() else _wav_bytes(digit)
                zf.writestr(f"{top}/recordings/{name}", data)
                files[f"recordings/{name}"] = data
    return listing_sha256(files)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder and the http://127.0.0.1:PORT/ address serving it."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_fetch_over_http(
    serve: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, base = serve
    digest = build_archive(folder / "fsdd.zip")
    out = tmp_path / "datasets" / "fsdd"
    root = fetch_dataset("fsdd", out, url=base + "fsdd.zip", sha256=digest, progress=False)
    assert root == out.resolve()
    assert (out / "README.md").is_file() and (out / "recordings").is_dir()
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "recordings"]  # no temp left
    index = find_recordings(root)
    assert index.layout == "fsdd" and len(index.recordings) == 20
    assert str(out.resolve()) in capsys.readouterr().out

    # the fetched folder is what the domain reads, test speaker held out
    test = domains.make("audio-digits", root=str(root), split="test")
    assert test.sample(0, 0).x.shape == (642, 64)

    # a second fetch finds it and downloads nothing (the URL would refuse)
    start = time.monotonic()
    again = fetch_dataset("fsdd", out, url="http://127.0.0.1:9/none.zip", progress=False)
    assert again == root and time.monotonic() - start < 5
    assert "already present" in capsys.readouterr().out


def test_fetch_from_file_url(tmp_path: Path) -> None:
    archive = tmp_path / "fsdd.zip"
    digest = build_archive(archive)
    root = fetch_dataset("fsdd", tmp_path / "out", url=archive.as_uri(), sha256=digest)
    assert find_recordings(root).layout == "fsdd"


def test_both_datasets_are_pinned_to_a_commit() -> None:
    for name, repo in (
        ("fsdd", "Jakobovski/free-spoken-digit-dataset"),
        ("audiomnist", "soerenab/AudioMNIST"),
    ):
        source = DATASETS[name]
        assert len(source.commit) == 40 and int(source.commit, 16) >= 0
        assert source.url == f"https://github.com/{repo}/archive/{source.commit}.zip"
    assert DATASETS["fsdd"].sha256 is not None


@pytest.mark.skipif(not (FSDD / "recordings").is_dir(), reason="needs the FSDD copy in shared/")
def test_the_pinned_fsdd_checksum_is_that_of_the_reference_copy(tmp_path: Path) -> None:
    # the reference copy is FSDD at the pinned commit: an archive of it passes the check
    assert content_sha256(FSDD / "recordings") == DATASETS["fsdd"].sha256
    archive = tmp_path / "fsdd.zip"
    with zipfile.ZipFile(archive, "w") as zf:  # stored, not deflated: fast
        for wav in sorted((FSDD / "recordings").iterdir()):
            zf.write(wav, f"free-spoken-digit-dataset-x/recordings/{wav.name}")
    root = fetch_dataset("fsdd", tmp_path / "out", url=archive.as_uri(), progress=False)
    assert len(find_recordings(root).recordings) == 3000


def test_recordings_that_fail_the_checksum_are_refused_and_nothing_is_kept(
    serve: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, base = serve
    digest = build_archive(folder / "fsdd.zip")  # 20 recordings, not the pinned 3,000
    out = tmp_path / "out"
    with pytest.raises(FetchError) as e:
        fetch_dataset("fsdd", out, url=base + "fsdd.zip", progress=False)
    message = str(e.value)
    assert f"sha256 {digest}, expected {DATASETS['fsdd'].sha256}" in message
    assert "do not match the checksum" in message and "\n" not in message
    assert not out.exists()  # nothing kept, no empty folder left

    # AudioMNIST's layout, a checksum given: one byte changed in one recording is refused
    files = {f"data/{s:02d}/{d}_{s:02d}_0.wav": _wav_bytes(d) for s in (1, 2) for d in range(10)}
    good = listing_sha256(files)
    files["data/02/9_02_0.wav"] = files["data/02/9_02_0.wav"][:-1] + b"\x01"
    with zipfile.ZipFile(folder / "am.zip", "w") as zf:
        for name, data in files.items():
            zf.writestr(f"AudioMNIST-x/{name}", data)
    (tmp_path / "am").mkdir()  # an empty folder given: left as it was
    with pytest.raises(FetchError, match=f"sha256 {listing_sha256(files)}, expected {good}"):
        fetch_dataset("audiomnist", tmp_path / "am", url=base + "am.zip", sha256=good)
    assert list((tmp_path / "am").iterdir()) == []
    # without a checksum to check against, the one found is said
    fetch_dataset("audiomnist", tmp_path / "am", url=base + "am.zip", sha256=None, progress=False)
    assert f"theirs is sha256 {listing_sha256(files)}" in capsys.readouterr().err
    with pytest.raises(FetchError, match="64 hexadecimal digits, got 'abc'"):
        fetch_dataset("fsdd", tmp_path / "x", url=base + "fsdd.zip", sha256="abc")


def test_no_network_fails_fast_with_instructions(tmp_path: Path) -> None:
    out = tmp_path / "out"
    url = "http://127.0.0.1:9/fsdd.zip"  # discard port: connection refused
    start = time.monotonic()
    with pytest.raises(FetchError) as e:
        fetch_dataset("fsdd", out, url=url, timeout=3, progress=False)
    assert time.monotonic() - start < 5
    message = str(e.value)
    assert url in message
    assert f"{out.resolve()}/recordings/{{digit}}_{{speaker}}_{{take}}.wav" in message
    assert not out.exists()  # nothing left behind


def test_default_url_named_when_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, timeout: float) -> None:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(FetchError) as e:
        fetch_dataset("audiomnist", tmp_path / "am", progress=False)
    message = str(e.value)
    assert DATASETS["audiomnist"].url in message and DATASETS["audiomnist"].commit in message
    assert "data/NN/{digit}_NN_{take}.wav" in message
    assert "Name or service not known" in message


def test_wrong_archives(serve: tuple[Path, str], tmp_path: Path) -> None:
    folder, base = serve
    with zipfile.ZipFile(folder / "empty.zip", "w") as zf:
        zf.writestr("repo-master/README.md", "nothing here")
    with pytest.raises(FetchError, match="did not unpack as expected"):
        fetch_dataset("fsdd", tmp_path / "a", url=base + "empty.zip", progress=False)
    assert not (tmp_path / "a").exists()  # checked before anything is moved in

    build_archive(folder / "fsdd.zip")
    with pytest.raises(FetchError, match="would hold the fsdd layout, expected audiomnist"):
        fetch_dataset("audiomnist", tmp_path / "b", url=base + "fsdd.zip", progress=False)
    assert not (tmp_path / "b").exists()

    (folder / "page.zip").write_text("<html>not a zip</html>")
    with pytest.raises(FetchError, match="zip"):
        fetch_dataset("fsdd", tmp_path / "c", url=base + "page.zip", progress=False)

    with zipfile.ZipFile(folder / "slip.zip", "w") as zf:
        zf.writestr("../evil.txt", "x")
    with pytest.raises(FetchError, match="unsafe"):
        fetch_dataset("fsdd", tmp_path / "d", url=base + "slip.zip", progress=False)
    assert not (tmp_path / "evil.txt").exists()


def test_refuses_non_empty_folder_and_unknown_name(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FetchError, match="not empty"):
        fetch_dataset("fsdd", tmp_path, url="http://127.0.0.1:9/x.zip", progress=False)
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="unknown dataset"):
        fetch_dataset("mnist", tmp_path / "x")  # type: ignore[arg-type]
