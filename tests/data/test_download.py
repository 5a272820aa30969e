"""The resumable download and `fewshot data omniglot --download`, against a local HTTP
server (127.0.0.1, a free port) that serves two tiny zips in the official layout."""
import hashlib
import io
import re
import socket
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewshot import cli
from fewshot.data import images, omniglot
from fewshot.data.download import download
from fewshot.errors import FewshotError

TIMEOUT = 5  # seconds, for every request a test makes itself

# set -> (first char id, ((alphabet, characters), ...)); 2 drawers per character
LAYOUT = {
    "background": (1, (("Alpha", 2), ("Beta", 1))),
    "evaluation": (4, (("Gamma", 2),)),
}
DRAWERS = 2


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSHOT_HOME", str(tmp_path / "fewshot-home"))


def _png_bytes(pixels):
    image = Image.fromarray(pixels)  # bool -> mode '1', True = white
    assert image.mode == "1" and image.size == (105, 105)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """{zip name: bytes}, {char_id: (set, "Alphabet/characterNN", [bool image per drawer])}."""
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("official")
    zips, chars = {}, {}
    for set_name, (char_id, alphabets) in LAYOUT.items():
        path = folder / f"images_{set_name}.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            for alphabet, count in alphabets:
                for n in range(1, count + 1):
                    name = f"{alphabet}/character{n:02d}"
                    pixels = []
                    for drawer in range(1, DRAWERS + 1):
                        image = np.ones((105, 105), dtype=bool)
                        y, x = rng.integers(5, 70, size=2)
                        image[y:y + rng.integers(5, 30), x:x + rng.integers(5, 30)] = False
                        pixels.append(image)
                        z.writestr(f"images_{set_name}/{name}/{char_id:04d}_{drawer:02d}.png",
                                   _png_bytes(image))
                    chars[char_id] = (set_name, name, pixels)
                    char_id += 1
        zips[path.name] = path.read_bytes()
    return zips, chars


def md5(data):
    return hashlib.md5(data).hexdigest()


