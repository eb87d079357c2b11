import json
import math

import pytest
import torch
from helpers import ALL_TRAINED, RandomImages, adapter_cfg, make_tiny_vit, quiet, spec

from pgn import PGNError
from pgn.adapter_format import AdapterConfig
from pgn.methods import LinearConfig, PGNConfig
from pgn.model import PromptedClassifier
from pgn.training import TrainConfig, evaluate_loader, read_metrics, run_training, warmup_cosine

# The library defaults to fp32: nothing here asks whether the CPU has native bf16 (checked: conftest).
pytestmark = pytest.mark.fp32_only


@pytest.mark.parametrize("method", ALL_TRAINED)
def test_one_step_gradients_only_where_they_belong(tiny_vit, method):
    model = PromptedClassifier.from_config(adapter_cfg(method, tiny_vit), tiny_vit)
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 0])
    # A non-zero head so gradients reach the prompts on the first step.
    torch.nn.init.normal_(model.head.fc.weight, std=0.1)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    if method == "finetune":  # the one method that trains the backbone
        assert all(p.grad is not None for p in model.backbone.parameters())
        return
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert model.head.fc.weight.grad is not None and model.head.fc.weight.grad.abs().sum() > 0
    if method == "pgn":
        assert model.prompts.library.tokens.grad.abs().sum() > 0
        assert all(p.grad is not None for p in model.prompts.net.parameters())
    if method == "iip":
        assert model.prompts.prompts.grad.abs().sum() > 0
    if method == "vp":
        assert model.input_prompt.top.grad.abs().sum() > 0
        assert model.num_trainable() == model.head.fc.weight.numel() + 3 + 2 * 3 * 8 * 64 + 2 * 3 * 8 * 48


@pytest.mark.parametrize("method", ALL_TRAINED)
def test_train_save_load_identical_logits(tiny_vit, tmp_path, method):
    acfg = adapter_cfg(method, tiny_vit)
    model = PromptedClassifier.from_config(acfg, tiny_vit)
    row = run_training(model, acfg, spec(), quiet(epochs=2), tmp_path / "run", log=lambda *_: None)
    assert set(row) >= {"test_top1", "test_top5", "train_loss"}
    assert len(read_metrics(tmp_path / "run")) == 2
    fresh = make_tiny_vit()  # a pristine backbone: a fine-tuned one must come back from the adapter
    loaded = PromptedClassifier.from_pretrained(tmp_path / "run", backbone=fresh)
    cfg = loaded.config
    assert cfg == acfg
    x = torch.randn(3, 3, 64, 64)
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "run" / "adapter.safetensors"))
    # The backbone is saved only when it was trained (full fine-tuning).
    assert all(k.split(".")[0] in ("head", "prompts", "input_prompt") + (("backbone",) if method == "finetune" else ())
               for k in saved)
    stats = ("running_mean", "running_var", "num_batches_tracked")
    assert sum(v.numel() for k, v in saved.items() if not k.endswith(stats)) == model.num_trainable()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["trainable_parameters"] == model.num_trainable()


def test_training_reduces_loss(tiny_vit, tmp_path):
    acfg = adapter_cfg("pgn", tiny_vit)
    model = PromptedClassifier.from_config(acfg, tiny_vit)
    run_training(model, acfg, spec(), quiet(epochs=6, lr=0.05, warmup_epochs=0), tmp_path / "r", log=lambda *_: None)
    rows = read_metrics(tmp_path / "r")
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]


