"""Training through a model's endpoint (pgn.blackbox): SPSA-GC as BlackVIP steps it, the query budget, and
a run through a real ``pgn serve`` on loopback whose weights the client never opens, killed and resumed."""
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
import torch
from helpers import one_line_error, pgn, start_pgn_serve, stop_server

from pgn.blackbox import (
    HashedSubspace,
    MeteredEndpoint,
    ModelInput,
    QueryBudget,
    QueryLedger,
    SPSAConfig,
    ZerothOrderConfig,
    train_zeroth_order,
)
from pgn.blackbox.budget import BudgetExhausted
from pgn.blackbox.spsa import SPSA
from pgn.client import CallableEndpoint
from pgn.errors import EndpointError, PGNError
from pgn.methods import method_config_of

# --------------------------------------------------------------------------- the optimiser


def test_spsa_gc_steps_as_blackvip_writes_it():
    """Two steps by hand: a_k = a/(k+o)^alpha, c_k = c/k^gamma, m_1 = g_1, m_2 = beta m_1 + g_2, w -= a_k (g + beta m)."""
    cfg = SPSAConfig(a=0.1, c=0.05, o=1.0, alpha=0.4, gamma=0.1, q=2, momentum=0.9)
    spsa = SPSA(cfg, 3)
    w = torch.tensor([1.0, -2.0, 0.5])
    deltas = torch.tensor([[1.0, -0.5, 0.75], [-0.6, 1.0, -1.0]])
    plus, minus = torch.tensor([1.2, 0.7]), torch.tensor([1.0, 0.9])
    w1 = spsa.step(w, 1, deltas, plus, minus)
    c1 = 0.05 / 1 ** 0.1
    g1 = ((plus - minus)[:, None] / (2 * c1 * deltas)).mean(0)
    torch.testing.assert_close(w1, w - 0.1 / 2 ** 0.4 * (g1 + 0.9 * g1))
    w2 = spsa.step(w1, 2, deltas, minus, plus)
    c2 = 0.05 / 2 ** 0.1
    g2 = ((minus - plus)[:, None] / (2 * c2 * deltas)).mean(0)
    m2 = 0.9 * g1 + g2
    torch.testing.assert_close(w2, w1 - 0.1 / 3 ** 0.4 * (g2 + 0.9 * m2))
    d = spsa.directions(torch.Generator().manual_seed(0))
    assert d.shape == (2, 3) and bool(((d.abs() >= 0.5) & (d.abs() <= 1)).all())  # BlackVIP's segmented uniform


def test_blackvips_defaults():
    assert (SPSAConfig().o, SPSAConfig().c, SPSAConfig().a, SPSAConfig().alpha, SPSAConfig().gamma) == \
        (1.0, 0.01, 0.01, 0.4, 0.1)
    assert SPSAConfig().q == 5 and SPSAConfig().momentum == 0.9 and SPSAConfig().gradient_correction


@pytest.mark.parametrize("subspace", [0, 8])
def test_spsa_descends_a_quadratic_in_full_and_in_a_subspace(subspace):
    """200 steps on ||w - t||^2 with n = 64 parameters: to the minimum, or in a subspace to its best point there."""
    n = 64
    g = torch.Generator().manual_seed(0)
    target = torch.randn(n, generator=g)
    cfg = SPSAConfig(a=0.01, c=0.05, q=4, subspace=subspace)
    space = HashedSubspace(torch.zeros(n), subspace, seed=1) if subspace else None
    x = torch.zeros(subspace or n)
    spsa = SPSA(cfg, x.numel())

    def loss(v):
        w = space.expand(v) if space else v
        return float(((w - target) ** 2).sum())

    floor = 0.0
    if space:  # each coordinate's best value: the mean of its parameters' signed targets
        best = torch.zeros(subspace).index_add_(0, space.bucket, space.sign * target) / \
            torch.bincount(space.bucket, minlength=subspace).clamp(min=1)
        floor = loss(best)
    start = loss(x)
    for k in range(1, 201):
        _, c_k = cfg.gains(k)
        deltas = spsa.directions(g)
        plus = torch.tensor([loss(x + c_k * d) for d in deltas])
        minus = torch.tensor([loss(x - c_k * d) for d in deltas])
        x = spsa.step(x, k, deltas, plus, minus)
    assert loss(x) - floor < 0.01 * (start - floor)


# --------------------------------------------------------------------------- the budget


