"""``pipelines.fetch``: download, unpack and verify, served from 127.0.0.1; never the internet."""

from __future__ import annotations

import functools
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

from pipelines.fetch import DATASETS, FetchError, fetch_dataset
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


def build_archive(path: Path, top: str = "free-spoken-digit-dataset-master") -> Path:
    """A GitHub-style FSDD archive: one top folder, README.md and recordings/ (20 WAVs)."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{top}/README.md", "# tiny FSDD\n")
        for speaker in SPEAKERS:
            for digit in range(10):
                name = f"{digit}_{speaker}_0.wav"
                source = FSDD / "recordings" / name
                data = source.read_bytes() if source.is_file() else _wav_bytes(digit)
                zf.writestr(f"{top}/recordings/{name}", data)
    return path


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
    build_archive(folder / "fsdd.zip")
    out = tmp_path / "datasets" / "fsdd"
    root = fetch_dataset("fsdd", out, url=base + "fsdd.zip", progress=False)
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
    archive = build_archive(tmp_path / "fsdd.zip")
    root = fetch_dataset("fsdd", tmp_path / "out", url=archive.as_uri(), progress=False)
    assert find_recordings(root).layout == "fsdd"


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
    assert DATASETS["audiomnist"].url in message
    assert "data/NN/{digit}_NN_{take}.wav" in message
    assert "Name or service not known" in message


def test_wrong_archives(serve: tuple[Path, str], tmp_path: Path) -> None:
    folder, base = serve
    with zipfile.ZipFile(folder / "empty.zip", "w") as zf:
        zf.writestr("repo-master/README.md", "nothing here")
    with pytest.raises(FetchError, match="did not unpack as expected"):
        fetch_dataset("fsdd", tmp_path / "a", url=base + "empty.zip", progress=False)

    build_archive(folder / "fsdd.zip")
    with pytest.raises(FetchError, match="expected audiomnist"):
        fetch_dataset("audiomnist", tmp_path / "b", url=base + "fsdd.zip", progress=False)

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