def test_resume_continues_and_refuses_overwrite(tiny_vit, tmp_path):
    acfg = adapter_cfg("pgn", tiny_vit)
    run = tmp_path / "run"
    run_training(PromptedClassifier.from_config(acfg, tiny_vit), acfg, spec(), quiet(epochs=1), run, log=lambda *_: None)
    with pytest.raises(PGNError, match="`resume`"):
        run_training(PromptedClassifier.from_config(acfg, tiny_vit), acfg, spec(), quiet(epochs=1), run, log=lambda *_: None)
    run_training(PromptedClassifier.from_config(acfg, tiny_vit), acfg, spec(), quiet(epochs=3), run, resume=True, log=lambda *_: None)
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2, 3]
    with pytest.raises(PGNError, match="cannot resume"):
        run_training(PromptedClassifier.from_config(acfg, tiny_vit), acfg, spec(), quiet(), tmp_path / "new", resume=True)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_vit, tmp_path):
    acfg = adapter_cfg("pgn", tiny_vit)
    run = tmp_path / "run"
    model = PromptedClassifier.from_config(acfg, tiny_vit)
    run_training(model, acfg, spec(), quiet(epochs=1), run, log=lambda *_: None)
    good = (run / "adapter.safetensors").read_bytes()
    with pytest.raises(PGNError, match="loss became nan"):
        run_training(PromptedClassifier.from_config(acfg, tiny_vit), acfg, spec(poison=True), quiet(epochs=2), run, resume=True,
              log=lambda *_: None)
    assert (run / "adapter.safetensors").read_bytes() == good
    PromptedClassifier.from_pretrained(run, backbone=tiny_vit)  # still loadable
    assert not list(run.glob(".*.tmp"))


def test_warmup_cosine_schedule():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, total_steps=10, warmup_steps=4, final_ratio=0.01)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)


def test_vp_is_one_parameter_per_border_pixel_and_leaves_the_centre_alone():
    """The paper's VP at 224 px, pad 30: every parameter is added to exactly one pixel of the 30-px border (all
    69,840 = 3 * (224^2 - 164^2) of them), the 164 x 164 centre is never touched. Exact (additions of zero)."""
    from pgn.prompts import PaddingPrompt

    vp = PaddingPrompt(224, 30)
    border = torch.ones(224, 224, dtype=torch.bool)
    border[30:194, 30:194] = False
    assert sum(p.numel() for p in vp.parameters()) == 3 * int(border.sum()) == 3 * (224**2 - 164**2) == 69_840
    torch.manual_seed(0)
    with torch.no_grad():
        for p in vp.parameters():
            p.normal_()  # nonzero values, all distinct
    x = torch.randn(2, 3, 224, 224)
    out = vp(x)
    assert torch.equal(out[:, :, ~border], x[:, :, ~border])  # the centre: the image itself
    frame = vp(torch.zeros(1, 3, 224, 224))[0]  # the frame alone: the parameters, each exactly once
    assert torch.equal(frame[:, ~border], torch.zeros_like(frame[:, ~border]))
    params = torch.cat([p.detach().flatten() for p in vp.parameters()])
    assert torch.equal(frame[:, border].flatten().sort().values, params.sort().values)
    out.sum().backward()  # each parameter reaches one pixel of each of the 2 images: gradient 2, never 0
    assert all(torch.equal(p.grad, torch.full_like(p, 2.0)) for p in vp.parameters())


def test_adapter_width_mismatch_is_clear(tiny_vit, tmp_path):
    acfg = adapter_cfg("pgn", tiny_vit)
    PromptedClassifier.from_config(acfg, tiny_vit).save_pretrained(tmp_path / "a")
    other = make_tiny_vit(embed_dim=32, num_heads=2)
    with pytest.raises(PGNError, match="width 64"):
        PromptedClassifier.from_pretrained(tmp_path / "a", backbone=other)
    (tmp_path / "a" / "adapter.safetensors").write_bytes(b"garbage")
    with pytest.raises(PGNError, match="corrupt"):
        PromptedClassifier.from_pretrained(tmp_path / "a", backbone=tiny_vit)