def test_a_failed_call_is_counted_as_sent_never_as_answered_and_the_budget_is_never_exceeded():
    faults = iter([ConnectionError("dropped"), TimeoutError("slow")])
    waits = []

    def model(canvases):
        fault = next(faults, None)
        if fault is not None:
            raise fault
        return np.ones((len(canvases), 4), np.float32)

    metered = MeteredEndpoint(CallableEndpoint(model), QueryBudget(max_queries=20), retries=2, backoff=0.25,
                              sleep=waits.append)
    x = np.zeros((4, 8, 8, 3), np.uint8)
    assert metered.scores(x).shape == (4, 4)
    assert metered.ledger == QueryLedger(calls_sent=3, images_sent=12, calls_answered=1, images_answered=4,
                                         calls_failed=2)
    assert waits == [0.25, 0.5]  # exponential backoff
    metered.scores(x[:2])  # 14 of 20
    metered.scores(x[:4])  # 18 of 20
    with pytest.raises(BudgetExhausted):
        metered.scores(x[:4])  # 22 would not fit: refused before it is sent
    assert metered.ledger.images_sent == 18


def test_faults_that_outlive_their_retries_and_faults_that_cannot_heal():
    def broken(canvases):
        raise ConnectionError("connection reset")

    metered = MeteredEndpoint(CallableEndpoint(broken), retries=1, sleep=lambda s: None)
    with pytest.raises(EndpointError, match="failed 2 times in a row"):
        metered.scores(np.zeros((1, 8, 8, 3), np.uint8))
    assert metered.ledger.calls_failed == metered.ledger.calls_sent == 2 and metered.ledger.calls_answered == 0

    def bad_request(canvases):
        raise EndpointError("http://m answered 422: wrong image size")

    metered = MeteredEndpoint(CallableEndpoint(bad_request), retries=3, sleep=lambda s: None)
    with pytest.raises(EndpointError, match="422"):
        metered.scores(np.zeros((1, 8, 8, 3), np.uint8))
    assert metered.ledger.calls_sent == 1  # a 4xx is not retried


# --------------------------------------------------------------------------- training through a callable


def _same_adapter(a, b) -> None:
    """Bit-equal tensors and config (safetensors' metadata order is not stable, so not the file's bytes)."""
    from safetensors.torch import load_file

    ta, tb = load_file(a / "adapter.safetensors"), load_file(b / "adapter.safetensors")
    assert list(ta) == list(tb) and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert (a / "adapter_config.json").read_bytes() == (b / "adapter_config.json").read_bytes()


SIZE, CELL = 32, 8
MEAN = STD = (0.5, 0.5, 0.5)


def _linear_model(classes: int = 10, seed: int = 0):
    """A fixed 'hosted model': (B, 32, 32, 3) uint8 -> (B, classes) scores, a random linear map of the pixels."""
    w = np.random.default_rng(seed).standard_normal((SIZE * SIZE * 3, classes)).astype(np.float32) / 100

    def model(canvases):
        return (canvases.reshape(len(canvases), -1).astype(np.float32) / 255 - 0.5) @ w
    return model


@pytest.fixture(scope="module")
def digits():
    from pgn.data import build_dataset

    return build_dataset("digits", img_size=SIZE, mean=MEAN, std=STD, train_limit=40, test_limit=20)


def _cfg(**kw):
    return ZerothOrderConfig(**{"steps": 4, "batch_size": 8, "spsa": SPSAConfig(q=2, c=0.2, a=0.05),
                                "progress": False, **kw})


