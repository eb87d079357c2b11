"""Every registered method through one suite (PEFT's common-tester shape), the saved method config, and a
method added from outside the library in one config class and one builder."""
import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from helpers import spec
from torch import nn

import pgn
from pgn import PGNError
from pgn.adapter_format import CONFIG_FILE, FORMAT_VERSION, AdapterConfig, read_adapter_config
from pgn.methods import LIBRARY_SIZE, NUM_PROMPTS, MethodParts, PGNConfig, get_method, list_methods, method_config_dict, register_method

# The library defaults to fp32: nothing here asks whether the CPU has native bf16 (checked: conftest).
pytestmark = pytest.mark.fp32_only

# Small options for each method's own fields (the rest: the method's defaults). A method registered later
# needs no entry here: the suite runs it with its defaults.
SMALL = {"pgn": dict(num_prompts=2, library_size=4, widths=(4, 4, 4, 4)), "iip": dict(num_prompts=2),
         "vp": dict(pad=4)}
# Cases beyond each method's defaults: the layouts that place prompts as patches.
CASES = [(m, {}) for m in list_methods()] + [
    ("pgn", dict(layout="frame", library_space="pixel")), ("pgn", dict(layout="extend", library_space="pixel")),
    ("iip", dict(layout="extend")), ("vp", dict(bounded=True))]


def _backbone(method: str) -> str:
    return "test-vit-clip" if method == "zeroshot" else "test-vit-timm"


def _create(method: str, options: dict, seed: int = 0):
    size = 96 if method == "zeroshot" else 64
    return pgn.create_model(_backbone(method), method, classes=["a", "b", "c"], img_size=size, seed=seed,
                            **{**SMALL.get(method, {}), **options}), size


@pytest.mark.parametrize("method,options", CASES, ids=[f"{m}-{'-'.join(map(str, o.values())) or 'default'}"
                                                       for m, o in CASES])
def test_every_method_creates_trains_saves_loads_and_predicts_the_same(method, options, tmp_path):
    model, size = _create(method, options)
    assert model.config.method == method and type(model.config.method_config) is get_method(method).config
    trainable = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    if trainable:  # one epoch of two steps; everything it trains moves, nothing else does
        data = spec()
        data.train.x, data.test.x = data.train.x[:, :, :size, :size], data.test.x[:, :, :size, :size]
        pgn.train(model, data, epochs=1, out=tmp_path / "run", batch_size=8, lr=0.05, progress=False,
                  device="cpu")
        moved = [k for k, v in model.named_parameters() if v.requires_grad and not torch.equal(v, trainable[k])]
        assert moved, "a training epoch changed none of the trained parameters"
    frozen = pgn.create_model(_backbone(method), "linear", classes=["a", "b", "c"], img_size=size).backbone
    assert all(not p.requires_grad for p in frozen.parameters())  # the registry's backbone stays frozen

    model.save_pretrained(tmp_path / "adapter")
    raw = json.loads((tmp_path / "adapter" / CONFIG_FILE).read_text())
    assert raw["format_version"] == FORMAT_VERSION == 3 and raw["method"] == method
    assert raw["method_config"] == method_config_dict(model.config.method_config)
    assert not {"generator", "num_prompts", "vp_pad", "layout"} & set(raw)  # no flat union of every method's fields
    loaded = pgn.load(tmp_path / "adapter", device="cpu")
    assert loaded.config == model.config
    model.eval()
    x = torch.randn(3, 3, size, size)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)  # one process, one machine: exact

    if options.get("library_space") == "pixel":  # deployable in the input: an image alone gives the answer
        from pgn.input_adapter import InputAdapter, export_adapter

        composer = InputAdapter.from_pretrained(export_adapter(tmp_path / "adapter", tmp_path / "deploy"))
        with torch.inference_mode():
            through_input = composer.logits(model.backbone(composer.canvas(x)))  # the unmodified model's forward
            torch.testing.assert_close(through_input, model(x), rtol=1e-4, atol=1e-4)  # float32, reordered sums