class FileServer:
    """A tiny HTTP server in a thread: GET with `Range: bytes=N-` support (206 / 416),
    a log of (path, Range header) per request, and files that can be cut short."""

    def __init__(self, files):
        self.files = dict(files)
        self.requests = []      # (path, Range header or None)
        self.sent = []          # body bytes sent per request
        self.truncate = set()   # names whose body is cut in half (the connection drops)
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.lstrip("/")
                byte_range = self.headers.get("Range")
                state.requests.append((name, byte_range))
                data = state.files.get(name)
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                if byte_range:
                    match = re.fullmatch(r"bytes=(\d+)-", byte_range.strip())
                    if not match:
                        self.send_error(400, "Bad Range")
                        return
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_response(416, "Range Not Satisfiable")
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206, "Partial Content")
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if name in state.truncate:
                    body = body[:len(body) // 2]
                self.wfile.write(body)
                state.sent.append(len(body))

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive()


@pytest.fixture
def server(official):
    with FileServer(official[0]) as running:
        yield running


@pytest.fixture
def closed_port():
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _expected_28(pixels):
    return np.asarray(Image.fromarray(pixels).convert("L").resize((28, 28), Image.LANCZOS))


def check_prepared(folder, chars):
    """`folder` holds the tiny set, prepared at 28x28, as read_dataset loads it."""
    dataset = images.read_dataset(folder, 28)
    assert dataset.images.shape == (len(chars) * DRAWERS, 1, 28, 28)
    assert [c.info["char_id"] for c in dataset.classes] == sorted(chars)
    for cls in dataset.classes:
        set_name, name, pixels = chars[cls.info["char_id"]]
        assert (cls.group, cls.name, cls.count) == (set_name, name, DRAWERS)
        for k, image in enumerate(pixels):
            assert np.array_equal(dataset.images[cls.start + k, 0], _expected_28(image))
    return dataset


# -- download() ---------------------------------------------------------------------------------

def test_download_checks_md5_and_skips_a_verified_file(server, official, tmp_path):
    data = official[0]["images_background.zip"]
    dest = tmp_path / "raw" / "images_background.zip"
    got = download(f"{server.url}/images_background.zip", dest, md5=md5(data), progress=False,
                   timeout=TIMEOUT)
    assert got == dest and dest.read_bytes() == data
    assert not dest.with_name(dest.name + ".part").exists()
    assert server.requests == [("images_background.zip", None)]
    # present and verified: no second request
    download(f"{server.url}/images_background.zip", dest, md5=md5(data), progress=False, timeout=TIMEOUT)
    assert len(server.requests) == 1


def test_a_partial_file_is_resumed_with_a_range_request(server, official, tmp_path):
    data = official[0]["images_evaluation.zip"]
    dest = tmp_path / "images_evaluation.zip"
    have = len(data) // 3
    dest.with_name(dest.name + ".part").write_bytes(data[:have])
    download(f"{server.url}/images_evaluation.zip", dest, md5=md5(data), progress=False, timeout=TIMEOUT)
    assert server.requests == [("images_evaluation.zip", f"bytes={have}-")]
    deadline = time.monotonic() + TIMEOUT  # the handler records what it sent after the client has it
    while not server.sent and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.sent == [len(data) - have]  # only the rest travelled
    assert dest.read_bytes() == data
    assert not dest.with_name(dest.name + ".part").exists()


def test_a_complete_partial_file_is_accepted_after_416(server, official, tmp_path):
    data = official[0]["images_background.zip"]
    dest = tmp_path / "images_background.zip"
    dest.with_name(dest.name + ".part").write_bytes(data)
    download(f"{server.url}/images_background.zip", dest, md5=md5(data), progress=False, timeout=TIMEOUT)
    assert server.requests == [("images_background.zip", f"bytes={len(data)}-")]
    assert dest.read_bytes() == data


def test_a_wrong_md5_raises_and_leaves_no_file(server, tmp_path):
    dest = tmp_path / "images_background.zip"
    with pytest.raises(FewshotError, match="md5") as info:
        download(f"{server.url}/images_background.zip", dest, md5="0" * 32, progress=False,
                 timeout=TIMEOUT)
    assert "images_background.zip" in str(info.value)
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()


def test_http_errors_name_the_url_and_status(server, tmp_path):
    with pytest.raises(FewshotError, match="HTTP 404") as info:
        download(f"{server.url}/missing.zip", tmp_path / "missing.zip", progress=False, timeout=TIMEOUT)
    assert f"{server.url}/missing.zip" in str(info.value)
    assert not (tmp_path / "missing.zip").exists()


def test_an_unreachable_server_suggests_from(closed_port, tmp_path):
    url = f"http://127.0.0.1:{closed_port}"
    with pytest.raises(FewshotError) as info:
        omniglot.download_official(tmp_path, base_url=url, progress=False)
    assert "--from" in str(info.value) and url in str(info.value)
    assert not any((tmp_path / "raw").glob("*.zip"))


@pytest.mark.parametrize("checked", [True, False], ids=["md5", "no-md5"])
def test_a_dropped_connection_keeps_the_part_for_resuming(server, official, tmp_path, checked):
    data = official[0]["images_background.zip"]
    dest = tmp_path / "images_background.zip"
    part = dest.with_name(dest.name + ".part")
    url = f"{server.url}/images_background.zip"
    server.truncate.add("images_background.zip")
    with pytest.raises(FewshotError):
        download(url, dest, md5=md5(data) if checked else None, progress=False, timeout=TIMEOUT)
    assert not dest.exists()
    assert part.read_bytes() == data[:len(data) // 2]
    server.truncate.clear()
    download(url, dest, md5=md5(data) if checked else None, progress=False, timeout=TIMEOUT)
    assert server.requests[-1] == ("images_background.zip", f"bytes={len(data) // 2}-")
    assert dest.read_bytes() == data


# -- the `data` command -------------------------------------------------------------------------

@pytest.fixture
def official_md5s(official, monkeypatch):
    """The checksums of the tiny zips stand in for the official ones."""
    monkeypatch.setattr(omniglot, "OFFICIAL_ZIPS", {name: md5(data) for name, data in official[0].items()})


def test_cli_download_end_to_end(server, official, official_md5s, tmp_path, capsys):
    zips, chars = official
    root = tmp_path / "root"
    argv = ["data", "omniglot", "--download", "--root", str(root), "--url", server.url, "--no-progress"]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith(f"prepared {len(chars)} classes (")
    assert f"{len(chars) * DRAWERS} images at 28x28 in {root / 'omniglot'}" in out
    assert sorted(name for name, _ in server.requests) == sorted(zips)
    for name, data in zips.items():
        assert (root / "omniglot" / "raw" / name).read_bytes() == data
    assert not list((root / "omniglot" / "raw").glob("*.part"))
    check_prepared(root / "omniglot", chars)

    # again: an existing dataset is refused unchanged without --force; with it, the verified zips are
    # not fetched twice and the import is rewritten the same
    requests = len(server.requests)
    before = {p: p.read_bytes() for p in (root / "omniglot").rglob("*") if p.is_file()}
    assert cli.main(argv) == 2
    assert "already holds a prepared dataset" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in (root / "omniglot").rglob("*") if p.is_file()} == before
    assert cli.main(argv + ["--name", "again"]) == 0 and cli.main(argv + ["--force"]) == 0
    assert len(server.requests) == requests + 2  # only for the new folder "again"
    check_prepared(root / "again", chars)
    check_prepared(root / "omniglot", chars)


def test_cli_download_with_the_official_checksums_refuses_other_files(server, tmp_path, capsys):
    root = tmp_path / "root"
    code = cli.main(["data", "omniglot", "--download", "--root", str(root), "--url", server.url,
                     "--no-progress"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("fewshot: error: download of ")
    assert "md5" in err[0] and "--from" in err[0]
    assert not list((root / "omniglot" / "raw").iterdir())
    assert not images.is_prepared(root / "omniglot")


def test_cli_download_unreachable(closed_port, tmp_path, capsys):
    root = tmp_path / "root"
    code = cli.main(["data", "omniglot", "--download", "--root", str(root),
                     "--url", f"http://127.0.0.1:{closed_port}", "--no-progress"])
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2 and out == ""
    assert len(lines) == 1 and lines[0].startswith("fewshot: error: cannot download ")
    assert "--from" in lines[0] and "Traceback" not in err


@pytest.mark.parametrize("which", ["folder", "one zip"])
def test_cli_from_the_zips(official, tmp_path, capsys, which):
    zips, chars = official
    folder = tmp_path / "copy"
    folder.mkdir()
    for name, data in zips.items():
        (folder / name).write_bytes(data)
    if which == "one zip":
        source = folder / "images_evaluation.zip"
        chars = {i: c for i, c in chars.items() if c[0] == "evaluation"}
    else:
        source = folder
    root = tmp_path / "root"
    assert cli.main(["data", "omniglot", "--from", str(source), "--root", str(root), "--no-progress"]) == 0
    assert f"prepared {len(chars)} classes" in capsys.readouterr().out
    dataset = check_prepared(root / "omniglot", chars)
    assert dataset.meta["source"] == str(Path(source).resolve())
