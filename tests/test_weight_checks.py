"""Weights a lab hands over or a run folder holds are checked before anything trains or scores with
them: a pipeline part (or a resumed checkpoint) lacking a tensor, holding an integer tensor where
the model holds floats, or holding NaN or infinite values is refused naming the file and the tensor
(such a model draws blank images, which score as a perfect erasure); a shard index or a
``config.json`` naming a pickle is refused unopened; a loss that turns NaN stops the run."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from benchmark.models.pipelines import build_tiny_pipeline, load_pipeline
from benchmark.training import CHECKPOINTS_DIR, TrainingConfig, train
from benchmark.training import loop
from implicit_concept.geom_erasing.training_target import GeomErasingConfig

from .test_training import FAST, MICRO, _Planted, _sd_shaped_pipeline, _write_shards

UNET, TEXT, VAE = "unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors", "vae/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    build_tiny_pipeline(MICRO, root / "tokenizer", seed=0).save_pretrained(root / "base")
    return root / "base"


def _handed(base: Path, tmp_path: Path) -> Path:
    handed = tmp_path / "handed"
    shutil.copytree(base, handed)
    return handed


def _edit(path: Path, change) -> None:
    state = load_file(path)
    change(state)
    save_file(state, path)


def _key(state: dict, suffix: str) -> str:
    return next(k for k in state if k == suffix or k.endswith("." + suffix))


def _set(suffix: str, make):
    def change(state):
        key = _key(state, suffix)
        state[key] = make(state[key])
    return change


def _drop(suffix: str):
    return lambda state: state.pop(_key(state, suffix))


NAN = lambda t: torch.full_like(t, float("nan"))  # noqa: E731
INF = lambda t: torch.full_like(t, float("inf"))  # noqa: E731


@pytest.mark.parametrize("file, change, problem", [
    (UNET, _set("conv_out.bias", INF), r"unet/diffusion_pytorch_model\.safetensors: tensor conv_out\.bias holds NaN or infinite values; .*perfect erasure"),
    (TEXT, _set("final_layer_norm.weight", NAN), r"text_encoder/model\.safetensors: tensor \S*final_layer_norm\.weight holds NaN or infinite values"),
    (VAE, _set("anchor", NAN), r"vae/diffusion_pytorch_model\.safetensors: tensor anchor holds NaN or infinite values"),
    (UNET, _set("conv_in.weight", lambda t: t.round().to(torch.int16)),
     r"unet/diffusion_pytorch_model\.safetensors: tensor conv_in\.weight is I16, where UNet2DConditionModel holds floats"),
    (TEXT, _set("final_layer_norm.weight", lambda t: t.round().to(torch.int32)),
     r"text_encoder/model\.safetensors: tensor \S*final_layer_norm\.weight is I32, where CLIPTextModel holds floats"),
    (UNET, _drop("conv_in.weight"), r"unet/diffusion_pytorch_model\.safetensors: holds no tensor conv_in\.weight, which UNet2DConditionModel needs"),
    (TEXT, _drop("final_layer_norm.weight"), r"text_encoder/model\.safetensors: holds no tensor \S*final_layer_norm\.weight, which CLIPTextModel needs"),
])
def test_a_pipeline_part_with_missing_integer_or_non_finite_weights_is_refused_naming_the_file_and_tensor(base, tmp_path, file, change, problem):
    handed = _handed(base, tmp_path)
    _edit(handed / file, change)
    with pytest.raises(ValueError, match=problem):
        load_pipeline(handed)


def test_a_corrupt_safetensors_header_is_refused_naming_the_file(base, tmp_path):
    handed = _handed(base, tmp_path)
    data = (handed / UNET).read_bytes()
    (handed / UNET).write_bytes(data[:8] + b"X" + data[9:])  # the JSON header no longer parses
    with pytest.raises(ValueError, match=r"unet/diffusion_pytorch_model\.safetensors: not a readable safetensors file \(SafetensorError"):
        load_pipeline(handed)


def test_weights_that_overflow_the_asked_dtype_are_refused(base, tmp_path):
    handed = _handed(base, tmp_path)
    _edit(handed / TEXT, _set("final_layer_norm.weight", lambda t: torch.full_like(t, 1e6)))
    assert load_pipeline(handed).text_encoder.dtype == torch.float32  # 1e6 is a float32 value
    with pytest.raises(ValueError, match=r"final_layer_norm\.weight holds NaN or infinite values once read as torch\.float16"):
        load_pipeline(handed, torch_dtype=torch.float16)


def test_old_attention_names_load_and_an_integer_tensor_under_one_is_refused(tmp_path):
    """SD v1.5 snapshots may hold the VAE's attention under its old names (``query``, ``proj_attn``),
    which diffusers renames on load: they load, and an integer tensor there is refused all the same."""
    sd = _sd_shaped_pipeline(tmp_path)
    fresh = load_pipeline(sd).vae.state_dict()
    old_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}

    def rename(state):
        for key in [k for k in state if ".attentions.0." in k]:
            new = key
            for name, old in old_names.items():
                new = new.replace(f".attentions.0.{name}.", f".attentions.0.{old}.")
            state[new] = state.pop(key)

    _edit(sd / VAE, rename)
    assert any(".query." in k for k in load_file(sd / VAE))
    loaded = load_pipeline(sd).vae.state_dict()
    assert loaded.keys() == fresh.keys() and all(torch.equal(loaded[k], fresh[k]) for k in fresh)
    _edit(sd / VAE, _set("encoder.mid_block.attentions.0.query.weight", lambda t: t.round().to(torch.int8)))
    with pytest.raises(ValueError, match=r"vae/diffusion_pytorch_model\.safetensors: tensor encoder\.mid_block\.attentions\.0\.query\.weight is I8"):
        load_pipeline(sd)


def _index(handed: Path, part: str, single: str, shard: str) -> Path:
    """Replace ``part``'s weights by a shard index mapping every tensor to ``shard``."""
    keys = list(load_file(handed / part / single))
    (handed / part / single).unlink()
    index = handed / part / single.replace(".safetensors", ".safetensors.index.json")
    index.write_text(json.dumps({"metadata": {"total_size": 1}, "weight_map": {k: shard for k in keys}}))
    return index