@pytest.mark.parametrize("method", [m for m in list_methods() if m != "zeroshot"])
def test_the_same_seed_builds_the_same_model_and_another_seed_another(method):
    a, _ = _create(method, {}, seed=1)
    b, _ = _create(method, {}, seed=1)
    c, _ = _create(method, {}, seed=2)
    sa, sb, sc = (m.trainable_modules().state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    params = [k for k, v in a.trainable_modules().named_parameters()]
    assert any(not torch.equal(sa[k], sc[k]) for k in params)


def test_defaults_are_stated_once():
    assert (PGNConfig().num_prompts, PGNConfig().library_size) == (NUM_PROMPTS, LIBRARY_SIZE) == (16, 128)
    assert pgn.IIPConfig().num_prompts == NUM_PROMPTS
    cfg = pgn.create_model("test-vit-timm", "pgn", classes=["a", "b"], img_size=64).config
    assert cfg.method_config.generator_size == 64  # resolved from the model's size, and saved so
    assert pgn.create_model("test-vit-timm", "vp", classes=["a", "b"], img_size=64).config.method_config.pad == 9


def test_a_method_written_outside_the_library_is_one_config_and_one_builder(tmp_path):
    """A toy method (a learned brightness shift of the input), defined only here, registered in one place."""

    @dataclass(frozen=True)
    class ShiftConfig:
        method: ClassVar[str] = "toy-shift"
        start: float = 0.25

        def __post_init__(self):
            if not -1 <= self.start <= 1:
                raise PGNError(f"toy-shift: start must be in [-1, 1], got {self.start}")

    class Shift(nn.Module):
        def __init__(self, start: float):
            super().__init__()
            self.shift = nn.Parameter(torch.full((3, 1, 1), start))

        def forward(self, images):  # (B, 3, H, W) -> (B, 3, H, W)
            return images + self.shift

    @register_method(ShiftConfig)
    def build_shift(cfg, backbone, img_size):
        return MethodParts(input_prompt=Shift(cfg.start))

    try:
        assert "toy-shift" in list_methods()
        model = pgn.create_model("test-vit-timm", "toy-shift", classes=["a", "b", "c"], img_size=64, start=0.5)
        assert model.num_trainable() == 3 + model.head.fc.weight.numel() + model.head.fc.bias.numel()
        pgn.train(model, spec(), epochs=1, out=tmp_path / "run", batch_size=8, lr=0.05, progress=False,
                  device="cpu")
        assert not torch.equal(model.input_prompt.shift, torch.full((3, 1, 1), 0.5))
        model.save_pretrained(tmp_path / "adapter")
        raw = json.loads((tmp_path / "adapter" / CONFIG_FILE).read_text())
        assert (raw["method"], raw["method_config"]) == ("toy-shift", {"start": 0.5})
        loaded = pgn.load(tmp_path / "adapter", device="cpu")
        x = torch.randn(2, 3, 64, 64)
        model.eval()
        with torch.inference_mode():
            torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
        raw["method_config"]["start"] = 3.0  # the method's own value check runs on load, as one line
        (tmp_path / "adapter" / CONFIG_FILE).write_text(json.dumps(raw))
        with pytest.raises(PGNError, match=r"method_config.*start must be in \[-1, 1\]"):
            read_adapter_config(tmp_path / "adapter")
    finally:
        from pgn import methods

        methods._REGISTRY.pop("toy-shift", None)


def test_saved_method_configs_are_validated_field_by_field(tmp_path):
    model = pgn.create_model("test-vit-timm", "pgn", classes=["a", "b"], img_size=64, **SMALL["pgn"])
    model.save_pretrained(tmp_path)
    good = json.loads((tmp_path / CONFIG_FILE).read_text())
    for change, message in (
            ({"method": "nope"}, "unknown method 'nope'"),
            ({"method": "linear"}, "unknown field 'arch'"),  # another method's config: refused, not dropped
            ({"method_config": {**good["method_config"], "library_size": "many"}}, "library_size"),
            ({"method_config": {**good["method_config"], "layout": "sideways"}}, "unknown layout 'sideways'"),
            ({"format_version": 4}, "newer pgn"),
            ({"format_version": 0}, "not a version")):
        (tmp_path / CONFIG_FILE).write_text(json.dumps({**good, **change}))
        with pytest.raises(PGNError, match=message) as e:
            read_adapter_config(tmp_path)
        assert "\n" not in str(e.value)


def test_a_format_1_config_becomes_the_methods_own_config():
    """Format 1 stored every method's fields side by side; each method keeps only its own."""
    common = dict(backbone="test-vit-timm", backbone_width=64, class_names=["a", "b"], img_size=64,
                  mean=[0.5] * 3, std=[0.5] * 3, format_version=1, num_prompts=8, layout="append", head="linear",
                  head_norm="batchnorm", template=None, vp_pad=6,
                  generator={"num_prompts": 8, "library_size": 32, "input_size": 48, "library_space": "latent"})
    pgn_cfg = AdapterConfig.from_dict({**common, "method": "pgn"}, "v1")
    assert pgn_cfg.method_config == PGNConfig(num_prompts=8, library_size=32, generator_size=48)
    assert pgn_cfg.generator["input_size"] == 48 and pgn_cfg.format_version == 3
    assert AdapterConfig.from_dict({**common, "method": "vp"}, "v1").method_config == pgn.VPConfig(pad=6)
    assert AdapterConfig.from_dict({**common, "method": "iip"}, "v1").method_config == pgn.IIPConfig(num_prompts=8)
    old_head = {k: v for k, v in common.items() if k != "head_norm"}  # before the normalised head: raw features
    assert AdapterConfig.from_dict({**old_head, "method": "linear"}, "v1").head_norm == "none"


def test_a_bounded_vp_trains_on_what_an_8_bit_canvas_carries():
    """Bahng's frame is added without bounds, so a large one leaves the pixel range and the 8-bit canvas a
    server receives clips it; bounded, the prompted image is what the canvas carries (up to rounding)."""
    from pgn.pixels import from_uint8, to_uint8

    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for bounded, exact in ((False, False), (True, True)):
        model, _ = _create("vp", {"pad": 4, "bounded": bounded})
        pre = model.backbone.preprocessing
        x = from_uint8(to_uint8((images - torch.tensor(pre.mean).view(1, 3, 1, 1)) / torch.tensor(pre.std).view(1, 3, 1, 1),
                                pre.mean, pre.std), pre.mean, pre.std)
        with torch.no_grad():
            model.input_prompt.top.fill_(5.0)  # far past white in every channel
            model.input_prompt.left.fill_(-5.0)  # far past black
        canvas = model.canvas(x)
        sent = from_uint8(to_uint8(canvas, pre.mean, pre.std), pre.mean, pre.std)
        step = 1 / (255 * min(pre.std))  # half an 8-bit step, normalised, is below this
        assert ((canvas - sent).abs().max().item() <= step) == exact
