"""Data-parallel training: 2 CPU processes (torchrun, gloo) train exactly like 1 process with the global batch.

One ``torchrun --nproc_per_node=2`` launch runs every distributed scenario (PGN, IIP, VP,
fine-tuning, a resumed PGN run, a cached-features linear probe, a NaN on one rank) through
:func:`pgn.training.run_training`, while this process trains the single-process references.
Two more launches check that a rank that crashes, or hangs, ends the whole job quickly.

Tolerance: the 2-process run adds the two ranks' gradients in another order than one
process summing its batch (DDP averages two half-batch means; SyncBatchNorm adds two
half-batch sums; each process also runs single-threaded), so float32 rounding differs at
about 1e-7 relative per step; after 6 SGD steps the largest difference seen is 3e-7,
far below ``ATOL = 1e-5``. A wrong data split, a missing gradient average or
unsynchronised BatchNorm shows up at 1e-4 or more (without SyncBatchNorm: 1.7e-4), and
every checked part moves by more than 1e-3, so the comparison is not vacuous.
"""
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from helpers import (
    DIST_BATCH,
    DIST_EPOCHS,
    DIST_N_TRAIN,
    DIST_OTHER_METHODS,
    DIST_WORLD,
    LabelledImages,
    exact_config,
    fresh_classifier,
    labelled_data,
)
from torch.utils.data import Dataset

from pgn.training import TrainConfig, read_metrics, run_training
from pgn.training.distributed import DistContext, all_reduce_sum, init_distributed

TESTS = Path(__file__).resolve().parent
TORCHRUN = Path(sys.executable).with_name("torchrun")
if not TORCHRUN.exists():  # pragma: no cover - installed with torch
    pytest.skip("torchrun is not installed next to this Python", allow_module_level=True)
ATOL = 1e-5


# The run's files: the last epoch's checkpoint directory, the adapter and metrics derived from it, the lock file.
def run_files(epochs: int = DIST_EPOCHS) -> set[str]:
    return {".pgn.lock", ".pgn-run", "adapter.safetensors", "adapter_config.json", "config.json", "metrics.jsonl",
            *(f"checkpoints/epoch-{epochs:04d}/{f}" for f in ("adapter.safetensors", "adapter_config.json",
                                                             "trainer_state.pt", "metrics.json"))}


RUN_FILES = run_files()


class InOrder(Dataset):
    """Serves ``base[order[0]], base[order[1]], ...`` whatever index is asked for.

    The single-process reference reads its training set through this, so its global
    batches hold exactly the samples the ranks' DistributedSamplers give them.
    """

    def __init__(self, base, order):
        self.base, self.order, self.pos = base, list(order), 0

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        item = self.base[self.order[self.pos]]
        self.pos += 1
        return item


def distributed_order(n: int, world: int, batch: int, seed: int, epochs: int) -> list[int]:
    """Global sample order of a ``world``-process run: per step, rank 0's local batch, then rank 1's, ..."""
    order = []
    for epoch in range(epochs):
        # DistributedSampler: one permutation seeded seed + epoch; rank r takes positions r, r + world, ...
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        shards = [perm[r::world] for r in range(world)]
        for k in range(0, len(shards[0]), batch):
            for shard in shards:
                order += shard[k:k + batch]
    return order


