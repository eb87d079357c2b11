"""A remote model's faults do not lose a run trained through it: timeouts, 500s and dropped connections are
retried with backoff; a server that stays dead stops the run with one line and a checkpoint; the resume is
lossless (bit-equal to a run that met no fault). The server is real (HTTP on loopback, the Open Inference
Protocol), its faults injected by request number."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from helpers import free_port, one_line_error, pgn

from pgn.api import resume_through_api, train_through_api
from pgn.errors import PGNError
from pgn.training.checkpoint import latest_checkpoint

SIZE = 32
WEIGHTS = np.random.default_rng(0).standard_normal((SIZE * SIZE * 3, 10)).astype(np.float32) / 100


class _Handler(BaseHTTPRequestHandler):
    """``POST /v2/models/m/infer``: (B, 32, 32, 3) UINT8 -> (B, 10) FP32 scores of a fixed linear model, unless
    this request's number (1-based) has a fault: ``500``, ``slow`` (answers after the client's deadline),
    ``drop`` (closes the connection unanswered) or ``dead`` (the server stops listening)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *_):
        pass

    def do_POST(self):  # noqa: N802 - the stdlib's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        state = self.server.state
        with state["lock"]:
            state["requests"] += 1
            n = state["requests"]
        fault = state["faults"].get(n) or (state["from"][1] if state["from"] and n >= state["from"][0] else None)
        if fault == "dead":
            threading.Thread(target=lambda: (self.server.shutdown(), self.server.server_close())).start()
        if fault in ("drop", "dead"):
            self.close_connection = True
            self.connection.close()
            return
        if fault == "500":
            return self._send(500, {"error": "the model crashed"})
        if fault == "slow":
            time.sleep(1.5)
        tensor = body["inputs"][0]
        x = np.asarray(tensor["data"], np.float32).reshape(tensor["shape"])
        scores = (x.reshape(len(x), -1) / 255 - 0.5) @ WEIGHTS
        with state["lock"]:
            state["answered"] += 1
        self._send(200, {"model_name": "m", "outputs": [{"name": "scores", "shape": list(scores.shape),
                                                         "datatype": "FP32", "data": scores.reshape(-1).tolist()}]})

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up on a slow answer: what it should do


def _server(faults=None, fail_from=None):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.state = {"lock": threading.Lock(), "requests": 0, "answered": 0, "faults": faults or {}, "from": fail_from}
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def _train(url, out, **kw):
    options = dict(api_kind="oip", api_model="m", mean=(0.5,) * 3, std=(0.5,) * 3, img_size=SIZE, cell_size=8,
                   train_limit=40, test_limit=10, pad=4, bounded=True, steps=6, batch_size=8, spsa_q=2, spsa_c=0.2,
                   spsa_a=0.05, retries=3, backoff=0.01, timeout=0.5, progress=False)
    return train_through_api(url, "digits", "vp", out, **{**options, **kw})


def _tensors(run):
    from safetensors.torch import load_file

    return load_file(run / "adapter.safetensors")


def _same(a, b) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert list(ta) == list(tb) and all(torch.equal(ta[k], tb[k]) for k in ta)


@pytest.fixture(scope="module")
def fault_free(tmp_path_factory):
    httpd, url = _server()
    run = tmp_path_factory.mktemp("clean") / "run"
    row = _train(url, run)
    httpd.shutdown()
    httpd.server_close()
    return run, row


def test_timeouts_500s_and_dropped_connections_are_retried_and_change_nothing(fault_free, tmp_path):
    clean, clean_row = fault_free
    httpd, url = _server({3: "500", 4: "slow", 5: "drop", 9: "500"})
    try:
        row = _train(url, tmp_path / "run")
    finally:
        httpd.shutdown()
        httpd.server_close()
    _same(tmp_path / "run", clean)
    assert row["test_top1"] == clean_row["test_top1"] and row["stopped"] == "done"
    ledger = json.loads((tmp_path / "run" / "queries.json").read_text())
    assert ledger["calls_failed"] == 4 and ledger["calls_sent"] == ledger["calls_answered"] + 4
    assert ledger["images_sent"] == ledger["images_answered"] + 4 * 8  # a failed call is sent, never answered
    assert ledger["calls_answered"] == clean_row["calls"]
    assert httpd.state["answered"] == ledger["calls_answered"] + 1  # the slow answer came after the client gave up


@pytest.mark.parametrize("fault", ["500", "dead"])
def test_a_server_that_stays_down_stops_the_run_with_one_line_and_the_resume_is_lossless(fault, fault_free, tmp_path):
    clean, clean_row = fault_free
    # Request 1 is the probe (how many scores), then 4 calls per step: the fault starts inside step 3.
    httpd, url = _server(fail_from=(11, fault))
    with pytest.raises(PGNError) as err:
        _train(url, tmp_path / "run", retries=2)
    message = str(err.value)
    assert "\n" not in message and "failed 3 times in a row" in message and "resume" in message
    assert ("answered 500" if fault == "500" else "not reachable") in message  # the last attempt's fault
    assert latest_checkpoint(tmp_path / "run").name == "epoch-0002"  # the last finished step
    ledger = json.loads((tmp_path / "run" / "queries.json").read_text())
    assert ledger["calls_failed"] == 3 and ledger["calls_answered"] == 10
    if fault == "500":
        httpd.shutdown()
        httpd.server_close()
    healthy, url = _server()
    try:
        row = resume_through_api(tmp_path / "run", url)
    finally:
        healthy.shutdown()
        healthy.server_close()
    _same(tmp_path / "run", clean)
    assert row["test_top1"] == clean_row["test_top1"]
    ledger = json.loads((tmp_path / "run" / "queries.json").read_text())
    # Step 3's first call was answered before the fault; the resume sends the whole step again, and says so.
    assert ledger["calls_answered"] == clean_row["calls"] + 1 and ledger["calls_failed"] == 3


def test_no_server_at_all_is_one_line_from_the_cli_and_leaves_nothing(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    r = pgn("train", "--api", url, "--api-kind", "oip", "--api-model", "m", "--zeroth-order", "--method", "vp",
            "--vp-pad", 4, "--vp-bounded", "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5", "--img-size", SIZE,
            "--cell-size", 8, "--dataset", "digits", "--train-limit", 20, "--test-limit", 10, "--retries", 1,
            "--backoff", 0, "--out", tmp_path / "run")
    line = one_line_error(r)
    assert "not reachable" in line and "failed 2 times in a row" in line
    assert not (tmp_path / "run").exists()
    r = pgn("train", "--api", url, "--api-kind", "oip", "--api-model", "m", "--zeroth-order", "--method", "vp",
            "--vp-bounded", "--dataset", "digits", "--out", tmp_path / "run")
    assert "--mean, --std, --img-size" in one_line_error(r)