def test_defaults_are_the_official_recipe(tmp_path):
    """TrainConfig() is the paper's recipe for prompt methods: one rate, no clip, half-run warm-up, lr/100."""
    cfg = TrainConfig()
    assert (cfg.epochs, cfg.lr, cfg.head_lr, cfg.optimizer, cfg.momentum, cfg.weight_decay) == (100, 0.1, None, "sgd",
                                                                                                 0.9, 0.0)
    assert cfg.grad_clip is None and cfg.head_init == "default" and cfg.final_lr_ratio == 0.01
    assert cfg.warmup == 50 and TrainConfig(epochs=10).warmup == 5 and TrainConfig(epochs=10, warmup_epochs=1).warmup == 1
    assert TrainConfig.paper() == TrainConfig(warmup_epochs=50.0)
    # The defaults drive the trainer: 4 epochs of 2 steps (16 images, batch 8), lr 0.1 warmed up over half the
    # run (4 steps), then cosine to 0.1 / 100. The end-of-epoch rates, computed here, to float rounding.
    tiny = make_tiny_vit()
    acfg = adapter_cfg("pgn", tiny)
    run_training(PromptedClassifier.from_config(acfg, tiny), acfg, spec(), TrainConfig(epochs=4, batch_size=8, progress=False),
          tmp_path / "run", log=lambda *_: None)
    lrs = [row["lr"] for row in read_metrics(tmp_path / "run")]
    cosine = [0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)) for t in (0.0, 0.5, 1.0)]
    assert lrs == pytest.approx([0.1 * 3 / 4] + [0.1 * c for c in cosine], rel=1e-9)
    # The one named deviation: the linear head reads BatchNorm-normalised features.
    assert acfg.head_norm == "batchnorm"
    from pgn.cli.main import build_parser, resolve_defaults

    args = build_parser().parse_args(["train", "--preset", "paper"])
    resolve_defaults(args)
    assert (args.epochs, args.lr, args.warmup_epochs, args.grad_clip, args.head_lr) == (100, 0.1, 50.0, None, None)
    assert (args.img_size, args.augment) == (224, True)
    args = build_parser().parse_args(["train"])  # no preset: the cpu budget, the same recipe at lr 0.01
    resolve_defaults(args)
    assert (args.epochs, args.lr, args.warmup_epochs, args.grad_clip, args.img_size) == (10, 0.01, None, None, 112)
    args = build_parser().parse_args(["train", "--preset", "paper", "--backbone", "clip-vit-b32", "--lr", "0.5"])
    resolve_defaults(args)  # the paper's CLIP runs: N 256 and the zero-shot head; what the user sets stays
    assert (args.library_size, args.head, args.lr) == (256, "zeroshot", 0.5)


@pytest.mark.parametrize("head_init", ["default", "zero"])
def test_generator_gets_gradient_on_the_first_step(tiny_vit, tmp_path, head_init):
    """With the default head the generator learns from step one; a zero-init head (the old default) blocks it."""
    acfg = adapter_cfg("pgn", tiny_vit)
    model = PromptedClassifier.from_config(acfg, tiny_vit)
    before = {k: v.clone() for k, v in model.prompts.net.state_dict().items() if k.endswith("weight")}
    data = spec()
    data.train = torch.utils.data.Subset(data.train, range(8))  # one step of batch 8
    row = run_training(model, acfg, data, quiet(lr=0.1, head_init=head_init), tmp_path / "r", log=lambda *_: None)
    moved = max(float((model.prompts.net.state_dict()[k] - v).abs().max()) for k, v in before.items())
    if head_init == "default":
        assert row["grad_norm/generator"] > 0 and row["update/generator"] > 0 and moved > 0
    else:
        assert row["grad_norm/generator"] == 0 and moved == 0


def test_metrics_carry_group_norms_updates_entropy_and_clip(tiny_vit, tmp_path):
    acfg = adapter_cfg("pgn", tiny_vit)
    model = PromptedClassifier.from_config(acfg, tiny_vit)
    run_training(model, acfg, spec(), quiet(epochs=2, lr=0.05, grad_clip=1e-3), tmp_path / "r", log=lambda *_: None)
    rows = read_metrics(tmp_path / "r")
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        for group in ("head", "generator", "library"):
            assert r[f"grad_norm/{group}"] > 0 and r[f"update/{group}"] > 0
        assert 0.9 < r["mixture_entropy"] <= 1.0  # near-uniform mixtures after a few tiny steps
        assert 0 < r["clip_factor"] < 0.1          # a 1e-3 clip scales every step's gradient down hard
    # With momentum 0.9 a step moves the head by at most lr * clip / (1 - 0.9): clipping really limited it
    # (unclipped, the head's gradient norm of about 1 would move it about 100 times further).
    head_norm = float(torch.cat([p.detach().flatten() for p in model.head.parameters()]).norm())
    assert rows[-1]["update/head"] < 1.2 * 0.05 * 1e-3 / 0.1 / head_norm