@pytest.mark.parametrize("part, single", [("unet", "diffusion_pytorch_model.safetensors"), ("text_encoder", "model.safetensors")])
@pytest.mark.parametrize("shard, problem", [
    ("weights.bin", r"'weights\.bin' is not a \.safetensors file \(\.bin is a pickle, which is never loaded\)"),
    ("../outside.safetensors", r"'\.\./outside\.safetensors' is not the name of a file in this folder"),
    ("gone.safetensors", r"'gone\.safetensors' does not exist"),
])
def test_a_shard_index_naming_anything_but_a_safetensors_file_beside_it_is_refused_unopened(base, tmp_path, part, single, shard, problem):
    handed = _handed(base, tmp_path)
    marker = tmp_path / "code-ran"
    shutil.copy(handed / part / single, handed / "outside.safetensors")
    torch.save({"state": _Planted(marker)}, handed / part / "weights.bin")
    index = _index(handed, part, single, shard)
    with pytest.raises(ValueError, match=rf"handed/{part}/{index.name}: weight_map entry '[^']+': {problem}"):
        load_pipeline(handed)
    assert not marker.exists()


@pytest.mark.parametrize("content, problem", [("{", r"not valid JSON \(Expecting"), ('{"weight_map": []}', "holds no weight_map object")])
def test_a_malformed_shard_index_is_refused_naming_it(base, tmp_path, content, problem):
    handed = _handed(base, tmp_path)
    index = _index(handed, "unet", "diffusion_pytorch_model.safetensors", "x.safetensors")
    index.write_text(content)
    with pytest.raises(ValueError, match=rf"diffusion_pytorch_model\.safetensors\.index\.json: {problem}"):
        load_pipeline(handed)