WORKER = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import helpers as H
    from pgn.training import read_metrics, run_training

    rank = int(os.environ["RANK"])
    base, mode = Path(sys.argv[1]), sys.argv[2]
    scratch = base / f"scratch{{rank}}"
    scratch.mkdir(parents=True, exist_ok=True)
    os.chdir(scratch)  # anything written relative to the working directory would show up here

    def run_dir(name):
        # Only rank 0 may write: the other ranks get a directory of their own, which must never appear.
        return base / (name if rank == 0 else f"{{name}}-rank{{rank}}")

    def say(line):  # one write per line: the two ranks share the pipe
        sys.stdout.write(line + "\\n")
        sys.stdout.flush()

    def log(*args):
        say(" ".join([f"LOG{{rank}}", *map(str, args)]))

    def report(name, row):
        say(f"ROW{{rank}} {{name}} " + json.dumps(row))

    if mode in ("crash", "hang"):  # rank 1 fails at step 2 (on reading the first sample of its 2nd batch)
        model, acfg = H.fresh_classifier("pgn")
        failing = H.FailAt(H.LabelledImages(H.DIST_N_TRAIN, 0), fail_at=H.DIST_BATCH + 1, rank=rank, hang=mode == "hang")
        run_training(model, acfg, H.labelled_data(failing if rank == 1 else None), H.exact_config(H.DIST_BATCH),
              run_dir("crash"), log=log)
        raise SystemExit("the failure was not raised")

    model, acfg = H.fresh_classifier("pgn")
    report("pgn", run_training(model, acfg, H.labelled_data(), H.exact_config(H.DIST_BATCH), run_dir("pgn"), log=log))
    assert all(type(getattr(model, n)).__name__ != "DistributedDataParallel" for n in ("prompts", "head"))
    assert not any("Sync" in type(m).__name__ for m in model.modules()), "SyncBatchNorm left in the model"

    # Resuming: 1 epoch, then on to 2, must equal 2 epochs straight (a constant lr, so that the
    # schedule does not depend on the number of epochs asked for).
    model, acfg = H.fresh_classifier("pgn")
    report("const", run_training(model, acfg, H.labelled_data(), H.exact_config(H.DIST_BATCH, final_lr_ratio=1.0),
                          run_dir("const"), log=log))
    model, acfg = H.fresh_classifier("pgn")
    run_training(model, acfg, H.labelled_data(), H.exact_config(H.DIST_BATCH, epochs=1, final_lr_ratio=1.0),
          run_dir("resume"), log=log)
    model, acfg = H.fresh_classifier("pgn")  # a new process's view: everything comes from the checkpoint
    report("resume", run_training(model, acfg, H.labelled_data(), H.exact_config(H.DIST_BATCH, final_lr_ratio=1.0), run_dir("resume"),
                           resume=True, log=log))

    model, acfg = H.fresh_classifier("linear")  # linear probe on cached features, one full batch per step
    report("linear", run_training(model, acfg, H.labelled_data(),
                                  H.exact_config(H.DIST_N_TRAIN // H.DIST_WORLD, lr_scaling="linear", lr=0.05),
                                  run_dir("linear"), log=log))

    for method in H.DIST_OTHER_METHODS:  # one epoch of each other trained method
        model, acfg = H.fresh_classifier(method)
        report(method, run_training(model, acfg, H.labelled_data(), H.exact_config(H.DIST_BATCH, epochs=1, lr=H.DIST_OTHER_METHODS[method]),
                             run_dir(method), log=log))

    from pgn.training.distributed import DataParallelModel, init_distributed
    ctx = init_distributed("cpu")  # the group run_training() made
    for method in ("pgn", "linear", "finetune"):
        model, _ = H.fresh_classifier(method)
        parts = DataParallelModel(model, model, ctx)
        wrapper = type(parts.forward).__name__
        synced = parts.synchronised
        norms = sorted({{type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__}} - {{"LayerNorm"}})
        parts.close()
        after = sorted({{type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__}} - {{"LayerNorm"}})
        assert parts.forward is model
        say(f"WRAPPED{{rank}} {{method}} " + json.dumps([wrapper, synced, norms, after]))
    del parts

    from pgn import PGNError
    model, acfg = H.fresh_classifier("pgn")  # NaN on rank 1 only: both ranks stop together with the one-line error
    try:
        run_training(model, acfg, H.labelled_data(H.Poisoned(H.DIST_N_TRAIN, 0) if rank == 1 else None),
              H.exact_config(H.DIST_BATCH), run_dir("nan"), log=log)
    except PGNError as e:
        say(f"NAN{{rank}} {{e}}")
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(base: Path, mode: str, dist_timeout_s: int = 20) -> subprocess.Popen:
    script = base / "worker.py"
    script.write_text(WORKER.format(tests=str(TESTS)))
    env = {**os.environ, "PGN_DIST_TIMEOUT": str(dist_timeout_s), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    cmd = [str(TORCHRUN), f"--nproc_per_node={DIST_WORLD}", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
           "--monitor_interval=0.5", str(script), str(base), mode]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "adapter.safetensors"))


def assert_same_weights(got: dict, want: dict, atol: float = ATOL) -> float:
    assert got.keys() == want.keys()
    worst = 0.0
    for k, w in want.items():
        if k.endswith("num_batches_tracked"):
            assert torch.equal(got[k], w), k
            continue
        diff = (got[k].double() - w.double()).abs().max().item()
        worst = max(worst, diff)
        assert diff <= atol, f"{k}: max |2-process - 1-process| = {diff:.2e} > {atol}"
    return worst


