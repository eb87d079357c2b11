"""The optimiser of a run: per-part groups, AdamW prompts beside an SGD head, and the generator's output scale.

Exact equalities here compare two computations in one process on one machine (fp32)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import adapter_cfg, make_tiny_vit, quiet, spec

from pgn import PGNError
from pgn.methods import PGNConfig
from pgn.model import PromptedClassifier
from pgn.prompts import GeneratorConfig, PromptGenerator
from pgn.training import TrainConfig, run_training, warmup_cosine
from pgn.training.optimizers import PerGroupOptimizer, build_optimizer, param_groups

pytestmark = pytest.mark.fp32_only


def _loss(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    images, labels = torch.randn(6, 3, 64, 64, generator=g), torch.randint(0, 3, (6,), generator=g)
    return F.cross_entropy(model(images), labels)


def test_adamw_prompts_beside_an_sgd_head_step_as_the_two_library_optimisers_would(tiny_vit):
    torch.manual_seed(0)
    acfg = adapter_cfg("pgn", tiny_vit)
    model = PromptedClassifier.from_config(acfg, tiny_vit).train()
    reference = copy.deepcopy(model)
    cfg = TrainConfig(lr=0.05, head_lr=0.01, prompt_optimizer="adamw", weight_decay=0.01)
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, PerGroupOptimizer)
    assert [g["name"] for g in opt.param_groups] == list(param_groups(model))  # the model's order
    assert {g["name"] for g in opt.param_groups} == {"generator", "library", "head"}
    warmup_cosine(opt, total_steps=10, warmup_steps=4)  # the scheduler reaches the sub-optimisers' rates
    assert [g["lr"] for g in opt.optimizers[1].param_groups] == [0.05 / 4] * 2
    assert opt.optimizers[0].param_groups[0]["lr"] == 0.01 / 4

    parts = param_groups(reference)
    sgd = torch.optim.SGD(parts["head"].parameters(), lr=0.01 / 4, momentum=0.9, weight_decay=0.01)
    adamw = torch.optim.AdamW([*parts["generator"].parameters(), *parts["library"].parameters()], lr=0.05 / 4,
                              weight_decay=0.01)
    opt.zero_grad()
    _loss(model).backward()
    _loss(reference).backward()
    for o in (opt, sgd, adamw):
        o.step()
    got, want = model.trainable_modules().state_dict(), reference.trainable_modules().state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)

    plain = copy.deepcopy(reference)  # the same step with SGD for the prompts too moves them elsewhere
    before = copy.deepcopy(plain)
    sgd_only = build_optimizer(plain, TrainConfig(lr=0.05, head_lr=0.01, weight_decay=0.01))
    assert isinstance(sgd_only, torch.optim.SGD)
    _loss(plain, seed=1).backward()
    sgd_only.step()
    adamw_model = copy.deepcopy(before)
    mixed = build_optimizer(adamw_model, cfg)
    _loss(adamw_model, seed=1).backward()
    mixed.step()
    assert not torch.equal(plain.prompts.library.tokens, adamw_model.prompts.library.tokens)
    assert torch.equal(plain.head.fc.weight, adamw_model.head.fc.weight)  # the head is SGD in both


def test_one_algorithm_for_a_model_with_only_prompts_or_only_a_head(tiny_vit):
    linear = PromptedClassifier.from_config(adapter_cfg("linear", tiny_vit), tiny_vit, seed=0)
    assert isinstance(build_optimizer(linear, TrainConfig(prompt_optimizer="adamw")), torch.optim.SGD)
    with pytest.raises(PGNError, match="prompt_optimizer"):
        TrainConfig(prompt_optimizer="lion")


class Killed(BaseException):
    """The process dying: not an Exception, so nothing on the way up catches it."""


def test_a_run_with_adamw_prompts_resumes_bit_for_bit(tmp_path, monkeypatch):
    import pgn.training.trainer as trainer

    def run(path, resume=False, **options):
        backbone = make_tiny_vit()
        acfg = adapter_cfg("pgn", backbone)
        model = PromptedClassifier.from_config(acfg, backbone, seed=3)
        run_training(model, acfg, spec(), quiet(epochs=2, lr=0.05, head_lr=0.01, **options), path, resume=resume,
              log=lambda *_: None)
        return model.trainable_modules().state_dict()

    straight = run(tmp_path / "straight", prompt_optimizer="adamw")
    real, calls = trainer.save_checkpoint, []

    def dies_at_the_second_checkpoint(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise Killed
        return real(*a, **kw)

    monkeypatch.setattr(trainer, "save_checkpoint", dies_at_the_second_checkpoint)
    with pytest.raises(Killed):
        run(tmp_path / "killed", prompt_optimizer="adamw")
    monkeypatch.setattr(trainer, "save_checkpoint", real)
    resumed = run(tmp_path / "killed", resume=True, prompt_optimizer="adamw")  # epoch 2 from epoch 1's state
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
    sgd = run(tmp_path / "sgd")  # and the option is not ignored: an all-SGD run ends elsewhere
    assert not all(torch.equal(sgd[k], straight[k]) for k in straight)


def test_the_output_scale_multiplies_the_last_layer_and_draws_nothing_more(tiny_vit):
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    built = {}
    for scale in (1.0, 4.0):
        torch.manual_seed(0)
        built[scale] = PromptGenerator(GeneratorConfig(num_prompts=2, library_size=8, input_size=64,
                                                       output_init_scale=scale), tiny_vit.width).eval()
    one, four = (m.state_dict() for m in built.values())
    last = [k for k in one if k.startswith("net.head.")]
    assert last and all(torch.equal(four[k], 4.0 * one[k]) for k in last)
    assert all(torch.equal(four[k], one[k]) for k in one if k not in last)  # the same draws otherwise
    with torch.no_grad():
        entropy = {s: -(c * c.log()).sum(-1).mean().item() for s, m in built.items() for c in [m.coefficients(images)]}
    assert entropy[4.0] < entropy[1.0]  # sharper mixtures at step 0
    assert PGNConfig(output_init_scale=4.0).generator_config(64).output_init_scale == 4.0
    with pytest.raises(PGNError, match="output_init_scale"):
        GeneratorConfig(output_init_scale=0.0)
