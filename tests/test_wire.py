"""The client trusts nothing that comes over the wire: a misbehaving Open Inference Protocol server on loopback
(a real HTTP server in a thread, one behaviour per model name) against the contract every endpoint's answer
must meet (pgn.client.wire): one row per canvas, the width the adapter reads, finite numbers of a numeric
datatype, a body cap and a total deadline. Each violation is one line naming the server; the command line
exits 2."""
import json
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from helpers import one_line_error, pgn

from pgn import PGNError
from pgn.client import CallableEndpoint, OpenInferenceEndpoint, RemoteClassifier
from pgn.client.wire import check_answer

FIXTURES = Path(__file__).parent / "fixtures"
LABELMAP_EXPORT = FIXTURES / "export-v1-labelmap"  # a pixel library on a 1000-score classifier, 3 classes


def _tensor(rows: int, width: int, fill=0.5, datatype="FP32") -> dict:
    return {"name": "scores", "shape": [rows, width], "datatype": datatype, "data": [fill] * (rows * width)}


_BOMB: list[bytes] = []


def _bomb() -> bytes:
    """300 MB of JSON whitespace, gzip-compressed a megabyte at a time (never held whole)."""
    if not _BOMB:
        z = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: the gzip container
        block = b" " * 2**20
        _BOMB.append(b"".join(z.compress(block) for _ in range(300)) + z.flush())
    return _BOMB[0]