def test_sharded_safetensors_parts_load_and_a_bad_shard_is_named(base, tmp_path):
    pipe = load_pipeline(base)
    sharded = tmp_path / "sharded"
    pipe.save_pretrained(sharded, max_shard_size="100KB")
    shards = sorted((sharded / "unet").glob("*-of-*.safetensors"))
    assert len(shards) > 1 and len(list((sharded / "text_encoder").glob("*-of-*.safetensors"))) > 1
    loaded = load_pipeline(sharded)
    assert all(torch.equal(a, b) for a, b in zip(loaded.unet.state_dict().values(), pipe.unet.state_dict().values()))
    bad = shards[-1]
    _edit(bad, lambda state: state.update({k: NAN(v) for k, v in state.items()}))
    with pytest.raises(ValueError, match=rf"unet/{bad.name}: tensor \S+ holds NaN or infinite values"):
        load_pipeline(sharded)


def test_a_config_naming_its_own_weights_file_is_refused_and_the_pickle_never_opened(base, tmp_path):
    """transformers reads ``config.json``'s ``transformers_weights`` (``adapter_model.bin`` included, a
    pickle) in place of ``model.safetensors``, whatever ``use_safetensors`` says."""
    handed = _handed(base, tmp_path)
    marker = tmp_path / "code-ran"
    torch.save({"state": _Planted(marker)}, handed / "text_encoder" / "adapter_model.bin")
    config = json.loads((handed / "text_encoder" / "config.json").read_text())
    config["transformers_weights"] = "adapter_model.bin"
    (handed / "text_encoder" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"text_encoder/config\.json: names transformers_weights 'adapter_model\.bin'"):
        load_pipeline(handed)
    assert not marker.exists()


# ---- training: checkpoints and the loop ----

@pytest.fixture(scope="module")
def run(base, tmp_path_factory):
    """A finished micro fine-tune with Geom-Erasing's new rows and an EMA, every step checkpointed."""
    shards = _write_shards(tmp_path_factory.mktemp("shards"))
    config = TrainingConfig(**FAST, geom=GeomErasingConfig(grid=2, concepts=("qrcode",)), ema_decay=0.9)
    return shards, config, train(base, shards, tmp_path_factory.mktemp("run") / "run", config, progress=False)


def _floats(make):
    return lambda state: state.update({k: make(v) for k, v in state.items() if v.is_floating_point()})


def _lr_nan(path: Path) -> None:
    """Set the optimizer's learning rate to NaN in its JSON state."""
    def walk(node):
        if isinstance(node, dict):
            for pair in node.get("dict", []):
                if pair[0] == "lr":
                    pair[1] = float("nan")
                walk(pair[1])
            for value in node.get("tuple", []):
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    tree = json.loads(path.read_text())
    walk(tree)
    path.write_text(json.dumps(tree))


@pytest.mark.parametrize("name, change, problem", [
    ("unet.safetensors", _set("conv_in.weight", NAN), r"unet\.safetensors: the unet weights: tensor conv_in\.weight holds NaN or infinite values"),
    ("unet.safetensors", _set("conv_in.weight", lambda t: t.round().to(torch.int32)),
     r"unet\.safetensors: tensor conv_in\.weight is I32, where this run's unet holds torch\.float32"),
    ("ema.safetensors", _floats(NAN), r"ema\.safetensors: shadow_params\[0\] holds NaN or infinite values"),
    ("ema.safetensors", _floats(lambda t: t.round().to(torch.int32)), r"ema\.safetensors: shadow_params\[0\] is torch\.int32 .*where this run holds torch\.float32"),
    ("new_token_rows.safetensors", _floats(INF), r"new_token_rows\.safetensors: rows holds NaN or infinite values"),
    ("optimizer.safetensors", _floats(NAN), r"optimizer\.safetensors: state\.\d+\.\w+ holds NaN or infinite values"),
    ("optimizer.json", None, r"optimizer\.json: param_groups\[\d\]\.lr is nan, not a finite number"),
])
def test_a_checkpoint_with_non_finite_or_integer_weights_is_refused_naming_the_file(base, run, tmp_path, name, change, problem):
    shards, config, full = run
    checkpoint = tmp_path / "resumed" / CHECKPOINTS_DIR / "step-0000001"
    shutil.copytree(full.parent / CHECKPOINTS_DIR / "step-0000001", checkpoint)
    if change is None:
        _lr_nan(checkpoint / name)
    else:
        _edit(checkpoint / name, change)
    with pytest.raises(ValueError, match=problem):
        train(base, shards, tmp_path / "resumed", config, progress=False)
    assert not (tmp_path / "resumed" / "pipeline").exists()


