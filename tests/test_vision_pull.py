"""``seetalk models pull``: listing, unknown names, and the download (from 127.0.0.1 only)."""

import functools
import http.server
import io
import threading

import pytest

from models.pull import VISION_MODELS, download, pull


def test_listing_names_every_model_and_its_urls():
    out = io.StringIO()
    assert pull(None, out=out) == 0
    text = out.getvalue()
    for m in VISION_MODELS.values():
        assert m.name in text and m.url(m.model_file) in text and m.url(m.mmproj_file) in text


def test_unknown_name_is_an_error():
    out = io.StringIO()
    assert pull("no-such-model", out=out) == 2
    assert "unknown vision model" in out.getvalue() and "smolvlm-256m" in out.getvalue()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture
def file_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_writes_the_file_atomically_with_a_bar(file_server, tmp_path):
    root, url = file_server
    payload = bytes(range(256)) * 12_000  # 3 MB: several chunks
    (root / "model.gguf").write_bytes(payload)
    bar = io.StringIO()
    dest = download(f"{url}/model.gguf", tmp_path / "user" / "model.gguf", out=bar)
    assert dest.read_bytes() == payload
    assert "100.0%" in bar.getvalue()
    assert not list((tmp_path / "user").glob("*.part"))


def test_a_failed_download_leaves_nothing(file_server, tmp_path):
    _, url = file_server
    with pytest.raises(OSError):
        download(f"{url}/missing.gguf", tmp_path / "m.gguf", out=io.StringIO())
    assert not list(tmp_path.glob("m.gguf*"))


def test_pull_from_a_mirror(file_server, tmp_path):
    root, url = file_server
    model = VISION_MODELS["smolvlm-256m"]
    repo = root / model.repo / "resolve" / "main"
    repo.mkdir(parents=True)
    (repo / model.model_file).write_bytes(b"gguf model")
    (repo / model.mmproj_file).write_bytes(b"gguf projector")
    out = io.StringIO()
    assert pull("smolvlm-256m", dest_dir=tmp_path / "user", out=out, base_url=url) == 0
    assert (tmp_path / "user" / model.mmproj_file).read_bytes() == b"gguf projector"
    assert "--mmproj" in out.getvalue()