METHODS = {
    "vp": dict(pad=4, bounded=True),
    "iip": dict(num_prompts=4, library_space="pixel", layout="frame"),
    "pgn": dict(num_prompts=4, library_size=8, library_space="pixel", layout="frame", generator_size=32,
                widths=(4, 8, 8, 8)),
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_pixel_prompt_trains_through_a_callable_and_the_same_seed_gives_the_same_run(method, digits, tmp_path):
    mi = ModelInput(MEAN, STD, SIZE, CELL)
    m = method_config_of(method, **METHODS[method])
    cfg = _cfg(spsa=SPSAConfig(q=2, c=0.2, a=0.05, subspace=16 if method == "pgn" else 0))
    rows = [train_zeroth_order(CallableEndpoint(_linear_model()), digits, m, mi, tmp_path / str(i), cfg)
            for i in range(2)]
    assert rows[0] == rows[1]
    _same_adapter(tmp_path / "0", tmp_path / "1")
    row = rows[0]
    # No probe, no setup pass: 4 steps x 2q calls of 8 images, then 20 test images in 3 calls; and 1 probe image.
    assert (row["calls"], row["images_sent"]) == (1 + 4 * 4 + 3, 1 + 4 * 4 * 8 + 20)
    assert row["stopped"] == "done" and 0 <= row["test_top1"] <= 1
    rows_file = [json.loads(r) for r in (tmp_path / "0" / "metrics.jsonl").read_text().splitlines()]
    assert rows_file[-1] == row and {"calls", "images_sent", "train_top1"} <= set(rows_file[-1])
    from pgn.blackbox import load_trained

    adapter = load_trained(tmp_path / "0")
    assert adapter.deploy.answers == "scores" and adapter.deploy.outputs == 10
    # Deployed as trained: the client composes the canvases the trainer sent (IIP's free patches included), so
    # its test top-1 through the same model is the run's, image for image.
    from pgn.client import RemoteClassifier

    with RemoteClassifier(adapter, CallableEndpoint(_linear_model())) as remote:
        # the run records its top-1 in float32: equal within that, where one image of 20 is 0.05
        assert remote.evaluate(digits.test, batch=8, progress=False)["top1"] == pytest.approx(row["test_top1"],
                                                                                              abs=1e-6)


def test_the_readout_baseline_costs_one_query_per_training_image_and_warm_starts_a_prompt(digits, tmp_path):
    mi = ModelInput(MEAN, STD, SIZE, CELL, outputs=10)
    model = _linear_model()
    row = train_zeroth_order(CallableEndpoint(model), digits, method_config_of("linear"), mi, tmp_path / "readout",
                             _cfg(readout_epochs=30, head_lr=0.05))
    assert row["images_sent"] == len(digits.train) + len(digits.test)
    assert row["train_top1"] > 0.5  # exact gradients on 40 images' scores
    # The prompt trained through the endpoint with that readout as its head: only the prompt's gradient is estimated.
    row2 = train_zeroth_order(CallableEndpoint(model), digits, method_config_of("vp", **METHODS["vp"]), mi,
                              tmp_path / "vp", _cfg(), init=tmp_path / "readout")
    assert row2["stopped"] == "done"
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "readout" / "adapter.safetensors"), load_file(tmp_path / "vp" / "adapter.safetensors")
    assert not torch.equal(a["head.fc.weight"], b["head.fc.weight"])  # the readout kept learning, exactly
    # Or the readout fitted first on the prompt's own canvases as built: one more query per training image.
    row3 = train_zeroth_order(CallableEndpoint(model), digits, method_config_of("pgn", **METHODS["pgn"]), mi,
                              tmp_path / "pgn", _cfg(readout_warmup=True, readout_epochs=30, head_lr=0.05,
                                                     spsa=SPSAConfig(q=2, c=0.2, a=0.01, subspace=16)))
    assert row3["images_sent"] == 40 + 4 * 4 * 8 + 20
    assert json.loads((tmp_path / "pgn" / "metrics.jsonl").read_text().splitlines()[0])["train_top1"] > 0.3


def test_the_label_mapping_is_fitted_from_the_endpoints_answers(digits, tmp_path):
    mi = ModelInput(MEAN, STD, SIZE, CELL, outputs=10)
    m = method_config_of("vp", **METHODS["vp"], head="labelmap-flm")
    row = train_zeroth_order(CallableEndpoint(_linear_model()), digits, m, mi, tmp_path / "r", _cfg())
    assert row["images_sent"] == 40 + 4 * 4 * 8 + 20  # the fit is one pass over the training images
    from pgn.blackbox import load_trained

    assert bool(load_trained(tmp_path / "r").head.fitted)


def test_probabilities_are_read_as_log_probabilities_and_a_top_label_is_refused(digits, tmp_path):
    mi = ModelInput(MEAN, STD, SIZE, CELL, outputs=10)
    m = method_config_of("vp", **METHODS["vp"])
    base = _linear_model()
    softmax = lambda c: torch.softmax(torch.from_numpy(base(c)), 1).numpy()  # noqa: E731
    row = train_zeroth_order(CallableEndpoint(softmax), digits, m, mi, tmp_path / "p", _cfg(answers="probabilities"))
    assert row["stopped"] == "done"
    one_hot = lambda c: np.eye(10, dtype=np.float32)[base(c).argmax(1)]  # noqa: E731
    with pytest.raises(PGNError, match="top label only.*a score per class"):
        train_zeroth_order(CallableEndpoint(one_hot), digits, m, mi, tmp_path / "t", _cfg())
    assert not (tmp_path / "t").exists()  # nothing half-written