def test_batchnorm_head_trains_on_a_batch_of_one_and_evaluates_with_running_stats():
    from pgn.heads import LinearHead

    torch.manual_seed(0)
    head = LinearHead(8, 3)
    head.train()
    out = head(torch.randn(1, 8))  # no batch statistics: must not raise
    assert out.shape == (1, 3)
    feats = torch.randn(64, 8) * 40 + 5
    for _ in range(50):
        head(feats)  # running statistics converge to the features'
    head.eval()
    x = torch.randn(4, 8) * 40 + 5
    expected = head.fc((x - head.norm.running_mean) / (head.norm.running_var + head.norm.eps).sqrt())
    torch.testing.assert_close(head(x), expected)


def test_adapters_from_before_the_normalised_head_still_load(tiny_vit, tmp_path):
    """An adapter_config.json without ``head_norm`` (older pgn) is a linear layer on raw features."""
    import dataclasses

    acfg = adapter_cfg("pgn", tiny_vit)
    acfg.method_config = dataclasses.replace(acfg.method_config, head_norm="none")
    model = PromptedClassifier.from_config(acfg, tiny_vit)
    torch.nn.init.normal_(model.head.fc.weight, std=0.1)
    model.save_pretrained(tmp_path / "old")
    path = tmp_path / "old" / "adapter_config.json"
    raw = json.loads(path.read_text())  # rewritten as that pgn wrote it: format 1, flat, no head_norm
    raw.pop("method_config")
    path.write_text(json.dumps({**raw, "format_version": 1, "generator": acfg.generator, "num_prompts": 4}))
    loaded = PromptedClassifier.from_pretrained(tmp_path / "old", backbone=tiny_vit)
    cfg = loaded.config
    assert cfg.head_norm == "none" and loaded.head.norm is None
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(loaded(x), model(x))


def test_the_dataset_decides_augmentation_and_augmented_features_are_never_cached(tiny_vit, tmp_path):
    from pgn.data import build_dataset

    cached = {}
    for augment in (False, True):
        data = build_dataset("digits", img_size=32, augment=augment, train_limit=30, test_limit=10)
        assert data.augmented is augment
        acfg = AdapterConfig(method_config=LinearConfig(), backbone=tiny_vit.name, backbone_width=tiny_vit.width,
                             class_names=list(data.class_names), img_size=32, dataset="digits")
        row = run_training(PromptedClassifier.from_config(acfg, tiny_vit), acfg, data, TrainConfig(epochs=1, batch_size=10, progress=False),
                    tmp_path / f"aug{augment}", log=lambda *_: None)
        cached[augment] = row.get("features_cached", False)
        assert json.loads((tmp_path / f"aug{augment}" / "config.json").read_text())["augment"] is augment
    assert cached == {False: True, True: False}  # the probe runs the frozen ViT on every augmented draw


def test_evaluation_runs_in_inference_mode():
    from pgn.training import evaluate_loader

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)
            self.modes = []

        def forward(self, x):
            self.modes.append(torch.is_inference_mode_enabled())
            return self.fc(x)

    probe = Probe()
    loader = [(torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]))]
    out = evaluate_loader(probe, loader, progress=False)
    assert probe.modes == [True] and out["n"] == 5  # no autograd graph is built while scoring


def test_fine_tuning_owns_its_backbone_so_the_shared_one_stays_frozen(tiny_vit, tmp_path):
    before = {k: v.clone() for k, v in tiny_vit.state_dict().items()}
    acfg = adapter_cfg("finetune", tiny_vit)
    model = PromptedClassifier.from_config(acfg, tiny_vit, seed=0)
    assert model.backbone is not tiny_vit and all(p.requires_grad for p in model.backbone.finetune_parameters())
    run_training(model, acfg, spec(), quiet(lr=0.05), tmp_path / "run", log=lambda *_: None)
    assert not any(p.requires_grad for p in tiny_vit.parameters())
    assert all(torch.equal(v, before[k]) for k, v in tiny_vit.state_dict().items())
    other = PromptedClassifier.from_config(adapter_cfg("linear", tiny_vit), tiny_vit, seed=0)
    assert other.num_trainable() == sum(p.numel() for p in other.head.parameters())
    assert any(not torch.equal(v, before[k]) for k, v in model.backbone.state_dict().items())  # the copy trained