def _answer(model: str, rows: int):
    """(status, headers, body bytes, drip) of each behaviour; ``rows``: the canvases the client sent."""
    ok = {"model_name": model, "outputs": [_tensor(rows, 1000)]}
    bodies = {
        "good": ok,
        "one-row": {"outputs": [_tensor(1, 1000)]},
        "more-rows": {"outputs": [_tensor(rows + 1, 1000)]},
        "narrow": {"outputs": [_tensor(rows, 9)]},
        "nan": {"outputs": [{**_tensor(rows, 1000), "data": [None] + [0.5] * (rows * 1000 - 1)}]},
        "inf": {"outputs": [{**_tensor(rows, 1000), "data": [1e400] * (rows * 1000)}]},
        "bytes": {"outputs": [_tensor(rows, 1000, datatype="BYTES")]},
        "strings": {"outputs": [{**_tensor(rows, 1000), "data": ["x"] * (rows * 1000)}]},
        "outputs-dict": {"outputs": {"scores": [1, 2]}},
        "outputs-str": {"outputs": "scores"},
        "no-shape": {"outputs": [{"name": "scores", "datatype": "FP32", "data": [0.5] * (rows * 1000)}]},
        "no-data": {"outputs": [{"name": "scores", "datatype": "FP32", "shape": [rows, 1000]}]},
        "list-body": [1, 2, 3],
        "null-body": None,
        "number-body": 7,
    }
    if model in bodies:
        return 200, {"Content-Type": "application/json"}, json.dumps(bodies[model]).encode(), None
    if model == "error-list":
        return 500, {"Content-Type": "application/json"}, b"[1, 2]", None
    if model == "not-found":
        return 404, {"Content-Type": "application/json"}, b'{"error": "model not-found is not loaded"}', None
    if model == "redirect":
        return 302, {"Location": "http://127.0.0.1:9/elsewhere"}, b"", None
    if model == "big":  # 300 MB of JSON whitespace, streamed: never held by the server
        return 200, {"Content-Type": "application/json"}, None, ("big", 300 * 2**20)
    if model == "gzip-bomb":  # a small compressed body (about 300 KB) that inflates to 300 MB
        return 200, {"Content-Type": "application/json", "Content-Encoding": "gzip"}, _bomb(), None
    if model == "drip":  # one byte every 0.5 s, for ever (the client's deadline must end it)
        return 200, {"Content-Type": "application/json"}, None, ("drip", 0.5)
    raise AssertionError(model)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_):
        pass

    def do_POST(self):  # noqa: N802 - the stdlib's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        rows = body["inputs"][0]["shape"][0]
        model = self.path.split("/")[3]
        status, headers, payload, stream = _answer(model, rows)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if stream is None:
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        self.send_header("Connection", "close")
        self.end_headers()
        kind, arg = stream
        try:
            if kind == "big":
                block = b" " * 2**20
                for _ in range(arg // len(block)):
                    self.wfile.write(block)
            else:
                for _ in range(600):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(arg)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client hung up: what it should do


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


CANVASES = np.zeros((4, 64, 64, 3), np.uint8)


def _remote(url: str, model: str, timeout: float = 60) -> RemoteClassifier:
    return RemoteClassifier(LABELMAP_EXPORT, OpenInferenceEndpoint(url, model, answers="scores", timeout=timeout))


def test_a_well_behaved_server_passes_the_contract(server):
    with _remote(server, "good") as remote:
        scores = remote.scores_of_canvases(CANVASES)
    assert scores.shape == (4, 3) and float(scores.max()) == 0.5  # 3 of the 1000 columns, through the label map


@pytest.mark.parametrize("model, message", [
    ("one-row", "answered 1 rows of .* for 4 images"),
    ("more-rows", "answered 5 rows of .* for 4 images"),
    ("narrow", "answered 9 scores .* but this adapter reads 1000"),
    ("nan", "not numbers|NaN"),
    ("inf", "infinite"),
    ("bytes", "datatype 'BYTES'"),
    ("strings", "not numbers"),
    ("outputs-dict", "'outputs' that is not a list"),
    ("outputs-str", "'outputs' that is not a list"),
    ("no-shape", "no valid 'shape'"),
    ("no-data", "no 'data' list"),
    ("list-body", "a JSON list, not an object"),
    ("null-body", "JSON null, not an object"),
    ("number-body", "a JSON int, not an object"),
    ("error-list", "answered 500"),
    ("not-found", "answered 404: model not-found is not loaded"),
    ("redirect", "answered 302 .*not followed"),
])
def test_every_broken_answer_is_one_line(server, model, message):
    with _remote(server, model) as remote:
        with pytest.raises(PGNError, match=message) as e:
            remote.scores_of_canvases(CANVASES)
    assert "\n" not in str(e.value) and server in str(e.value)
    # Only the service's own fault is worth sending again: the 5xx; a 4xx or a malformed answer would recur.
    assert e.value.transient is (model == "error-list")


def test_a_server_that_is_not_there_is_transient():
    from helpers import free_port

    with _remote(f"http://127.0.0.1:{free_port()}", "good") as remote:
        with pytest.raises(PGNError, match="is not reachable") as e:
            remote.scores_of_canvases(CANVASES)
    assert e.value.transient


@pytest.mark.parametrize("model", ["big", "gzip-bomb"])
def test_an_answer_past_the_byte_cap_is_cut_off(server, model, monkeypatch):
    import resource

    import pgn.client.wire as wire

    monkeypatch.setattr(wire, "MAX_RESPONSE_BYTES", 8 * 2**20)  # the cap the reader checks, smaller for a fast test
    _bomb()  # made before measuring: the server is in this process
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with _remote(server, model) as remote:
        with pytest.raises(PGNError, match="answered more than 8 MiB"):
            remote.scores_of_canvases(CANVASES)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100, grown_mb  # nowhere near the 300 MB the server offered


def test_a_server_that_drips_is_cut_off_at_the_deadline(server):
    start = time.monotonic()
    with _remote(server, "drip", timeout=3) as remote:
        with pytest.raises(PGNError, match="within 3 s") as e:
            remote.scores_of_canvases(CANVASES)
    assert time.monotonic() - start < 3 + 2  # the deadline, plus at most one byte's gap
    assert e.value.transient


@pytest.mark.parametrize("url", ["http://[::1", "ftp://127.0.0.1/", "", "127.0.0.1:8000"])
def test_a_malformed_url_is_one_line(url):
    with pytest.raises(PGNError, match="URL") as e:
        OpenInferenceEndpoint(url, "m")
    assert "\n" not in str(e.value)


def test_a_callable_endpoint_meets_the_same_contract():
    for fn, message in [(lambda c: np.zeros((1, 1000)), "answered 1 rows"),
                        (lambda c: np.zeros((len(c), 11)), "answered 11 scores"),
                        (lambda c: np.full((len(c), 1000), np.nan), "NaN"),
                        (lambda c: [["a"] * 1000] * len(c), "not numbers")]:
        with pytest.raises(PGNError, match=message):
            RemoteClassifier(LABELMAP_EXPORT, CallableEndpoint(fn)).scores_of_canvases(CANVASES)


def test_check_answer_accepts_exactly_the_contract():
    ok = check_answer([[1, 2, 3], [4, 5, 6]], rows=2, width=3, where="w", what="scores")
    assert ok.dtype == np.float32 and ok.tolist() == [[1, 2, 3], [4, 5, 6]]
    for bad in ([[1, 2, 3]], [[1, 2], [3, 4]], [1, 2, 3], [[1, 2, float("inf")], [4, 5, 6]], [[1e39, 0, 0], [0, 0, 0]]):
        with pytest.raises(PGNError):
            check_answer(bad, rows=2, width=3, where="w", what="scores")


@pytest.mark.once
def test_pgn_predict_through_a_lying_server_exits_2_in_one_line(server, tmp_path):
    from PIL import Image

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((64, 64, 3), 40 * i, np.uint8)).save(paths[-1])
    common = ["predict", "--adapter", LABELMAP_EXPORT, *paths, "--api", server, "--api-kind", "oip"]
    for model, message in [("one-row", "answered 1 rows"), ("nan", "NaN|not numbers"), ("narrow", "answered 9 scores")]:
        r = pgn(*common, "--api-model", model)
        assert r.returncode == 2 and message.split("|")[0] in r.stderr or message.split("|")[-1] in r.stderr, r.stderr
        one_line_error(r)
    r = pgn(*common, "--api-model", "good")
    assert r.returncode == 0 and len(r.stdout.strip().splitlines()) == 3, r.stderr