def _unfinished(output_dir: Path) -> bool:
    return not json.loads((output_dir / "run.json").read_text()).get("finished") and not (output_dir / "pipeline").exists()


def test_a_loss_that_turns_nan_stops_the_run_naming_the_step_and_saves_nothing_of_it(base, run, tmp_path, monkeypatch):
    shards, config, _ = run
    calls = []

    def diverging(*args, **kwargs):
        calls.append(1)
        loss = original(*args, **kwargs)
        return loss * float("nan") if len(calls) == 2 else loss

    original = loop.diffusion_loss
    monkeypatch.setattr(loop, "diffusion_loss", diverging)
    out = tmp_path / "diverged"
    with pytest.raises(loop.TrainingDiverged, match=r"diverged: step 2 of 2: the loss is nan, so training stopped before that step's update"):
        train(base, shards, out, config, progress=False)
    assert _unfinished(out)
    assert sorted(p.name for p in (out / CHECKPOINTS_DIR).iterdir()) == ["step-0000001"]


@pytest.mark.parametrize("group, problem", [(0, r"step 2, the unet: tensor \S+ holds NaN"), (-1, r"step 2, the new token rows: tensor rows holds NaN")])
def test_an_update_that_makes_the_weights_nan_is_never_checkpointed_or_saved(base, run, tmp_path, monkeypatch, group, problem):
    """The loss is computed before the update: a last update that breaks the weights is caught when
    they would be written."""
    shards, config, _ = run
    original, calls = torch.optim.AdamW.step, []

    def breaking(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            with torch.no_grad():
                self.param_groups[group]["params"][0].fill_(float("nan"))
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", breaking)
    out = tmp_path / "broken"
    with pytest.raises(ValueError, match=problem):
        train(base, shards, out, config, progress=False)
    assert _unfinished(out)
    assert sorted(p.name for p in (out / CHECKPOINTS_DIR).iterdir()) == ["step-0000001"]


def test_all_finite_is_exact_when_a_sum_overflows():
    from implicit_concept.tensor_checks import all_finite

    assert all_finite(torch.full((4,), 3e38)) and all_finite(torch.full((4,), 60000.0).half()) and all_finite(torch.zeros(0))
    assert not all_finite(torch.tensor([1.0, float("nan")])) and not all_finite(torch.tensor([float("inf"), -float("inf")]))
    assert not all_finite(torch.tensor([3e38, 3e38, float("-inf")]))


def _add(name: str, make):
    return lambda state: state.__setitem__(name, make(state))


@pytest.mark.parametrize("file, added, cls", [
    (UNET, "down_blocks.0.erasure_adapter.weight", "UNet2DConditionModel"),
    (TEXT, "text_model.encoder.layers.0.concept_gate.weight", "CLIPTextModel"),
    (VAE, "decoder.watermark_filter.bias", "PatchAutoencoder"),
])
def test_a_tensor_the_part_has_no_place_for_is_refused_not_dropped(base, tmp_path, file, added, cls):
    """A lab's erased pipeline whose weights hold a tensor the part's class has no place for (an
    adapter its own code adds, a key written under another name): the loaders drop it with a log
    line, so the folder was scored as a model it is not, its erasure perhaps gone. Refused, naming
    the file and the tensor."""
    handed = _handed(base, tmp_path)
    _edit(handed / file, _add(added, lambda state: torch.zeros(4)))
    with pytest.raises(ValueError, match=rf"{re.escape(file)}: holds tensor {re.escape(added)}, which {cls} has no place for"):
        load_pipeline(handed)


def test_a_text_encoders_saved_position_ids_still_load(base, tmp_path):
    """SD v1.5's text encoder file holds ``position_ids``, a buffer CLIP no longer saves: not an extra tensor."""
    handed = _handed(base, tmp_path)
    _edit(handed / TEXT, _add("text_model.embeddings.position_ids", lambda state: torch.arange(77).unsqueeze(0)))
    assert load_pipeline(handed).text_encoder is not None