def test_mixture_ablation_measures_what_input_dependence_adds(tiny_vit, tmp_path):
    """top1 with the mean or shuffled mixtures: equal to top1 when the generator ignores the image."""
    from pgn.training.evaluate import mixture_ablation

    loader = torch.utils.data.DataLoader(RandomImages(24, seed=5), batch_size=8)
    for output_init, independent in (("zero", True), ("default", False)):
        method = PGNConfig(num_prompts=4, library_size=8, generator_size=64, output_init=output_init)
        acfg = AdapterConfig(method_config=method, backbone=tiny_vit.name, backbone_width=tiny_vit.width,
                             class_names=["a", "b", "c"], img_size=64)
        model = PromptedClassifier.from_config(acfg, tiny_vit, seed=1).eval()
        with torch.no_grad():
            model.prompts.library.tokens.mul_(200.0)  # prompts that move the answer
            if not independent:
                model.prompts.net.head[-1].weight.mul_(50.0)  # mixtures that differ from image to image
        top1 = evaluate_loader(model, loader, progress=False)["top1"]
        ablation = mixture_ablation(model, loader)
        if independent:  # the same mixture for every image: replacing it changes nothing
            assert ablation == {"top1_mean_mixture": top1, "top1_shuffled": top1}
        else:
            assert ablation["top1_mean_mixture"] != top1 or ablation["top1_shuffled"] != top1
    cfg = adapter_cfg("pgn", tiny_vit)
    run_training(PromptedClassifier.from_config(cfg, tiny_vit, seed=0), cfg, spec(), quiet(lr=0.05), tmp_path / "run", log=lambda *_: None)
    row = read_metrics(tmp_path / "run")[-1]
    assert {"test_top1_mean_mixture", "test_top1_shuffled"} <= set(row)  # every PGN run's last epoch


def test_the_monitor_copies_a_large_group_only_on_the_steps_it_measures():
    """Fine-tuning's whole ViT is not cloned every step: a group over LARGE elements is measured every LARGE_EVERY."""
    from pgn.training.monitor import OptimizerMonitor

    torch.manual_seed(0)
    small, large = torch.nn.Linear(4, 3), torch.nn.Linear(2048, 1000)  # 2,049,000 parameters: "large"
    opt = torch.optim.SGD([{"params": small.parameters(), "name": "head"},
                           {"params": large.parameters(), "name": "backbone"}], lr=0.1)
    monitor = OptimizerMonitor(opt)
    copied = []
    for step in range(20):
        opt.zero_grad()
        (small(torch.randn(2, 4)).sum() + large(torch.randn(2, 2048)).sum()).backward()
        monitor.before_step()
        copied.append(monitor._before[1] is not None)
        opt.step()
        monitor.after_step()
    assert copied == [s % OptimizerMonitor.LARGE_EVERY == 0 for s in range(20)]  # steps 0 and 16 only
    assert monitor.counts["update/head"] == 20 and monitor.counts["update/backbone"] == 2
    row = monitor.epoch_summary()
    assert row["update/backbone"] > 0 and row["update/head"] > 0 and row["grad_norm/backbone"] > 0