def rows_by_rank(stdout: str) -> dict[tuple[int, str], dict]:
    rows = {}
    for m in re.finditer(r"^ROW(\d+) (\w+) (.*)$", stdout, re.MULTILINE):
        rows[int(m.group(1)), m.group(2)] = json.loads(m.group(3))
    return rows


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    """The 2-process runs (torchrun) and, meanwhile, the 1-process references."""
    base = tmp_path_factory.mktemp("dist")
    t0 = time.monotonic()
    proc = torchrun(base, "train")
    try:
        ref = tmp_path_factory.mktemp("ref")
        model, acfg = fresh_classifier("pgn")
        init = {k: v.clone() for k, v in model.trainable_modules().state_dict().items()}
        order = distributed_order(DIST_N_TRAIN, DIST_WORLD, DIST_BATCH, seed=0, epochs=DIST_EPOCHS)
        run_training(model, acfg, labelled_data(InOrder(LabelledImages(DIST_N_TRAIN, 0), order)),
              exact_config(DIST_WORLD * DIST_BATCH), ref / "pgn", log=lambda *_: None)
        for method, lr in DIST_OTHER_METHODS.items():
            model, acfg = fresh_classifier(method)
            order = distributed_order(DIST_N_TRAIN, DIST_WORLD, DIST_BATCH, seed=0, epochs=1)
            run_training(model, acfg, labelled_data(InOrder(LabelledImages(DIST_N_TRAIN, 0), order)),
                  exact_config(DIST_WORLD * DIST_BATCH, epochs=1, lr=lr), ref / method, log=lambda *_: None)
        model, acfg = fresh_classifier("linear")
        # Linear scaling at one process is no scaling: the reference gets lr 0.05 x 2 directly.
        run_training(model, acfg, labelled_data(), exact_config(DIST_N_TRAIN, lr=0.1), ref / "linear", log=lambda *_: None)
        stdout, stderr = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{stdout[-3000:]}\n{stderr[-6000:]}"
    return {"base": base, "ref": ref, "init": init, "stdout": stdout, "seconds": time.monotonic() - t0}


def test_two_processes_match_one_process_with_the_global_batch(two_process_runs):
    base, ref = two_process_runs["base"], two_process_runs["ref"]
    got, want = weights(base / "pgn"), weights(ref / "pgn")
    worst = assert_same_weights(got, want)
    # Not vacuous: the generator, the library and the head all moved far more than the tolerance.
    init = two_process_runs["init"]
    for key in ("prompts.library.tokens", "prompts.net.stem.0.weight", "head.fc.weight",
                "prompts.net.stem.1.running_mean", "prompts.net.stages.3.body.4.running_var"):
        assert (want[key] - init[key]).abs().max() > 100 * ATOL, key
    assert int(got["prompts.net.stem.1.num_batches_tracked"]) == DIST_EPOCHS * DIST_N_TRAIN // (DIST_WORLD * DIST_BATCH)
    print(f"max weight difference 2 x {DIST_BATCH} vs 1 x {DIST_WORLD * DIST_BATCH}: {worst:.2e}")

    # Metrics are over the global batch and the whole test set (7 images, sharded 4 + 3, none twice).
    rows, ref_rows = read_metrics(base / "pgn"), read_metrics(ref / "pgn")
    assert len(rows) == len(ref_rows) == DIST_EPOCHS
    for r, q in zip(rows, ref_rows):
        assert r["test_top1"] == q["test_top1"] and r["test_top5"] == q["test_top5"]
        for key in ("test_loss", "train_loss", "train_top1", "lr"):
            assert r[key] == pytest.approx(q[key], abs=1e-5), key


def test_every_rank_returns_the_same_row(two_process_runs):
    rows = rows_by_rank(two_process_runs["stdout"])
    for name in ("pgn", "resume", "linear", *DIST_OTHER_METHODS):
        a, b = rows[0, name], rows[1, name]
        assert {k: v for k, v in a.items() if "seconds" not in k and "per_s" not in k} == \
               {k: v for k, v in b.items() if "seconds" not in k and "per_s" not in k}
    assert rows[0, "pgn"] == read_metrics(two_process_runs["base"] / "pgn")[-1]


@pytest.mark.parametrize("method", list(DIST_OTHER_METHODS))
def test_other_methods_match_too(two_process_runs, method):
    got = weights(two_process_runs["base"] / method)
    assert_same_weights(got, weights(two_process_runs["ref"] / method))
    start = fresh_classifier(method)[0].adapter_state()  # the same seeded initial weights both runs started from
    assert any(not torch.equal(got[k], start[k]) for k in got), "training did not move any weight"


def test_one_wrapper_synchronises_only_the_trained_parts(two_process_runs):
    wrapped = {m.group(1): json.loads(m.group(2))
               for m in re.finditer(r"^WRAPPED0 (\w+) (.*)$", two_process_runs["stdout"], re.MULTILINE)}
    # One DDP around the model; it averages the gradients of what trains (the frozen backbone has none).
    # Every BatchNorm (the generator's, the head's input normalisation) is synced while training, restored after.
    ddp = "DistributedDataParallel"
    assert wrapped["pgn"] == [ddp, ["head", "prompts"], ["_CPUSyncBatchNorm"], ["BatchNorm1d", "BatchNorm2d"]]
    assert wrapped["linear"] == [ddp, ["head"], ["_CPUSyncBatchNorm"], ["BatchNorm1d"]]
    assert wrapped["finetune"] == [ddp, ["backbone", "head"], ["_CPUSyncBatchNorm"], ["BatchNorm1d"]]