def test_the_budget_stops_the_run_cleanly_and_exactly(digits, tmp_path, caplog):
    mi = ModelInput(MEAN, STD, SIZE, CELL, outputs=10)
    m = method_config_of("vp", **METHODS["vp"])
    # A step costs 4 calls of 8 images; the final evaluation 20 images in 3 calls is held back.
    with caplog.at_level("INFO", logger="pgn"):
        row = train_zeroth_order(CallableEndpoint(_linear_model()), digits, m, mi, tmp_path / "b",
                                 _cfg(steps=100, max_queries=200, log_every=2))
    assert row["stopped"] == "budget" and row["step"] == 5 and row["images_sent"] == 5 * 32 + 20 <= 200
    assert "stopped at the query budget after step 5" in caplog.text
    sent = []
    counted = CallableEndpoint(lambda c: sent.append(len(c)) or _linear_model()(c))
    again = train_zeroth_order(counted, digits, m, mi, tmp_path / "b", _cfg(steps=100, max_queries=200, log_every=2),
                               resume=True)
    assert again == row and not sent  # the budget is still spent: nothing is sent
    more = train_zeroth_order(counted, digits, m, mi, tmp_path / "b", _cfg(steps=100, max_queries=264, log_every=2),
                              resume=True)  # a larger budget: two more steps and the evaluation again
    assert (more["step"], more["images_sent"], sum(sent)) == (7, 264, 2 * 32 + 20)
    with pytest.raises(PGNError, match="does not cover the setup"):
        train_zeroth_order(CallableEndpoint(_linear_model()), digits, m, mi, tmp_path / "c", _cfg(max_queries=19))
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("method, options, message", [
    ("vp", dict(pad=4), "bounded"),
    ("pgn", dict(num_prompts=4, library_size=8), "library_space=pixel"),
    ("iip", dict(num_prompts=4, library_space="pixel", layout="frame", head="zeroshot"), "text tower"),
    ("finetune", {}, "cannot train through an endpoint"),
])
def test_methods_that_cannot_train_through_an_endpoint_are_one_line_errors(method, options, message, digits, tmp_path):
    with pytest.raises(PGNError, match=message):
        train_zeroth_order(CallableEndpoint(_linear_model()), digits, method_config_of(method, **options),
                           ModelInput(MEAN, STD, SIZE, CELL, outputs=10), tmp_path / "x", _cfg())
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- through a real pgn serve, no weights


