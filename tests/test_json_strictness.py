"""One rule for JSON read from a file someone hands over or edits: every reader a lab reaches refuses
the same things, in one line naming the file. A key given twice read as its last value (jq and
Python agree, other readers take the first or refuse it), NaN read as a number, a FIFO read forever.
"""
import json
import os
import re
from pathlib import Path

import pytest

from implicit_concept.json_records import MAX_JSON_FILE_BYTES, MAX_NESTING, parse_json


def _pipeline_folder(root: Path) -> Path:
    """As far as the JSON files go, a diffusers pipeline folder: its index and a tokenizer config."""
    (root / "tokenizer").mkdir(parents=True)
    (root / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (root / "tokenizer" / "tokenizer_config.json").write_text('{"model_max_length": 77}')
    return root


def _pretrained_index(tmp_path):
    from benchmark.models.pretrained_check import check_pretrained

    folder = _pipeline_folder(tmp_path / "pipe")
    return folder / "model_index.json", lambda: check_pretrained(folder)


def _score_pipeline_config(tmp_path):
    from benchmark.models.pipelines import load_pipeline

    folder = _pipeline_folder(tmp_path / "pipe")
    return folder / "tokenizer" / "tokenizer_config.json", lambda: load_pipeline(folder)


def _negative_prompt_source(tmp_path):
    from benchmark.external import pipeline_negative_prompt
    from implicit_concept.geom_erasing.training_target import METADATA_FILE

    folder = _pipeline_folder(tmp_path / "pipe")
    return folder / METADATA_FILE, lambda: pipeline_negative_prompt(folder)


def _report_results(tmp_path):
    from benchmark.cli import main

    run = tmp_path / "run"
    run.mkdir()

    def report():
        if main(["report", str(run)]) != 0:
            raise ValueError("report failed")
    return run / "results.json", report


def _detector_record(tmp_path):
    from implicit_concept.detector.weights import DetectorRecord

    return tmp_path / "detector.json", lambda: DetectorRecord.read(tmp_path / "detector.json")


def _clean_reference(tmp_path):
    from implicit_concept.scoring import CleanReference

    return tmp_path / "clean_reference.json", lambda: CleanReference.read(tmp_path / "clean_reference.json")


READERS = {"pretrained-index": _pretrained_index, "score-pipeline-config": _score_pipeline_config,
           "negative-prompt": _negative_prompt_source, "report-results": _report_results,
           "detector-record": _detector_record, "clean-reference": _clean_reference}


def _oversized(path: Path) -> None:
    with open(path, "wb") as f:  # sparse: no disk taken
        f.truncate(MAX_JSON_FILE_BYTES + 1)


def _fifo(path: Path) -> None:
    path.unlink(missing_ok=True)
    os.mkfifo(path)


#: What is put where the reader expects its JSON file, and what the one line says of it.
CLASSES = {
    "fifo": (_fifo, r"a FIFO \(named pipe\), where a file was expected"),
    "oversized": (_oversized, rf"over {MAX_JSON_FILE_BYTES} bytes"),
    "duplicate-key": (b'{"seed": 1, "negative_prompt": "x", "seed": 2}', r"key 'seed' appears twice in one object"),
    "nan": (b'{"negative_prompt": "x", "score": NaN}', r"NaN is not JSON"),
    "infinity": (b'{"negative_prompt": "x", "score": [1, -Infinity]}', r"-Infinity is not JSON"),
    "out-of-range": (b'{"negative_prompt": "x", "score": 1e999}', r"number 1e999 is beyond a double's range"),
    "deep": (b'{"a": ' + b"[" * MAX_NESTING + b"]" * MAX_NESTING + b"}", rf"nested too deeply \(more than {MAX_NESTING} levels"),
    "not-an-object": (b'["negative_prompt"]', r"holds a JSON list, not an object"),
    "bad-utf8": (b'{"negative_prompt": "\xff"}', r"not valid JSON \(not UTF-8: byte b'\\xff' at offset 21\)"),
}


@pytest.mark.parametrize("klass", CLASSES)
@pytest.mark.parametrize("reader", READERS)
def test_every_reader_a_lab_hands_a_json_file_to_refuses_it_in_one_line_naming_it(tmp_path, capsys, reader, klass):
    path, read = READERS[reader](tmp_path)
    make, said = CLASSES[klass]
    if callable(make):
        make(path)
    else:
        path.write_bytes(make)
    with pytest.raises(Exception) as e:
        read()
    if reader == "report-results":  # the command's one line, on stderr
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "Traceback" not in err[0], err
        message = err[0]
    else:
        message = str(e.value)
    assert f"{path}: " in message and "\n" not in message, message
    assert re.search(said, message), message


def test_what_the_project_writes_and_ships_reads_by_the_rule():
    """The shipped records and configs (benchmark/published, benchmark/reference, manifests) hold no
    key twice, no NaN and nest far less than the bound: the rule refuses nothing the project made."""
    root = Path(__file__).resolve().parents[1]
    files = [f for folder in ("benchmark/published", "benchmark/reference", "manifests") for f in (root / folder).rglob("*.json")]
    assert files
    for f in files:
        parse_json(f.read_bytes(), f)


def test_nesting_at_the_bound_reads_and_one_past_it_is_refused_for_json_and_toml(tmp_path):
    from implicit_concept.validate import read_toml

    assert parse_json("[" * MAX_NESTING + "]" * MAX_NESTING, "x") is not None
    for text in ("[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1), "[" * 100_000 + "]" * 100_000, '{"a": ' * 100_000):
        with pytest.raises(ValueError, match=rf"^x: nested too deeply \(more than {MAX_NESTING} levels"):
            parse_json(text, "x")
    for depth in (MAX_NESTING, 5000):  # past the bound, and past what the TOML parser's recursion takes
        (tmp_path / "deep.toml").write_text("a = " + "[" * depth + "]" * depth)
        with pytest.raises(ValueError, match=rf"deep.toml: nested too deeply \(more than {MAX_NESTING} levels"):
            read_toml(tmp_path / "deep.toml")
    (tmp_path / "fine.toml").write_text("a = " + "[" * (MAX_NESTING - 1) + "]" * (MAX_NESTING - 1))
    assert read_toml(tmp_path / "fine.toml")


def test_a_key_twice_is_found_in_an_object_at_any_depth_and_named():
    with pytest.raises(ValueError, match=r"^r.json: key 'seed' appears twice"):
        parse_json('{"rows": [{"method": "sd"}, {"seed": 0, "x": 1, "seed": 1}]}', "r.json")
    assert parse_json('{"a": {"seed": 0}, "b": {"seed": 1}}', "r.json") == {"a": {"seed": 0}, "b": {"seed": 1}}


def test_a_shards_key_json_with_a_key_twice_or_nan_is_refused_naming_the_shard_and_sample(tmp_path):
    """KEY.json is written by the toolkit alone: one with a key twice or NaN was edited or made elsewhere."""
    from implicit_concept.shard_reader import ShardError, iter_samples
    from implicit_concept.shard_writer import TarShardWriter

    for name, record, said in (("twice", b'{"key": "k", "key": "j"}', "key 'key' appears twice"), ("nan", b'{"key": NaN}', "NaN is not JSON")):
        with TarShardWriter(tmp_path / f"{name}.tar") as writer:
            writer.write("k", {"jpg": b"", "json": record})
            writer.close()
        with pytest.raises(ShardError, match=rf"{name}\.tar: sample k: KEY.json: {said}"):
            list(iter_samples(tmp_path / f"{name}.tar"))


def test_a_prompts_scene_with_a_key_twice_is_refused_naming_its_line(tmp_path):
    from benchmark.prompts import read_prompts

    path = tmp_path / "lab.csv"
    path.write_text('case_number,prompt,evaluation_seed,scene\n0,a cat,1,"{""size"": 1, ""size"": 2}"\n')
    with pytest.raises(ValueError, match=rf"^{path}:2: bad row \(scene: key 'size' appears twice"):
        read_prompts(path)


def test_a_training_state_index_keeps_its_older_nan_but_not_a_key_twice(tmp_path):
    """An index saved before strict JSON holds NaN (read back as NaN: a resume needs it); a key twice
    was never written by any version."""
    import torch

    from benchmark.training.state_files import load_state, save_state

    save_state(tmp_path / "part", {"x": torch.zeros(1)})
    (tmp_path / "part.json").write_text('{"dict": [["scale", NaN]], "dict": []}')
    with pytest.raises(ValueError, match=r"part.json: not a JSON state index \(key 'dict' appears twice in one object"):
        load_state(tmp_path / "part")


def test_a_built_folders_record_with_a_key_twice_is_a_problem_verify_names(tmp_path):
    from builders.verify import verify_dataset

    out = tmp_path / "built"
    out.mkdir()
    (out / "recipe.json").write_text(json.dumps({"recipe_sha256": "a"})[:-1] + ', "recipe_sha256": "b"}')
    problems = verify_dataset(out).problems
    assert any(p.startswith(f"{out / 'recipe.json'}: unreadable (key 'recipe_sha256' appears twice") for p in problems), problems


def test_a_runs_earlier_rows_are_merged_only_from_a_results_json_read_by_the_rule(tmp_path):
    """The rows of methods not rerun are kept from results.json at a run's end: one edited by hand to
    hold a key twice was merged as Python reads it, its other reading left in the file."""
    from benchmark.protocol import _union

    row = '{"method": "sd", "concept": "qrcode", "status": "failed"}'
    (tmp_path / "results.json").write_text('{"name": "r", "track": "debug", "fp_rate": {}, "rows": [' + row + '], "rows": []}')
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'results.json'}: key 'rows' appears twice"):
        _union(tmp_path / "results.json", [{"method": "esd", "concept": "qrcode", "subset": "icd-qrcode"}])