def test_resume_under_torchrun_continues_exactly(two_process_runs):
    base = two_process_runs["base"]
    assert [r["epoch"] for r in read_metrics(base / "resume")] == [1, 2]
    assert_same_weights(weights(base / "resume"), weights(base / "const"), atol=1e-6)
    rows = rows_by_rank(two_process_runs["stdout"])
    assert rows[0, "resume"]["train_loss"] == pytest.approx(rows[0, "const"]["train_loss"], abs=1e-6)


def test_linear_probe_on_cached_features(two_process_runs):
    base, ref = two_process_runs["base"], two_process_runs["ref"]
    assert_same_weights(weights(base / "linear"), weights(ref / "linear"))
    cfg = json.loads((base / "linear" / "config.json").read_text())
    assert cfg["distributed"] == {"world_size": 2, "global_batch_size": DIST_N_TRAIN, "lr_scale": 2}
    assert read_metrics(base / "linear")[-1]["features_cached"]


def test_nan_on_one_rank_stops_every_rank(two_process_runs):
    stdout = two_process_runs["stdout"]
    for rank in range(DIST_WORLD):
        line = re.search(rf"^NAN{rank} (.*)$", stdout, re.MULTILINE)
        assert line and line.group(1).startswith("loss became nan at epoch 1 step 1 (on at least one of 2 processes)")
    assert not (two_process_runs["base"] / "nan" / "metrics.jsonl").exists()


def test_only_rank_zero_logs_and_writes(two_process_runs):
    base, stdout = two_process_runs["base"], two_process_runs["stdout"]
    files = sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())
    # "nan" failed in its first epoch: a new run that never finished an epoch leaves nothing behind.
    want = sorted(["worker.py"] +
                  [f"{run}/{f}" for run in ("pgn", "const", "resume", "linear") for f in RUN_FILES] +
                  [f"{run}/{f}" for run in DIST_OTHER_METHODS for f in run_files(1)])
    assert files == want  # nothing from rank 1: no "-rank1" run dirs, nothing in its working directory
    assert not list((base / "scratch1").iterdir()) and not list((base / "scratch0").iterdir())
    assert "LOG0 global batch 8 = 2 x 4; lr 0.1 (scaling: none)" in stdout
    assert "LOG0 global batch 24 = 2 x 12; lr 0.1 = 0.05 x 2 (scaling: linear)" in stdout
    assert "LOG0 epoch 2/2" in stdout and "LOG0 resuming" in stdout
    assert "LOG1" not in stdout


@pytest.mark.parametrize("mode", ["crash", "hang"])
def test_a_failing_rank_ends_the_job(tmp_path, mode):
    """Rank 1 raises at step 2 (torchrun tears the job down) or hangs there (rank 0's collective times out)."""
    t0 = time.monotonic()
    proc = torchrun(tmp_path, mode, dist_timeout_s=5)
    try:
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0, stdout
    if mode == "crash":
        assert "injected failure on rank 1" in stderr, stderr[-4000:]
    else:
        assert re.search(r"timed out|timeout", stderr, re.IGNORECASE), stderr[-4000:]
    assert "ChildFailedError" in stderr  # torchrun's summary names the failed rank
    assert elapsed < 60, f"the job took {elapsed:.0f}s to end after a {mode}"
    assert not (tmp_path / "crash" / "metrics.jsonl").exists()  # it died in epoch 1, before any checkpoint


def test_single_process_context_is_a_no_op(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    ctx = init_distributed("cpu")
    assert ctx == DistContext() and ctx.is_main and not ctx.distributed
    t = torch.ones(3)
    assert all_reduce_sum(t) is t and torch.equal(t, torch.ones(3))
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert DistContext.from_env("cpu") == DistContext(rank=2, local_rank=0, world_size=4, device="cpu")


def test_lr_scaling_and_timeout_are_validated(monkeypatch):
    from pgn import PGNError
    from pgn.training.distributed import timeout_seconds

    assert TrainConfig(lr_scaling="linear").lr_scale(4) == 4 and TrainConfig().lr_scale(4) == 1
    with pytest.raises(PGNError, match="lr scaling"):
        TrainConfig(lr_scaling="sqrt")
    monkeypatch.setenv("PGN_DIST_TIMEOUT", "7.5")
    assert timeout_seconds() == 7.5
    monkeypatch.setenv("PGN_DIST_TIMEOUT", "soon")
    with pytest.raises(PGNError, match="PGN_DIST_TIMEOUT"):
        timeout_seconds()