AUDITED = """
import os, sys
weights = os.path.realpath(sys.argv[1])
def audit(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        if os.path.realpath(os.fsdecode(args[0])) == weights:
            sys.stderr.write("pgn: error: the client opened the model's weights\\n")
            os._exit(97)
sys.addaudithook(audit)
from pgn.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def _client(weights, *args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-c", AUDITED, str(weights), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


@pytest.fixture(scope="module")
def served_cnn(tmp_path_factory):
    """``pgn serve`` holding the tiny CNN's weights in a real file; the client must never open it. A PyTorch file,
    read through Python's ``open`` (an audited event; safetensors opens its files from Rust, unseen by audit hooks)."""
    from pgn.backbones import create_backbone

    weights = tmp_path_factory.mktemp("model") / "cnn.pth"
    torch.save(create_backbone("test-cnn-timm").model.state_dict(), weights)
    server, url = start_pgn_serve("test-cnn-timm", weights, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    yield url, weights
    stop_server(server)


def _served(url) -> int:
    return httpx.get(url + "/info").json()["images_served"]


TRAIN = ["train", "--zeroth-order", "--method", "vp", "--vp-pad", 8, "--vp-bounded", "--dataset", "digits",
         "--train-limit", 40, "--test-limit", 10, "--batch-size", 8, "--spsa-q", 2, "--spsa-c", 0.2,
         "--no-progress"]


def test_through_pgn_serve_the_weights_are_never_opened_and_the_budget_is_exact(served_cnn, tmp_path):
    url, weights = served_cnn
    before = _served(url)
    # A step: 2q = 4 calls of 8 images (32); the final evaluation: 10 images in 2 calls, held back.
    proc = _client(weights, *TRAIN, "--api", url, "--steps", 100, "--max-queries", 150, "--out", tmp_path / "run")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    row = json.loads(out.strip().splitlines()[-1])
    assert row["stopped"] == "budget" and row["step"] == 4
    assert row["images_sent"] == 4 * 32 + 10 <= 150 < 4 * 32 + 10 + 32
    assert _served(url) - before == row["images_sent"]  # the server counted exactly what the ledger did
    assert json.loads((tmp_path / "run" / "queries.json").read_text())["images_sent"] == row["images_sent"]
    assert "stopped at the query budget after step 4" in out
    # What was trained is what deploys: the same endpoint, the same test images, the same accuracy.
    from pgn.blackbox import load_trained
    from pgn.client import RemoteClassifier
    from pgn.data import build_dataset

    adapter = load_trained(tmp_path / "run")
    test = build_dataset("digits", img_size=adapter.img_size, mean=adapter.mean, std=adapter.std, train_limit=40,
                         test_limit=10).test
    assert RemoteClassifier(adapter, url).evaluate(test, batch=8, progress=False)["top1"] == pytest.approx(
        row["test_top1"])
    # The audit can fail: a command that builds the model does open its weights, and is stopped.
    control = _client(weights, "train", "--backbone", "test-cnn-timm", "--weights", weights, "--method", "vp",
                      "--dataset", "digits", "--train-limit", 8, "--test-limit", 8, "--out", tmp_path / "gradients")
    _, err = control.communicate(timeout=600)
    assert control.returncode == 97 and "opened the model's weights" in err


def test_through_pgn_serve_a_killed_run_resumes_bit_exactly(served_cnn, tmp_path):
    url, weights = served_cnn
    steps = 30
    whole = _client(weights, *TRAIN, "--api", url, "--steps", steps, "--out", tmp_path / "whole")
    assert whole.wait(timeout=600) == 0, whole.stderr.read()
    killed = _client(weights, *TRAIN, "--api", url, "--steps", steps, "--out", tmp_path / "killed")
    checkpoints = tmp_path / "killed" / "checkpoints"
    for _ in range(6000):
        if killed.poll() is not None or any(p.name >= "epoch-0003" for p in checkpoints.glob("epoch-*")):
            break
        time.sleep(0.02)
    assert killed.poll() is None, "the run finished before it could be killed"
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    resumed = _client(weights, "train", "--zeroth-order", "--resume", "--out", tmp_path / "killed", "--no-progress")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert "resumed" in out
    _same_adapter(tmp_path / "killed", tmp_path / "whole")
    ledger = json.loads((tmp_path / "killed" / "queries.json").read_text())
    # Every call sent before the kill is counted, also those whose step the resume sent again.
    assert ledger["images_sent"] >= json.loads((tmp_path / "whole" / "queries.json").read_text())["images_sent"]


def test_cli_misuse_is_one_line(served_cnn, tmp_path):
    url, _ = served_cnn
    assert "add --zeroth-order" in one_line_error(pgn("train", "--api", url, "--method", "vp", "--out", tmp_path / "a"))
    assert "--api" in one_line_error(pgn("train", "--zeroth-order", "--out", tmp_path / "b"))
    r = pgn(*TRAIN[:3], "pgn", "--api", url, "--out", tmp_path / "c")
    assert "--library-space pixel" in one_line_error(r)
    r = pgn(*TRAIN, "--api", url, "--batch-size", 100, "--out", tmp_path / "d")
    assert "more than" in one_line_error(r)
    assert not any((tmp_path / n).exists() for n in "abcd")


def test_through_a_real_kserve_server_the_call_budget_is_exact(tmp_path):
    """The Open Inference Protocol (KServe): no preprocessing published, so it is given; the width is probed."""
    from helpers import start_kserve

    proc, url = start_kserve("test-cnn-timm", "cnn", "scores")
    try:
        # 1 probe call, 4 calls a step, 2 evaluation calls held back: 10 calls fit one step, not two.
        r = pgn("train", "--api", url, "--api-kind", "oip", "--api-model", "cnn", "--zeroth-order", "--method", "vp",
                "--vp-pad", 8, "--vp-bounded", "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5", "--img-size", 64,
                "--cell-size", 8, "--dataset", "digits", "--train-limit", 20, "--test-limit", 10, "--steps", 5,
                "--batch-size", 8, "--spsa-q", 2, "--max-calls", 10, "--no-progress", "--out", tmp_path / "run")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout.strip().splitlines()[-1])
    assert (row["step"], row["calls"], row["stopped"]) == (1, 7, "budget")
    from pgn.blackbox import load_trained

    assert load_trained(tmp_path / "run").deploy.outputs == 1000  # probed from the first answer