@pytest.mark.parametrize("method", ["pgn", "linear"])
def test_preprocessing_on_the_device_trains_the_same_run(tmp_path, method):
    """Stored pixels resized where the model runs (pgn.data.device) give the run that CPU preprocessing gives,
    bit for bit (fp32): the trained loop, the linear probe's feature cache and evaluation all go through it."""
    from pgn.data import build_dataset

    weights, rows = [], []
    for on_device in (False, True):
        bb = make_tiny_vit()
        data = build_dataset("digits", img_size=32, mean=bb.preprocessing.mean, std=bb.preprocessing.std,
                             train_limit=48, test_limit=24, on_device=on_device)
        cfg = AdapterConfig(method_config=(PGNConfig(num_prompts=2, library_size=8, generator_size=32)
                                           if method == "pgn" else LinearConfig()),
                            backbone=bb.name, backbone_width=bb.width, class_names=data.class_names, img_size=32,
                            dataset="digits")
        model = PromptedClassifier.from_config(cfg, bb, seed=1)
        rows.append(run_training(model, cfg, data, quiet(epochs=2, lr=0.05, seed=2), tmp_path / f"{method}-{on_device}"))
        weights.append(model.trainable_modules().state_dict())
    for key, value in weights[0].items():
        assert torch.equal(weights[1][key], value), key
    assert {k: v for k, v in rows[0].items() if "seconds" not in k and "per_s" not in k} == \
           {k: v for k, v in rows[1].items() if "seconds" not in k and "per_s" not in k}


def test_an_epoch_opens_one_iterator_over_its_loader(tiny_vit, tmp_path, monkeypatch):
    """tqdm.auto would open a second one (with workers: a second set of processes prefetching batches that
    nobody reads); pgn.training.progress draws the bar itself."""
    from torch.utils.data import DataLoader

    opened = []
    real_iter = DataLoader.__iter__
    monkeypatch.setattr(DataLoader, "__iter__", lambda self: opened.append(self) or real_iter(self))
    model = PromptedClassifier.from_config(adapter_cfg("pgn", tiny_vit), tiny_vit)
    run_training(model, adapter_cfg("pgn", tiny_vit), spec(), quiet(epochs=2), tmp_path / "run")
    from torch.utils.data import SequentialSampler

    shuffled = [loader for loader in opened if not isinstance(loader.sampler, SequentialSampler)]  # training
    assert len(shuffled) == 2 and len(set(map(id, shuffled))) == 1  # one iterator per epoch
    # the test loader: an evaluation per epoch, and the last epoch's two passes of the mixture ablation
    assert len(opened) - len(shuffled) == 2 + 2


def test_eval_every_scores_fewer_epochs_and_trains_the_same_run(tmp_path):
    """Skipping the test pass of an epoch changes nothing else: on augmented data (drawn from the global torch RNG,
    which an evaluation loader without its own generator would advance), the weights after 3 epochs and the last
    epoch's metrics are the same, bit for bit, whether the test split is scored every epoch, every 2nd or last only."""
    from pgn.data import build_dataset
    from pgn.plots import plot_training_curves

    with pytest.raises(PGNError, match="eval_every"):
        TrainConfig(eval_every=-1)
    weights, last, scored = [], [], []
    for every in (1, 2, 0):
        bb = make_tiny_vit()
        data = build_dataset("digits", img_size=32, mean=bb.preprocessing.mean, std=bb.preprocessing.std,
                             augment=True, train_limit=32, test_limit=16)
        acfg = AdapterConfig(method_config=PGNConfig(num_prompts=2, library_size=8, generator_size=32),
                             backbone=bb.name, backbone_width=bb.width, class_names=data.class_names, img_size=32,
                             dataset="digits")
        model = PromptedClassifier.from_config(acfg, bb, seed=1)
        run = tmp_path / f"every{every}"
        run_training(model, acfg, data, quiet(epochs=3, lr=0.05, seed=2, eval_every=every), run)
        weights.append(model.trainable_modules().state_dict())
        rows = read_metrics(run)
        scored.append([r["epoch"] for r in rows if "test_top1" in r])
        last.append({k: v for k, v in rows[-1].items() if "seconds" not in k and "per_s" not in k})
        plot_training_curves(rows, run / "curves.png")  # the test curve has only the scored epochs
    assert scored == [[1, 2, 3], [2, 3], [3]]
    for other in weights[1:]:
        for key, value in weights[0].items():
            assert torch.equal(other[key], value), key
    assert last[1] == last[0] and last[2] == last[0]
    assert "test_top1_mean_mixture" in last[0]  # the mixture ablation still runs after the last epoch
