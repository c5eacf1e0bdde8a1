"""Training state as JSON + safetensors: it reloads bit for bit, and a malformed file names itself."""
from __future__ import annotations

import json
import math
import random
import re

import numpy as np
import pytest
import torch

from benchmark.training.state_files import load_state, save_state


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        same_bytes = a.reshape(-1).view(torch.uint8).equal(b.reshape(-1).view(torch.uint8))
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and same_bytes
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return math.copysign(1, a) == math.copysign(1, b) and (a == b or (math.isnan(a) and math.isnan(b)))
    return a == b


def test_every_kind_of_value_reloads_exactly(tmp_path):
    state = {
        0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3).t(), "bf16": torch.randn(4).bfloat16()},
        "groups": [{"betas": (0.9, 0.999), "eps": 1e-8, "params": [0, 1], "fused": None, "amsgrad": False}],
        "floats": [0.1, -0.0, float("inf"), float("nan"), 1 / 3],
        "big": 2**70,
        "python_rng": random.getstate(),
        "numpy_rng": np.random.get_state(),
        "generator": torch.Generator().manual_seed(5).get_state(),
        "shadow": [torch.ones(2, dtype=torch.float16), torch.arange(3)],
    }
    save_state(tmp_path / "part", state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part.json", "part.safetensors"]
    assert _equal(state, load_state(tmp_path / "part"))


def test_an_optimizer_and_a_grad_scaler_continue_as_if_never_saved(tmp_path):
    def steps(opt, param, n):
        for _ in range(n):
            param.grad = torch.sin(param.detach() * 3)
            opt.step()

    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(5))
    b = torch.nn.Parameter(a.detach().clone())
    opt_a, opt_b = torch.optim.AdamW([a], lr=0.1), torch.optim.AdamW([b], lr=0.1)
    steps(opt_a, a, 2)
    save_state(tmp_path / "optimizer", opt_a.state_dict())
    with torch.no_grad():
        b.copy_(a)
    opt_b.load_state_dict(load_state(tmp_path / "optimizer"))
    steps(opt_a, a, 3)
    steps(opt_b, b, 3)
    assert a.detach().equal(b.detach())

    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=7)
    save_state(tmp_path / "grad_scaler", scaler.state_dict())
    again = torch.amp.GradScaler("cpu")
    again.load_state_dict(load_state(tmp_path / "grad_scaler"))
    assert again.state_dict() == scaler.state_dict()


@pytest.mark.parametrize("index, why", [
    ("{", "not a JSON state index"),
    ('{"dict": [], "tuple": []}', "one tag"),
    ('{"pickle": "x"}', "unknown tag"),
    ('{"tensor": "t9"}', "KeyError"),
    ('{"ndarray": {"dtype": "O", "shape": [1], "data": [1]}}', "not plain numbers"),
    ('{"dict": [[[1], 2]]}', "dict key"),
    ('{"float": "1.5"}', "a float tag holds '1.5'"),
    ('{"float": 1}', "a float tag holds 1"),
    ("[" * 100000 + "]" * 100000, "not a JSON state index"),
])
def test_a_malformed_index_names_its_file(tmp_path, index, why):
    save_state(tmp_path / "part", {"x": torch.zeros(1)})
    (tmp_path / "part.json").write_text(index)
    with pytest.raises(ValueError, match=f"part.json: .*{why}"):
        load_state(tmp_path / "part")


def test_an_index_written_before_the_float_tag_still_loads_its_nan_and_infinity(tmp_path):
    """Checkpoints saved before strict JSON hold Python's NaN and Infinity tokens: a resume reads them
    as the numbers they were, not as null (None would fail the optimizer's or scaler's first step)."""
    save_state(tmp_path / "part", {"x": torch.zeros(1)})
    (tmp_path / "part.json").write_text('{"dict": [["scale", Infinity], ["low", -Infinity], ["found_inf", NaN]]}')
    back = load_state(tmp_path / "part")
    assert back["scale"] == math.inf and back["low"] == -math.inf and math.isnan(back["found_inf"])


def test_a_missing_or_garbage_tensor_file_names_itself(tmp_path):
    save_state(tmp_path / "part", {"x": torch.zeros(1)})
    (tmp_path / "part.safetensors").write_bytes(b"\x80\x02" + b"garbage" * 10)
    with pytest.raises(ValueError, match="part.safetensors: not a safetensors file"):
        load_state(tmp_path / "part")
    (tmp_path / "part.safetensors").unlink()
    with pytest.raises(ValueError, match="part.safetensors: missing"):
        load_state(tmp_path / "part")


def test_what_is_not_plain_data_is_refused_when_written(tmp_path):
    with pytest.raises(TypeError, match="part.json: cannot write a object"):
        save_state(tmp_path / "part", {"x": object()})
    assert not (tmp_path / "part.json").exists()


def test_the_index_is_readable_json(tmp_path):
    save_state(tmp_path / "part", {"step": 3, "generator": torch.zeros(2, dtype=torch.uint8)})
    assert json.loads((tmp_path / "part.json").read_text()) == {"dict": [["step", 3], ["generator", {"tensor": "t0"}]]}


@pytest.mark.parametrize("text, why", [('{"config": ', "not valid JSON"), ("[1, 2]", "holds a JSON list, not an object"), ("\udcff", "not valid JSON")])
def test_a_damaged_run_json_names_its_file(tmp_path, text, why):
    """A training folder's run.json, read on every start: damaged, it is named, not a bare JSON error or a traceback."""
    from benchmark.training.checkpoints import start_or_resume

    (tmp_path / "run.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(ValueError, match=f"{tmp_path / 'run.json'}: {why}"):
        start_or_resume(tmp_path, {"config": {}})


def test_a_run_whose_rows_another_evaluator_scored_is_refused_before_any_method(tmp_path):
    """A rerun (--method X added, a resume) keeps the rows of methods not rerun beside the new ones,
    under one evaluator record: weights changed at a --detector path, or a newer published evaluator,
    would have scored half the table with another detector, silently."""
    from benchmark.protocol import _check_same_evaluator
    from benchmark.published_models import default_detector
    from implicit_concept.content_hashes import sha256_file
    from implicit_concept.detector.inference import Detector

    from .real_runs import real_run
    from .test_results_page import fake_run

    detector = Detector.load(default_detector())
    run = real_run(tmp_path / "runs" / "r")
    _check_same_evaluator(run, detector)  # no results yet
    fake_run(run.root, evaluator=sha256_file(detector.path))
    _check_same_evaluator(run, detector)  # the evaluator that scored its rows
    results = json.loads((run.root / "results.json").read_text())
    (run.root / "results.json").write_text(json.dumps({**results, "detector": {**results["detector"], "sha256": "f" * 64}}))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(detector.path))}: this run's evaluator \(sha256 {sha256_file(detector.path)[:12]}\) "
                       rf"is not the one that scored the rows of {re.escape(str(run.root / 'results.json'))} \(ffffffffffff\); use another --name"):
        _check_same_evaluator(run, detector)
    (run.root / "results.json").write_text(json.dumps({**results, "detector": {**results["detector"], "sha256": "f" * 64}, "rows": []}))
    _check_same_evaluator(run, detector)  # no rows to keep: nothing to mix
