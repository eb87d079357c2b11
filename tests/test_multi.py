"""One PGN over several datasets: shared generator and library, a head per dataset."""
import pytest
import torch
from helpers import RandomImages

from pgn.adapter_format import AdapterConfig
from pgn.analysis import dataset_token_sharing
from pgn.data import DataSpec
from pgn.methods import PGNConfig
from pgn.model import PromptedClassifier
from pgn.multi import MultiDatasetHead, combine
from pgn.training import TrainConfig, run_training

# The library defaults to fp32: nothing here asks whether the CPU has native bf16 (checked: conftest).
pytestmark = pytest.mark.fp32_only


def two_specs():
    a = DataSpec(name="a", class_names=["a0", "a1", "a2"], train=RandomImages(12, seed=0), test=RandomImages(6, seed=1))
    b = DataSpec(name="b", class_names=["b0", "b1"], train=RandomImages(8, seed=2, classes=2),
                 test=RandomImages(4, seed=3, classes=2))
    return a, b


def test_combine_offsets_labels():
    spec, parts = combine(list(two_specs()))
    assert spec.class_names == ["a/a0", "a/a1", "a/a2", "b/b0", "b/b1"]
    assert [p["offset"] for p in parts] == [0, 3] and len(spec.train) == 20
    assert all(3 <= spec.train[i][1] <= 4 for i in range(12, 20))


def test_head_loss_sees_only_own_dataset():
    head = MultiDatasetHead(4, [{"name": "a", "classes": ["x", "y", "z"], "offset": 0},
                                {"name": "b", "classes": ["u", "v"], "offset": 3}])
    logits = torch.tensor([[0.0, 0.0, 0.0, 100.0, 100.0]])  # huge logits of the other dataset's classes
    expected = torch.nn.functional.cross_entropy(logits[:, :3], torch.tensor([1]))
    assert torch.allclose(head.loss(logits, torch.tensor([1])), expected)
    assert head.dataset_logits(logits, 1).shape == (1, 2)


def test_train_multi_and_round_trip(tiny_vit, tmp_path):
    spec, parts = combine(list(two_specs()))
    cfg = AdapterConfig(method_config=PGNConfig(num_prompts=3, library_size=8, generator_size=64),
                        backbone=tiny_vit.name, backbone_width=64, class_names=spec.class_names,
                        img_size=64, dataset=spec.name, extra={"datasets": parts})
    model = PromptedClassifier.from_config(cfg, tiny_vit)
    assert len(model.head.heads) == 2
    before = [{k: v.clone() for k, v in h.state_dict().items() if k.endswith("weight")} for h in model.head.heads]
    run_training(model, cfg, spec, TrainConfig(epochs=1, batch_size=8, progress=False), tmp_path / "r", log=lambda *_: None)
    for head, start in zip(model.head.heads, before):  # each dataset's head learned from its own images
        assert all(not torch.equal(head.state_dict()[k], v) for k, v in start.items())
    loaded = PromptedClassifier.from_pretrained(tmp_path / "r", backbone=tiny_vit)
    x = torch.randn(2, 3, 64, 64)
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_token_sharing_overlap(tmp_path):
    parts = [{"name": "a", "classes": ["x"], "offset": 0}, {"name": "b", "classes": ["y"], "offset": 1}]
    coeffs = torch.zeros(4, 1, 4)
    coeffs[:2, 0, 0] = 1  # dataset a uses token 0 only
    coeffs[2:, 0, :2] = 0.5  # dataset b splits between tokens 0 and 1
    out = dataset_token_sharing(coeffs, torch.tensor([0, 0, 1, 1]), parts, tmp_path / "t.png")
    assert abs(out["overlap"]["a~b"] - 0.5) < 1e-6 and (tmp_path / "t.png").is_file()


def test_a_model_over_several_datasets_is_scored_on_each_or_on_the_one_named(tmp_path):
    import pgn
    from pgn.api import train_run
    from pgn.errors import PGNError

    _, run = train_run("test-vit-timm", "pgn", "digits,elpv", TrainConfig(epochs=1, batch_size=16, progress=False),
                       tmp_path / "r", img_size=32, train_limit=32, test_limit=16, log=lambda *_: None)
    model = pgn.load(run, device="cpu")
    both = pgn.evaluate(model, test_limit=16, progress=False)["datasets"]
    assert sorted(both) == ["digits", "elpv"] and all(m["n"] == 16 for m in both.values())
    one = pgn.evaluate(model, "elpv", test_limit=16, progress=False)["datasets"]
    assert list(one) == ["elpv"] and one["elpv"] == both["elpv"]
    with pytest.raises(PGNError, match="trained on digits, elpv at once"):
        pgn.evaluate(model, "fashion-mnist", progress=False)
