import csv
import io
import json
import os
import re
import stat
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.generation import GenerationSettings, generate_images, image_prompts, image_seed
from benchmark.prompts import Prompt, read_prompts
from benchmark.report import plot_icr, results_markdown


def _pipeline_dir(path, weights=b"unet weights"):
    """A diffusers pipeline folder as far as content keys look: its index, its parts, a hub snapshot's extra checkpoint."""
    (path / "unet").mkdir(parents=True)
    (path / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"], "safety_checker": [null, null]}')
    (path / "unet" / "config.json").write_text("{}")
    (path / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(weights)
    (path / "v1-5-pruned.ckpt").write_bytes(b"a single-file checkpoint diffusers does not load")
    return path


def test_shipped_prompts_are_clean_and_seeded():
    prompts = read_prompts("icd-tiny-eval")
    assert len(prompts) >= 256
    assert len({p.evaluation_seed for p in prompts}) == len(prompts)
    for p in prompts:
        assert not any(w in p.prompt.lower() for w in ("qr", "watermark", "text"))
        assert p.scene and p.scene["objects"]


def test_prompt_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "p.csv"
    bad.write_text("case_number,prompt,evaluation_seed\n0,a,1\nx,b,2\n")
    with pytest.raises(ValueError, match=r"p\.csv:3"):
        read_prompts(bad)
    bad.write_text("case,prompt\n")
    with pytest.raises(ValueError, match="missing column"):
        read_prompts(bad)
    with pytest.raises(FileNotFoundError, match="no such prompts file"):
        read_prompts(tmp_path / "nope.csv")
    bad.write_bytes(b"case_number,prompt,evaluation_seed\n0,caf\xe9,1\n")
    with pytest.raises(ValueError, match=r"p\.csv: not UTF-8 text"):
        read_prompts(bad)
    bad.write_text("case_number,prompt,evaluation_seed\n0," + "a" * 200_000 + ",1\n")
    with pytest.raises(ValueError, match=r"p\.csv: not a CSV \(field larger than field limit"):
        read_prompts(bad)


def test_a_prompts_csv_saved_by_a_spreadsheet_with_a_byte_order_mark_reads_as_without(tmp_path):
    plain = tmp_path / "plain.csv"
    plain.write_text("case_number,prompt,evaluation_seed\n3,a red square,42\n", encoding="utf-8")
    marked = tmp_path / "marked.csv"
    marked.write_text(plain.read_text(encoding="utf-8"), encoding="utf-8-sig")
    assert marked.read_bytes().startswith(b"\xef\xbb\xbf")
    assert read_prompts(marked) == read_prompts(plain) == [Prompt(3, "a red square", 42)]


@pytest.mark.parametrize("scene,said", [
    ("[" * 60_000 + "]" * 60_000, "scene: nested too deeply"),
    ('{"background": 1}', "scene: not a scene a procedural recipe writes (TypeError"),
    ('{"layout": "grid"}', "scene: not a scene a procedural recipe writes (KeyError"),
    ("[1, 2]", "scene: not a scene a procedural recipe writes (TypeError"),
    ('"a red square"', "scene: not a scene a procedural recipe writes (TypeError"),
    ("{", "bad row (scene: not valid JSON (Expecting property name"),
])
def test_a_prompts_scene_prompt_following_cannot_read_is_refused_naming_its_line(tmp_path, scene, said):
    """A nested scene raised RecursionError (a traceback) from the reader; a scene of another shape was
    read, and its KeyError or TypeError came from scoring, after every image was drawn."""
    bad = tmp_path / "lab.csv"
    good = read_prompts("icd-tiny-eval", limit=1)[0]
    rows = [[0, "a cat", 1, json.dumps(good.scene)], [1, "a dog", 2, scene]]
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([["case_number", "prompt", "evaluation_seed", "scene"], *rows])
    bad.write_text(text.getvalue())
    with pytest.raises(ValueError) as e:
        read_prompts(bad)
    assert str(e.value).startswith(f"{bad}:3: bad row (") and said in str(e.value) and "\n" not in str(e.value), str(e.value)[:300]
    bad.write_text(text.getvalue().rsplit("\n1,", 1)[0] + "\n")
    assert read_prompts(bad)[0].scene == good.scene


def test_a_prompts_row_with_an_unquoted_comma_or_a_loosely_written_number_is_refused_naming_its_line(tmp_path):
    bad = tmp_path / "lab.csv"
    # A prompt spanning two lines puts the next rows' numbers past their index.
    head = 'case_number,evaluation_seed,prompt\n0,1,"a cat\nin a hat"\n'
    bad.write_text(head + "1,2,a cat, a dog\n")  # the prompt's comma unquoted: "a dog" would be dropped
    with pytest.raises(ValueError, match=r"lab\.csv:4: bad row \(4 fields for the header's 3; quote a prompt"):
        read_prompts(bad)
    for number in ("1_0", "1.0", "1e3", "\u0661"):  # int() reads the first as 10 and the last (Arabic-Indic one) as 1
        bad.write_text(f"{head}{number},2,a dog\n")
        with pytest.raises(ValueError, match=rf"lab\.csv:4: bad row \(case_number '{number}' is not a whole number"):
            read_prompts(bad)
    bad.write_text(head + "1\n")
    with pytest.raises(ValueError, match=r"lab\.csv:4: bad row \(no evaluation_seed\)"):
        read_prompts(bad)
    bad.write_text(head + " +1, 2 ,a dog, quoted\n".replace("a dog, quoted", '"a dog, quoted"'))
    assert read_prompts(bad)[1] == Prompt(1, "a dog, quoted", 2)
    bad.write_text(head + "1,2,a dog,\n")  # a trailing comma: an empty field, nothing cut off
    assert read_prompts(bad)[1] == Prompt(1, "a dog", 2)


def _fake_generate(calls):
    def generate(prompts, negatives, seeds):
        calls.append(list(seeds))
        return [Image.fromarray(np.random.default_rng(s).integers(0, 255, (64, 64, 3), dtype=np.uint8)) for s in seeds]

    return generate


def test_images_not_drawn_in_a_folder_are_never_replaced_by_drawing_there(tmp_path):
    """score-pipeline --out mine/ draws into mine/images/: a lab's own images kept there were deleted and redrawn."""
    theirs = tmp_path / "images"
    theirs.mkdir()
    Image.new("RGB", (64, 64), "red").save(theirs / "0_0.png")
    kept = (theirs / "0_0.png").read_bytes()
    prompts = [Prompt(0, "p0", 10)]
    with pytest.raises(ValueError, match=r"images: holds 1 PNG images not drawn here \(no source.json beside them, e.g. 0_0.png\)"):
        generate_images(_fake_generate([]), prompts, theirs, progress=False, source={"model": "mine"})
    assert (theirs / "0_0.png").read_bytes() == kept and not (theirs / "source.json").exists()
    ours = tmp_path / "ours"
    generate_images(_fake_generate([]), prompts, ours, progress=False, source={"model": "a"})
    calls: list = []
    generate_images(_fake_generate(calls), prompts, ours, progress=False, source={"model": "b"})
    assert calls == [[10000]], "images drawn here by another model are drawn anew"


@pytest.mark.parametrize("model", ["a", "b"], ids=["same-model", "another-model"])
def test_images_copied_beside_drawn_ones_are_never_replaced_by_drawing_there(tmp_path, model):
    """A lab's own PNGs copied into score-pipeline's images/ after a first draw (its source.json there)
    were deleted as stale by the next draw, whichever model drew it; hidden files are not images."""
    ours = tmp_path / "ours"
    generate_images(_fake_generate([]), [Prompt(0, "p0", 10), Prompt(1, "p1", 11)], ours, progress=False, source={"model": "a"})
    Image.new("RGB", (64, 64), "red").save(ours / "mine_0.png")
    (ours / "._0_0.png").write_bytes(b"AppleDouble metadata")
    kept = {p.name: p.read_bytes() for p in ours.iterdir()}
    with pytest.raises(ValueError, match=r"ours: holds 1 PNG images not drawn here \(not listed in its source.json, e.g. mine_0.png\)"):
        generate_images(_fake_generate([]), [Prompt(0, "p0", 10)], ours, progress=False, source={"model": model})
    assert {p.name: p.read_bytes() for p in ours.iterdir()} == kept
    (ours / "mine_0.png").unlink()
    calls: list = []
    generate_images(_fake_generate(calls), [Prompt(0, "p0", 10)], ours, progress=False, source={"model": model})
    assert calls == ([] if model == "a" else [[10000]]) and (ours / "._0_0.png").exists()


def test_generation_resumes_to_the_same_images(tmp_path):
    prompts = [Prompt(i, f"p{i}", 10 + i) for i in range(5)]
    settings = GenerationSettings(images_per_prompt=2, chunk_size=3)
    calls: list = []
    full = generate_images(_fake_generate(calls), prompts, tmp_path / "a", settings=settings, progress=False)
    assert [p.name for p in full[:3]] == ["0_0.png", "0_1.png", "1_0.png"]
    assert sum(len(c) for c in calls) == 10
    generate_images(_fake_generate([]), prompts[:2], tmp_path / "b", settings=settings, progress=False)
    calls.clear()
    resumed = generate_images(_fake_generate(calls), prompts, tmp_path / "b", settings=settings, progress=False)
    assert calls == [[11001, 12000, 12001], [13000, 13001, 14000], [14001]], "complete chunks are skipped, fixed chunks rerun whole"
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(full, resumed))
    assert image_seed(prompts[1], 1) != image_seed(prompts[2], 0)
    # What pairs each image with its prompt (prompt following) follows the same order.
    assert [p.name.split("_")[0] for p in full] == [str(p.case_number) for p in image_prompts(prompts, settings)]


def test_images_are_sampled_under_the_settings_threads_and_made_anew_under_others(tmp_path):
    """Sampling can depend on the thread count, so a track's images are made under its count, the
    process gets its own back, and images made under another count are not reused."""
    import torch

    prompts = [Prompt(i, f"p{i}", 10 + i) for i in range(2)]
    seen: list = []

    def generate(prompts, negatives, seeds):
        seen.append(torch.get_num_threads())
        return _fake_generate([])(prompts, negatives, seeds)

    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        for threads in (1, 1, 2):
            generate_images(generate, prompts, tmp_path, settings=GenerationSettings(threads=threads), progress=False, source={"unet": "a"})
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
    assert seen == [1, 2]


def test_images_of_another_model_are_made_anew(tmp_path):
    """A resumed run keeps images only when the same model, negative prompt and settings made them."""
    prompts = [Prompt(i, f"p{i}", 10 + i) for i in range(4)]
    settings = GenerationSettings(chunk_size=2)
    runs = [({"unet": "models/a"}, ""), ({"unet": "models/a"}, ""), ({"unet": "models/b"}, ""), ({"unet": "models/b"}, "logo")]
    made = []
    for source, negative in runs:
        calls: list = []
        generate_images(_fake_generate(calls), prompts, tmp_path / "img", negative_prompt=negative,
                        settings=settings, progress=False, source=source)
        made.append(sum(len(c) for c in calls))
    assert made == [4, 0, 4, 4]
    assert len(list((tmp_path / "img").glob("*.png"))) == 4
    # A record drawing wrote before images were keyed one by one (no "images"): stale, drawn anew.
    record = json.loads((tmp_path / "img" / "source.json").read_text())
    (tmp_path / "img" / "source.json").write_text(json.dumps({k: v for k, v in record.items() if k != "images"}))
    calls = []
    generate_images(_fake_generate(calls), prompts, tmp_path / "img", negative_prompt="logo", settings=settings, progress=False, source=runs[-1][0])
    assert sum(len(c) for c in calls) == 4


@pytest.mark.parametrize("text", ["{", "null", "[]", '{"tool": "theirs", "images": {"0_0.png": "x"}}',
                                  '{"model": "a", "negative_prompt": "", "settings": {}, "images": []}', '{"model": "a", "settings": {}}',
                                  "[" * 100_000 + "]" * 100_000],
                         ids=["damaged", "null", "a-list", "another-tools", "images-not-an-object", "fields-missing", "nested"])
def test_images_beside_a_source_json_drawing_did_not_write_are_never_replaced(tmp_path, text):
    """A damaged source.json, or another tool's file of that name, beside a lab's PNGs: the PNGs were
    deleted and redrawn (and the file replaced), though nothing says drawing made them. Drawing writes
    its record whole (renamed into place), so one it cannot read is not its own: refused, as PNGs
    with no record are, and the file alone is not replaced either."""
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (64, 64), "red").save(folder / "0_0.png")
    (folder / "source.json").write_text(text)
    kept = {p.name: p.read_bytes() for p in folder.iterdir()}
    calls: list = []
    with pytest.raises(ValueError, match=r"images: holds 1 PNG images not drawn here \(the source.json beside them is not "
                                         r"drawing's record: .*, e.g. 0_0.png\)"):
        generate_images(_fake_generate(calls), [Prompt(0, "p0", 10)], folder, progress=False, source={"model": "a"})
    (folder / "0_0.png").unlink()
    with pytest.raises(ValueError, match=r"source.json: not the record drawing writes \(.*\), which drawing would replace"):
        generate_images(_fake_generate(calls), [Prompt(0, "p0", 10)], folder, progress=False, source={"model": "a"})
    assert calls == [] and (folder / "source.json").read_text() == text
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == {"source.json": kept["source.json"]}


def test_a_source_json_that_is_a_fifo_is_refused_not_waited_on(tmp_path):
    """images/source.json a FIFO (a lab's pipe of that name): drawing opened it to read and waited
    for a writer forever."""
    folder = tmp_path / "images"
    folder.mkdir()
    os.mkfifo(folder / "source.json")
    outcome: list = []

    def draw():
        try:
            generate_images(_fake_generate([]), [Prompt(0, "p0", 10)], folder, progress=False, source={"model": "a"})
        except ValueError as e:
            outcome.append(str(e))

    drawing = threading.Thread(target=draw, daemon=True)
    drawing.start()
    drawing.join(60)
    if drawing.is_alive():  # let the reader go: a writer opens the FIFO and closes it at once
        os.close(os.open(folder / "source.json", os.O_WRONLY | os.O_NONBLOCK))
        drawing.join(60)
        pytest.fail("drawing waited on the FIFO")
    assert len(outcome) == 1 and "source.json: not the record drawing writes" in outcome[0], outcome
    assert stat.S_ISFIFO((folder / "source.json").lstat().st_mode)


def test_a_source_json_that_is_a_link_to_a_record_elsewhere_is_refused_and_kept(tmp_path):
    """images/source.json linked to another folder's record (a lab sharing one): read as drawing's,
    and replaced by a file when drawing added an image, so the link was lost."""
    calls: list = []
    generate_images(_fake_generate(calls), [Prompt(0, "p0", 10)], tmp_path / "elsewhere", progress=False, source={"model": "a"})
    record = (tmp_path / "elsewhere" / "source.json").read_bytes()
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "source.json").symlink_to(tmp_path / "elsewhere" / "source.json")
    with pytest.raises(ValueError, match=r"source.json: not the record drawing writes \(a symbolic link\), which drawing would replace"):
        generate_images(_fake_generate(calls), [Prompt(0, "p0", 10), Prompt(1, "p1", 11)], folder, progress=False, source={"model": "a"})
    assert (folder / "source.json").is_symlink() and (tmp_path / "elsewhere" / "source.json").read_bytes() == record
    assert sorted(p.name for p in folder.iterdir()) == ["source.json"]


def test_an_image_is_reused_only_for_the_same_prompt_text_and_seed(tmp_path):
    """A prompts file edited in place (same case numbers, same model) must not reuse images drawn
    from the old prompts: each image is keyed by its own prompt text and seed."""
    def generate(texts, negatives, seeds):
        calls.append(list(texts))
        return [Image.new("RGB", (64, 64), (len(t) * 20 % 256, s % 256, 0)) for t, s in zip(texts, seeds)]

    settings = GenerationSettings(chunk_size=1)
    old = [Prompt(i, f"p{i}", 10 + i) for i in range(3)]
    calls: list = []
    generate_images(generate, old, tmp_path / "img", settings=settings, progress=False, source={"unet": "a"})
    assert len(calls) == 3
    new = [old[0], Prompt(1, "an edited prompt", 11), Prompt(2, "p2", 99)]
    calls.clear()
    paths = generate_images(generate, new, tmp_path / "img", settings=settings, progress=False, source={"unet": "a"})
    assert calls == [["an edited prompt"], ["p2"]], "the edited prompt and the new seed are drawn anew, the rest reused"
    fresh = generate_images(generate, new, tmp_path / "fresh", settings=settings, progress=False, source={"unet": "a"})
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in fresh]
    calls.clear()  # a subset of the prompts keeps the others' images
    generate_images(generate, new[:1], tmp_path / "img", settings=settings, progress=False, source={"unet": "a"})
    generate_images(generate, new, tmp_path / "img", settings=settings, progress=False, source={"unet": "a"})
    assert calls == []


def test_images_are_made_anew_for_new_weights_at_the_same_path_not_for_a_moved_copy(tmp_path):
    import shutil
    from types import SimpleNamespace

    from benchmark.models.pipeline_identity import pipeline_source

    def source(folder):
        part = lambda name: SimpleNamespace(config={"_name_or_path": str(folder / name)})  # noqa: E731
        return pipeline_source(SimpleNamespace(unet=part("unet"), text_encoder=part("text_encoder"), vae=None))

    model = tmp_path / "models" / "sd"
    for part in ("unet", "text_encoder"):
        (model / part).mkdir(parents=True)
        (model / part / "model.safetensors").write_bytes(part.encode())
    prompts = [Prompt(i, f"p{i}", 10 + i) for i in range(2)]
    made = []
    for folder, weights in ((model, None), (tmp_path / "moved", None), (model, b"retrained")):
        if not folder.exists():
            shutil.copytree(model, folder)
        if weights:
            (folder / "unet" / "model.safetensors").write_bytes(weights)
        calls: list = []
        generate_images(_fake_generate(calls), prompts, tmp_path / "img", progress=False, source=source(folder))
        made.append(sum(len(c) for c in calls))
    assert made == [2, 0, 2]


def test_a_pipeline_names_where_its_weights_came_from():
    from types import SimpleNamespace

    from benchmark.models.pipeline_identity import pipeline_source

    pipe = SimpleNamespace(unet=SimpleNamespace(config={"_name_or_path": "m/unet"}),
                           text_encoder=SimpleNamespace(config=SimpleNamespace(_name_or_path="m/te")), vae=None)
    assert pipeline_source(pipe) == {"class": "SimpleNamespace", "unet": "m/unet", "text_encoder": "m/te", "vae": None}


def _ratio(v):
    return {"value": v, "ci": [max(0, v - 0.05), min(1, v + 0.05)], "n": 100}


def test_report_puts_our_numbers_beside_the_papers(tmp_path):
    results = {
        "name": "t",
        "track": "debug",
        "fp_rate": {"qrcode": _ratio(0.01)},
        "rows": [
            {"concept": "qrcode", "method": "sd", "status": "ok", "icr": _ratio(0.6), "quality": {"scene_fid": 3.0}, "fid_x_icr": 180.0},
            {"concept": "qrcode", "method": "geom-erasing", "status": "ok", "icr": _ratio(0.1), "quality": {"scene_fid": 2.5, "prompt_following": 0.5},
             "quality_detail": {"prompt_following": {"mean": {"value": 0.5, "ci": [0.42, 0.58]}}}},
            {"concept": "qrcode", "method": "fmn", "status": "missing: not implemented"},
        ],
        "timings": {"finetune": 12.0},
    }
    md = results_markdown(results)
    assert "60.0 [55.0, 65.0] (74.6)" in md and "10.0 [5.0, 15.0] (5.4)" in md
    assert "`fmn` on qrcode: missing: not implemented" in md and "| missing (80.4) |" in md
    assert "| qrcode | geom-erasing | 0.500 [0.420, 0.580] | 2.50 |" in md, "quality with its interval"
    assert plot_icr(results, tmp_path / "icr.png").stat().st_size > 1000
    assert "## Model Removal" not in md and "## Every seed" not in md and "asked by name" not in md


def test_adding_a_method_to_a_run_keeps_the_stage_timings_of_its_earlier_invocations(tmp_path):
    """``--method X`` on a finished run: its results.json's ``timings`` list every invocation's stages
    (the fine-tunes of the run that made most rows too), a stage timed again replacing its own entry."""
    import json

    from benchmark.benchmark_run import BenchmarkRun
    from benchmark.protocol import _timed
    from benchmark.track import load_track

    first = BenchmarkRun(track=load_track("debug"), name="r", runs_root=tmp_path)
    first.check_start()
    assert first.timings == {}, "a new run folder has no earlier timings"
    (tmp_path / "r" / "run.json").write_text(json.dumps(first.record()))
    earlier = {"dataset": 61.0, "finetunes (icd-qrcode, 2 jobs)": 68.3, "methods (icd-qrcode, 2 jobs)": 49.7}
    (tmp_path / "r" / "results.json").write_text(json.dumps({"name": "r", "track": "debug", "fp_rate": {}, "rows": [], "timings": earlier}))

    added = BenchmarkRun(track=load_track("debug"), name="r", runs_root=tmp_path, methods=("sd",))
    added.check_start()
    with _timed(added, "dataset"):
        pass
    with _timed(added, "named prompts (base)"):
        pass
    assert added.timings == {"dataset": 0.0, "finetunes (icd-qrcode, 2 jobs)": 68.3, "methods (icd-qrcode, 2 jobs)": 49.7,
                             "named prompts (base)": 0.0}

    (tmp_path / "r" / "results.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"r/results.json: cannot be read .*not valid JSON.*use another --name"):
        BenchmarkRun(track=load_track("debug"), name="r", runs_root=tmp_path).check_start()
    # checked field by field before any stage: its rows are merged with this run's at the end
    (tmp_path / "r" / "results.json").write_text(json.dumps({"name": "r", "track": "debug", "fp_rate": {}, "rows": [{"method": "sd"}]}))
    with pytest.raises(ValueError, match=r"r/results.json: cannot be read .*rows\[0\]: not an object with a method and a concept"):
        BenchmarkRun(track=load_track("debug"), name="r", runs_root=tmp_path).check_start()
    # a row the check lets through (its subset is optional) is kept when this run's rows are merged in at the end
    from benchmark.protocol import _union

    older = {"method": "sd", "concept": "qrcode", "status": "failed"}
    (tmp_path / "r" / "results.json").write_text(json.dumps({"name": "r", "track": "debug", "fp_rate": {}, "rows": [older]}))
    BenchmarkRun(track=load_track("debug"), name="r", runs_root=tmp_path).check_start()
    fresh = {"method": "sd", "concept": "qrcode", "subset": "icd-qrcode"}
    assert _union(tmp_path / "r" / "results.json", [fresh]) == [older, fresh]


@pytest.mark.parametrize("held", ["results.json", "images", "models", "notes.md", "link-to-a-file-elsewhere"])
def test_a_run_folder_no_run_claimed_that_is_not_empty_is_refused_before_anything_is_written(tmp_path, held):
    """A lab's folder named by --runs/--name (its own results.json, images/, models/, notes) was
    claimed as a run: run.json written into it, then the run's files beside and over the lab's."""
    from benchmark.benchmark_run import BenchmarkRun
    from benchmark.track import load_track
    from implicit_concept.files import FolderClaimError

    lab = tmp_path / "r"
    lab.mkdir()
    (tmp_path / "elsewhere.json").write_text("{}")
    if held == "link-to-a-file-elsewhere":
        (lab / "results.json").symlink_to(tmp_path / "elsewhere.json")
    elif "." in held:
        (lab / held).write_text('{"another tool": 1}')
    else:
        (lab / held).mkdir()
        (lab / held / "a.png").write_bytes(b"the lab's image")
    listing = sorted(p.relative_to(lab) for p in lab.rglob("*"))
    run = BenchmarkRun(track=load_track("debug"), name="r", runs_root=tmp_path)
    for start in (run.check_start, run.claim):  # claim: the same refusal, holding the folder, for a folder filled since
        with pytest.raises(FolderClaimError, match=rf"^{re.escape(str(lab))}: a folder no benchmark run claimed \(no run.json\), "
                                                   r"and not empty \(it holds .*\); .*use another --name or --runs$"):
            start()
    assert sorted(p.relative_to(lab) for p in lab.rglob("*")) == listing
    assert (tmp_path / "elsewhere.json").read_text() == "{}"
    empty = BenchmarkRun(track=load_track("debug"), name="new", runs_root=tmp_path)
    empty.check_start()
    (tmp_path / "new" / ".implicit-concept.lock").write_text("")  # as the run holding it leaves it
    empty.claim()
    (tmp_path / "new" / "results.html").write_text("the run's own page")
    empty.check_start()
    empty.claim()


def test_report_shows_seeds_the_named_base_model_removal_and_which_evaluator():
    seeds = {"0": {"icr": _ratio(0.5)}, "1": {"icr": _ratio(0.7)}}
    results = {
        "name": "t", "track": "tiny", "fp_rate": {"watermark": _ratio(0.0)},
        "detector": {"sha256": "ab" * 32, "published": False, "thresholds": {"watermark": 0.41}},
        "named_base": {"watermark": {"icr": _ratio(0.8), "prompt": "<prompt>, with a watermark", "n_prompts": 100}},
        "rows": [
            {"concept": "watermark", "method": "sd", "status": "ok", "icr": _ratio(0.6), "seeds": seeds},
            {"concept": "watermark", "method": "sld", "status": "ok", "icr": _ratio(0.3)},
            {"concept": "watermark", "method": "ge-model-removal", "status": "ok", "icr": _ratio(0.2)},
        ],
    }
    md = results_markdown(results)
    assert "| sd (2 seeds) | 60.0 [55.0, 65.0] (30.4) |" in md
    assert "| sd | watermark | 50.0 [45.0, 55.0] | 70.0 [65.0, 75.0] |" in md, "every seed's ICR"
    assert "| watermark | `<prompt>, with a watermark` | 80.0 [75.0, 85.0] | 100 |" in md
    removal = md.split("## Model Removal")[1]
    assert "| ge-model-removal | 20.0 [15.0, 25.0] (7.3) |" in removal and "| sld | 30.0 [25.0, 35.0] (9.9) |" in removal
    assert "**not the published evaluator**" in md and "watermark 0.41" in md


def test_a_detector_trained_fine_tune_is_keyed_by_the_detectors_weights(tmp_path):
    from types import SimpleNamespace

    from benchmark.stages import finetune_key
    from benchmark.training import TrainingConfig
    from implicit_concept.geom_erasing.training_target import GeomErasingConfig

    (tmp_path / "checksums.sha256").write_text(f"{'0' * 64}  icd/train/00000.tar\n")
    base = _pipeline_dir(tmp_path / "base")
    weights = tmp_path / "detector.safetensors"
    detector = SimpleNamespace(path=weights)
    by_detector = TrainingConfig(geom=GeomErasingConfig(geometry_source="detector"))
    by_truth = TrainingConfig(geom=GeomErasingConfig())
    keys = []
    for content in (b"weights one", b"weights two"):
        weights.write_bytes(content)
        keys.append((finetune_key(base, tmp_path / "icd", by_detector, detector),
                     finetune_key(base, tmp_path / "icd", by_truth, detector)))
    assert keys[0][0] != keys[1][0], "new detector weights, new model"
    assert keys[0][1] == keys[1][1], "ground-truth boxes do not depend on the detector"


def test_a_fine_tune_is_keyed_by_its_training_shards_content(tmp_path):
    """A dataset rebuilt in place with other bytes must not reuse the models trained on the old one."""
    from benchmark.stages import finetune_key
    from benchmark.training import TrainingConfig

    listing = tmp_path / "checksums.sha256"
    base = _pipeline_dir(tmp_path / "base")
    config = TrainingConfig()
    keys = []
    for train, test in (("a", "a"), ("a", "b"), ("b", "b")):
        listing.write_text(f"{train * 64}  icd/train/00000.tar\n{test * 64}  icd/test/00000.tar\n")
        keys.append(finetune_key(base, tmp_path / "icd", config, None))
    assert keys[0] == keys[1], "the test split does not train the model"
    assert keys[1] != keys[2]
    listing.unlink()
    with pytest.raises(FileNotFoundError, match="checksums.sha256"):
        finetune_key(base, tmp_path / "icd", config, None)


def test_a_fine_tune_key_does_not_depend_on_the_order_of_the_checksums_listing(tmp_path):
    """The same shards listed in another order (a rebuilt card, another writer) are the same training data."""
    from benchmark.stages import finetune_key
    from benchmark.training import TrainingConfig

    listing = tmp_path / "checksums.sha256"
    base = _pipeline_dir(tmp_path / "base")
    lines = [f"{'a' * 64}  icd/train/00000.tar", f"{'b' * 64}  icd/train/00001.tar", f"{'c' * 64}  icd/test/00000.tar"]
    keys = []
    for order in (lines, lines[::-1]):
        listing.write_text("".join(line + "\n" for line in order))
        keys.append(finetune_key(base, tmp_path / "icd", TrainingConfig(), None))
    assert keys[0] == keys[1]

def test_a_fine_tune_of_several_processes_has_its_own_key_and_one_process_keeps_its_own(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from benchmark import stages
    from benchmark.stages import finetune_key
    from benchmark.training import TrainingConfig

    (tmp_path / "checksums.sha256").write_text(f"{'a' * 64}  icd/train/00000.tar\n")
    base = _pipeline_dir(tmp_path / "base")
    keys = {}
    for count in (1, 2, 2, 4):
        monkeypatch.setattr(stages, "processes", lambda n=count: SimpleNamespace(num_processes=n))
        keys.setdefault(count, set()).add(finetune_key(base, tmp_path / "icd", TrainingConfig(), None))
    assert all(len(k) == 1 for k in keys.values()), "a key is a function of its inputs"
    assert len(set.union(*keys.values())) == 3, "1, 2 and 4 processes: three keys"
    monkeypatch.undo()
    assert finetune_key(base, tmp_path / "icd", TrainingConfig(), None) in keys[1], "one process: the key it had"


def test_a_fine_tune_is_keyed_by_its_bases_content_not_its_path(tmp_path):
    """``--pretrained`` moved or spelled otherwise trains nothing anew; new weights at the same path do."""
    import shutil

    from benchmark.stages import finetune_key
    from benchmark.training import TrainingConfig

    (tmp_path / "data" / "checksums.sha256").parent.mkdir()
    (tmp_path / "data" / "checksums.sha256").write_text(f"{'a' * 64}  icd/train/00000.tar\n")
    base = _pipeline_dir(tmp_path / "models" / "sd")
    key = lambda b: finetune_key(b, tmp_path / "data" / "icd", TrainingConfig(), None)  # noqa: E731
    first = key(base)
    shutil.copytree(base, tmp_path / "moved" / "sd")
    (tmp_path / "moved" / "sd" / "v1-5-pruned.ckpt").write_bytes(b"not what the pipeline loads")
    assert key(tmp_path / "moved" / "sd") == key(tmp_path / "models" / ".." / "models" / "sd") == first
    (base / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"retrained unet weights")
    assert key(base) != first


def test_the_shipped_evaluation_prompts_are_what_the_prompts_command_writes(tmp_path):
    """``benchmark/prompts/icd-tiny-eval.csv`` is icd-tiny's procedural test split, reproducible by command."""
    from benchmark.cli import main
    from benchmark.prompts import PROMPTS_DIR

    out = tmp_path / "eval.csv"
    assert main(["prompts", "icd-tiny", "--count", "512", "--out", str(out)]) == 0
    assert out.read_bytes() == (PROMPTS_DIR / "icd-tiny-eval.csv").read_bytes()


def test_an_image_folder_is_scored_in_any_readable_format_and_ambiguity_is_refused(tmp_path, monkeypatch):
    from benchmark import external
    from benchmark.track import load_track

    judging = external.Judging(track=load_track("debug"), detector=None, reference=None, cache=tmp_path, num_prompts=3)
    prompts = judging.prompts()
    formats = ["png", "JPG", "webp"]
    for prompt, fmt in zip(prompts, formats):
        Image.new("RGB", (64, 64)).save(tmp_path / f"{prompt.case_number}_0.{fmt}")
    Image.new("RGB", (64, 64)).save(tmp_path / "unasked.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "unasked.jpg")  # not named by a prompt: no ambiguity to refuse
    scored = {}
    monkeypatch.setattr(external, "_score", lambda paths, *args: scored.setdefault("paths", paths))
    external.score_image_folder(tmp_path, tmp_path / "out", judging)
    assert [p.name for p in scored["paths"]] == [f"{p.case_number}_0.{fmt}" for p, fmt in zip(prompts, formats)]
    Image.new("RGB", (64, 64)).save(tmp_path / f"{prompts[1].case_number}_0.png")
    with pytest.raises(ValueError, match=f"{prompts[1].case_number}_0 is there as .*JPG and .*png"):
        external.score_image_folder(tmp_path, tmp_path / "out", judging)
    (tmp_path / f"{prompts[1].case_number}_0.png").unlink()
    (tmp_path / f"{prompts[2].case_number}_0.webp").unlink()
    with pytest.raises(FileNotFoundError, match=f"1 of 3 images .* first {prompts[2].case_number}_0 "):
        external.score_image_folder(tmp_path, tmp_path / "out", judging)


def test_an_image_folder_with_unreadable_images_is_refused_once_naming_each_before_scoring(tmp_path, monkeypatch):
    from benchmark import external
    from benchmark.track import load_track
    from implicit_concept.image_stream import ImageReadError

    judging = external.Judging(track=load_track("debug"), detector=None, reference=None, cache=tmp_path, num_prompts=4)
    names = [f"{p.case_number}_0.png" for p in judging.prompts()]
    Image.new("RGB", (8, 8)).save(tmp_path / names[0])
    (tmp_path / names[1]).write_bytes(b"")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, format="PNG")
    (tmp_path / names[2]).write_bytes(buffer.getvalue()[:60])
    (tmp_path / names[3]).write_text("not an image")
    monkeypatch.setattr(external, "_score", lambda *a: pytest.fail("scoring started on a folder with unreadable images"))
    with pytest.raises(ImageReadError) as refused:
        external.score_image_folder(tmp_path, tmp_path / "out", judging)
    message = str(refused.value)
    assert message.startswith("3 of 4 images cannot be read")
    assert all(name in message for name in names[1:]) and names[0] not in message


@pytest.mark.parametrize("returned, problem", [
    (lambda seeds: [Image.new("RGB", (64, 64))] * (len(seeds) - 1), r"returned 2 images for 3 prompts"),
    (lambda seeds: [np.zeros((64, 64, 3), np.uint8) for _ in seeds], r"returned a ndarray, not a PIL image"),
    (lambda seeds: [Image.new("RGB", (512, 512)) for _ in seeds], r"returned 512x512 images; the track asks for 64x64"),
    (lambda seeds: Image.new("RGB", (64, 64)), r"returned Image, not a list of PIL images"),
    (lambda seeds: [Image.new("F", (64, 64)) for _ in seeds], r"returned mode F images; the benchmark saves and scores RGB"),
    (lambda seeds: [Image.new("RGBA", (64, 64)) for _ in seeds], r"returned mode RGBA images; the benchmark saves and scores RGB"),
])
def test_a_pipeline_that_returns_other_than_one_image_per_prompt_is_refused_naming_the_method(tmp_path, returned, problem):
    from benchmark.generation import GenerationError

    prompts = [Prompt(i, f"p{i}", 10 + i) for i in range(3)]
    with pytest.raises(GenerationError, match=f"^icd-mixed/my-method: the pipeline {problem}"):
        generate_images(lambda p, n, seeds: returned(seeds), prompts, tmp_path, settings=GenerationSettings(chunk_size=3),
                        progress=False, desc="icd-mixed/my-method")
    assert not list(tmp_path.glob("*.png")), "no image file is written from a refused batch"


def test_a_pipeline_that_raises_is_named_and_its_error_chained(tmp_path):
    from benchmark.failures import MethodFailed

    def broken(prompts, negatives, seeds):
        raise RuntimeError("CUDA out of memory")

    prompts = [Prompt(i, f"p{i}", 10 + i) for i in range(2)]
    with pytest.raises(MethodFailed, match=r"^icd-mixed/my-method: the pipeline raised RuntimeError: CUDA out of memory$") as failed:
        generate_images(broken, prompts, tmp_path, progress=False, desc="icd-mixed/my-method")
    assert isinstance(failed.value.__cause__, RuntimeError), "the pipeline's own traceback is kept"
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("option", [{"clip_skip": 1}, {"cross_attention_kwargs": {"scale": 0.5}}], ids=["clip_skip", "lora_scale"])
def test_a_fault_of_the_pinned_libraries_is_named_as_theirs_not_the_methods(tmp_path, option):
    """diffusers 0.42.1 reads text_encoder.text_model, which transformers >= 5.6 removed: a pipeline
    called with these options raises an AttributeError that reads as the lab's own bug."""
    from benchmark.failures import MethodFailed
    from benchmark.models.pipelines import TinyPipelineConfig, build_tiny_pipeline

    config = TinyPipelineConfig(image_size=16, patch_size=2, unet_channels=(16, 32), unet_attention=(False, True),
                                text_hidden=16, text_layers=1, text_heads=2)
    pipe = build_tiny_pipeline(config, tmp_path / "tokenizer", seed=3)

    def with_option(prompts, negatives, seeds):
        return pipe(prompt=prompts, negative_prompt=negatives, num_inference_steps=2, **option).images

    with pytest.raises(MethodFailed, match=r"the pipeline raised AttributeError: .*text_model.*a fault of the pinned libraries, "
                       r"not of the method: .*huggingface/diffusers#14124.*prompt_embeds"):
        generate_images(with_option, [Prompt(0, "p0", 10)], tmp_path / "images", progress=False, desc="icd-mixed/my-method")


def test_images_are_made_anew_when_weights_in_memory_scheduler_or_vocabulary_change_not_for_a_copy(tmp_path):
    """A plug-in that edits weights after loading them from a folder is a new model; a copy is not."""
    import copy
    from types import SimpleNamespace

    import torch

    from benchmark.models.pipeline_identity import pipeline_source

    torch.manual_seed(0)
    pipe = SimpleNamespace(unet=torch.nn.Linear(4, 4), text_encoder=torch.nn.Embedding(6, 4).to(torch.bfloat16), vae=None,
                           scheduler=SimpleNamespace(config={"num_train_timesteps": 1000}),
                           tokenizer=SimpleNamespace(get_vocab=lambda: {"a": 0, "b": 1}))
    prompts = [Prompt(i, f"p{i}", 10 + i) for i in range(2)]
    made = []

    def generate(pipeline):
        calls: list = []
        generate_images(_fake_generate(calls), prompts, tmp_path / "img", progress=False, source=pipeline_source(pipeline))
        made.append(sum(len(c) for c in calls))

    generate(pipe)
    generate(copy.deepcopy(pipe))
    with torch.no_grad():
        pipe.unet.weight[0, 0] += 1e-3
    generate(pipe)
    with torch.no_grad():
        pipe.text_encoder.weight[5, 3] = 2.0
    generate(pipe)
    pipe.scheduler = SimpleNamespace(config={"num_train_timesteps": 500})
    generate(pipe)
    pipe.tokenizer = SimpleNamespace(get_vocab=lambda: {"a": 0, "b": 1, "<l3>": 2})
    generate(pipe)
    generate(pipe)
    assert made == [2, 0, 2, 2, 2, 2, 0]


def test_a_plug_ins_wrapper_or_closure_is_keyed_by_the_weights_it_holds_and_one_holding_none_is_drawn_anew(tmp_path):
    """A plug-in may hand over its own object around a pipeline (any callable will do): its images
    are reused exactly when the modules, tensors, scheduler and tokenizer it holds are unchanged."""
    import copy
    from types import SimpleNamespace

    import torch

    from benchmark.models.pipeline_identity import pipeline_source

    torch.manual_seed(0)
    inner = SimpleNamespace(unet=torch.nn.Linear(4, 4), text_encoder=torch.nn.Embedding(6, 4), vae=None,
                            scheduler=SimpleNamespace(config={"steps": 1000}, set_timesteps=lambda n: None))

    class Wrapper:
        def __init__(self, pipe):
            self._pipe, self.extra = pipe, {"delta": torch.zeros(3)}

        def __call__(self, **kwargs):
            return self._pipe

    def closing_over(pipe):
        return lambda **kwargs: pipe

    prompts = [Prompt(i, f"p{i}", 10 + i) for i in range(2)]

    def made(pipeline, folder):
        calls: list = []
        generate_images(_fake_generate(calls), prompts, tmp_path / folder, progress=False, source=pipeline_source(pipeline))
        return sum(len(c) for c in calls)

    wrapper, closure = Wrapper(inner), closing_over(inner)
    assert [made(wrapper, "w"), made(copy.deepcopy(wrapper), "w"), made(closure, "c"), made(closing_over(copy.deepcopy(inner)), "c")] == [2, 0, 2, 0]
    with torch.no_grad():
        inner.unet.weight[0, 0] += 1e-3
    assert made(wrapper, "w") == 2 and made(closure, "c") == 2
    wrapper.extra["delta"][1] = 1.0
    assert made(wrapper, "w") == 2
    inner.scheduler = SimpleNamespace(config={"steps": 500}, set_timesteps=lambda n: None)
    assert made(wrapper, "w") == 2 and made(wrapper, "w") == 0
    assert set(pipeline_source(wrapper)["holds"]) == {"_pipe.unet", "_pipe.text_encoder", "_pipe.scheduler", "extra.delta"}
    nothing = lambda **kwargs: None  # noqa: E731  (an API client, say: nothing here says what it draws with)
    assert [made(nothing, "n"), made(nothing, "n")] == [2, 2]


def test_a_methods_images_are_keyed_by_the_file_that_defines_it(tmp_path, monkeypatch):
    """A plug-in whose pipeline is a plain callable has no weights to compare: its code file stands in."""
    import importlib

    from benchmark.methods.plugins import code_sha256

    module = tmp_path / "mylab_method.py"
    module.write_text("class Mine:\n    strength = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    first = code_sha256(importlib.import_module("mylab_method").Mine())
    module.write_text("class Mine:\n    strength = 2\n")
    again = code_sha256(importlib.import_module("mylab_method").Mine())
    assert first and again and first != again


def test_a_plug_ins_images_are_keyed_by_its_whole_package_its_base_classes_and_helpers_beside_it(tmp_path, monkeypatch):
    """Editing a helper module the method's file imports (in its package, or beside it in the working
    folder), or the file of a base class it inherits build from, makes a new key; an unrelated file does not."""
    import importlib

    from benchmark.methods.plugins import code_sha256, method_sources

    (tmp_path / "mylab2").mkdir()
    (tmp_path / "mylab2" / "__init__.py").write_text("")
    (tmp_path / "mylab2" / "sampler.py").write_text("INVERT = True\n")
    (tmp_path / "mylab2" / "methods.py").write_text("from mylab2.sampler import INVERT\nfrom labbase2 import Base\nclass Wrapped(Base):\n    pass\n")
    (tmp_path / "labbase2.py").write_text("import labhelper2\nclass Base:\n    def build(self, ctx):\n        return None\n")
    (tmp_path / "labhelper2.py").write_text("X = 1\n")
    (tmp_path / "unrelated2.py").write_text("Y = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    method = importlib.import_module("mylab2.methods").Wrapped()
    names = [name for name, _ in method_sources(method)]
    assert names == ["labbase2.py", "labhelper2.py", "mylab2/__init__.py", "mylab2/methods.py", "mylab2/sampler.py"]
    keys = [code_sha256(method)]
    for path, text in (("unrelated2.py", "Y = 2\n"), ("mylab2/sampler.py", "INVERT = False\n"), ("labhelper2.py", "X = 2\n"),
                       ("labbase2.py", "import labhelper2\nclass Base:\n    def build(self, ctx):\n        return 1\n")):
        (tmp_path / path).write_text(text)
        keys.append(code_sha256(method))
    assert keys[0] == keys[1] and len(set(keys[1:])) == 4


def test_an_installed_plug_in_is_keyed_by_its_class_file(tmp_path, monkeypatch):
    """A plug-in installed as a package (an entry point) is not followed import by import, but an
    upgrade that changes its class's file still makes a new key."""
    import importlib

    from benchmark.methods import plugins

    site = tmp_path / "site-packages"
    (site / "labpkg3").mkdir(parents=True)
    (site / "labpkg3" / "__init__.py").write_text("")
    (site / "labpkg3" / "methods.py").write_text("class Installed:\n    pass\n")
    monkeypatch.syspath_prepend(str(site))
    method = importlib.import_module("labpkg3.methods").Installed()
    assert [name for name, _ in plugins.method_sources(method)] == ["labpkg3.methods"]
    before = plugins.code_sha256(method)
    (site / "labpkg3" / "methods.py").write_text("class Installed:\n    version = 2\n")
    assert before is not None and plugins.code_sha256(method) != before


def test_a_pipeline_whose_output_has_no_images_is_refused_naming_its_class():
    from benchmark.generation import GenerationError, diffusers_generate_fn

    class Latents:
        def __call__(self, **kwargs):
            return {"latents": None}

    with pytest.raises(GenerationError, match=r"^Latents returned a dict with no \.images"):
        diffusers_generate_fn(Latents(), GenerationSettings())(["a"], [""], [0])


def test_the_negative_prompt_reaches_the_pipeline_and_none_is_passed_when_there_is_none():
    """The one bridge from generate_images to a diffusers pipeline: Geom-Erasing's location tokens and
    np's concept name are sampled as negative prompts only if they get there; an empty one is None,
    diffusers' "no negative prompt"."""
    from benchmark.generation import diffusers_generate_fn

    class Recording:
        def __call__(self, **kwargs):
            self.kwargs = kwargs
            return [Image.new("RGB", (16, 16))] * len(kwargs["prompt"])

    pipe = Recording()
    generate = diffusers_generate_fn(pipe, GenerationSettings(image_size=16))
    generate(["a", "b"], ["<qrcode> <l0,0>", "<qrcode> <l0,0>"], [0, 1])
    assert pipe.kwargs["prompt"] == ["a", "b"] and pipe.kwargs["negative_prompt"] == ["<qrcode> <l0,0>"] * 2
    generate(["a"], [""], [0])
    assert pipe.kwargs["negative_prompt"] is None


def test_torch_settings_changed_inside_the_block_are_put_back():
    import torch

    from implicit_concept.torch_settings import kept_torch_settings

    before = (torch.get_num_threads(), torch.get_default_dtype(), torch.is_grad_enabled())
    with pytest.raises(RuntimeError):
        with kept_torch_settings():
            torch.set_default_dtype(torch.float64)
            torch.set_num_threads(before[0] + 1)
            torch.set_grad_enabled(False)
            raise RuntimeError("a plug-in's build fails after changing them")
    assert (torch.get_num_threads(), torch.get_default_dtype(), torch.is_grad_enabled()) == before


def test_quality_is_measured_on_images_decoded_as_the_scorer_decodes_them(tmp_path, monkeypatch):
    """A 16-bit or transparent image is the same picture to the quality step as to the detector."""
    from benchmark.evaluation import scorecard

    Image.fromarray(np.full((8, 8), 30000, np.uint16)).save(tmp_path / "grey16.png")
    Image.fromarray(np.zeros((8, 8, 4), np.uint8), "RGBA").save(tmp_path / "transparent.png")
    seen = []

    class Decoded(Exception):
        pass

    def scene_fid(images, *args):
        seen.extend(images)
        raise Decoded

    monkeypatch.setattr(scorecard.SceneFeatures, "load_or_train", lambda *a, **k: None)
    monkeypatch.setattr(scorecard, "scene_fid", scene_fid)
    with pytest.raises(Decoded):
        scorecard.quality_scores([tmp_path / "grey16.png", tmp_path / "transparent.png"], [], {"kind": "scene"}, [], tmp_path, seed=0)
    assert [(im.mode, np.asarray(im).min(), np.asarray(im).max()) for im in seen] == [("RGB", 117, 117), ("RGB", 255, 255)]


class _FakeReport:
    thresholds = {"qrcode": 0.5}
    concepts = {}

    def write_json(self, path):
        path.write_text("{}")

    def table(self, concepts=None):
        return f"table of {', '.join(concepts or ['every concept'])}"


def _judging(tmp_path, num_prompts=None, **generation):
    from dataclasses import replace

    from benchmark import external
    from benchmark.track import load_track

    track = load_track("debug")
    track = replace(track, generation={**track.generation, **generation})
    detector = type("D", (), {"path": tmp_path / "detector.safetensors"})()
    detector.path.write_bytes(b"weights")
    return external.Judging(track=track, detector=detector, reference=None, cache=tmp_path, num_prompts=num_prompts)


def _folder(root, prompts, per_prompt, size=64):
    root.mkdir()
    for p in prompts:
        for i in range(per_prompt):
            Image.new("RGB", (size, size)).save(root / f"{p.case_number}_{i}.png")
    return root


def test_score_images_takes_the_tracks_images_per_prompt_and_size_and_records_what_it_overrides(tmp_path, monkeypatch):
    from benchmark import external

    monkeypatch.setattr(external, "score_generated", lambda paths, prompts, *a: (_FakeReport(), {"qrcode": {"icr": len(paths)}}))
    judging = _judging(tmp_path, num_prompts=3, images_per_prompt=2)
    prompts = judging.prompts()
    summary = external.score_image_folder(_folder(tmp_path / "two", prompts, 2), tmp_path / "out", judging)
    assert summary["rows"] == [{"concept": "qrcode", "icr": 6}]  # {c}_1 scored too: the track asks for 2 per prompt
    assert summary["prompts"] == {"file": judging.track.prompts, "sha256": summary["prompts"]["sha256"], "count": 3, "images": 6}
    assert summary["overrides"] == {"num_prompts": 3}
    big = _folder(tmp_path / "big", prompts, 2, size=128)
    with pytest.raises(ValueError, match=r"big: 6 of 6 images are not 64x64 pixels \(the track's image_size\), first .*_0.png \(128x128\)"):
        external.score_image_folder(big, tmp_path / "out", judging)
    (big / f"{prompts[0].case_number}_0.png").unlink()
    Image.new("RGB", (1, 1)).save(big / f"{prompts[0].case_number}_0.png")
    with pytest.raises(ValueError, match=r"1 of 6 images are not 128x128 pixels \(the size asked\), first .*_0.png \(1x1\)"):
        external.score_image_folder(big, tmp_path / "out", judging, image_size=128)
    Image.new("RGB", (128, 128)).save(big / f"{prompts[0].case_number}_0.png")
    summary = external.score_image_folder(big, tmp_path / "out", judging, image_size=128)
    assert summary["overrides"] == {"image_size": 128, "num_prompts": 3}
    assert external.score_image_folder(big, tmp_path / "out", judging, images_per_prompt=1, image_size=128)["overrides"] == {
        "image_size": 128, "images_per_prompt": 1, "num_prompts": 3}
    with pytest.raises(ValueError, match="images_per_prompt: expected an integer in \\[1, 1000\\], got 0"):
        external.score_image_folder(big, tmp_path / "out", judging, images_per_prompt=0)


def test_a_scoring_on_the_tracks_settings_records_no_override(tmp_path):
    from benchmark import external

    judging = _judging(tmp_path)
    assert external.track_overrides(judging, judging.settings()) == {}
    assert external.track_overrides(judging, judging.settings(steps=3, guidance_scale=1.0)) == {"steps": 3, "guidance_scale": 1.0}


@pytest.mark.parametrize("asked", [0, -1, 10**6])
def test_a_prompt_count_the_track_does_not_hold_is_refused(tmp_path, asked):
    with pytest.raises(ValueError, match=r"num_prompts: expected an integer in \[1, \d+\]"):
        _judging(tmp_path, num_prompts=asked).prompts()


def test_a_prompts_file_shorter_than_the_count_asked_is_refused_naming_it(tmp_path):
    from dataclasses import replace

    from benchmark import external

    short = tmp_path / "short.csv"
    short.write_text("case_number,prompt,evaluation_seed\n0,a cat,1\n1,a dog,2\n")
    judging = _judging(tmp_path)
    judging = replace(judging, track=replace(judging.track, prompts=str(short)), num_prompts=4)
    with pytest.raises(ValueError, match="short.csv: holds 2 prompts, fewer than the 4 asked"):
        judging.prompts()
    assert len(external.Judging(judging.track, None, None, tmp_path, num_prompts=2).prompts()) == 2


def test_prompts_with_a_repeated_column_or_a_seed_torch_cannot_take_are_refused_naming_the_line(tmp_path):
    from benchmark.prompts import SEED_RANGE

    bad = tmp_path / "bad.csv"
    bad.write_text("case_number,prompt,evaluation_seed,prompt\n0,a cat,1,a dog\n")
    with pytest.raises(ValueError, match=r"bad.csv: column\(s\) \['prompt'\] appear more than once"):
        read_prompts(bad)
    bad.write_text(f"case_number,prompt,evaluation_seed\n0,a cat,1\n1,a dog,{SEED_RANGE[1] + 1}\n")
    with pytest.raises(ValueError, match=r"bad.csv:3: evaluation_seed \d+ is outside"):
        read_prompts(bad)
    bad.write_text(f"case_number,prompt,evaluation_seed\n0,a cat,{SEED_RANGE[1]}\n1,a dog,{SEED_RANGE[0]}\n")
    for p in read_prompts(bad):
        for i in (0, 999):
            torch.manual_seed(image_seed(p, i))


def test_a_negative_prompt_file_that_is_not_utf8_is_named(tmp_path):
    from benchmark.external import pipeline_negative_prompt
    from benchmark.models.pipelines import NEGATIVE_PROMPT_FILE

    (tmp_path / NEGATIVE_PROMPT_FILE).write_bytes(b"qr code, \xff\xfe logo")
    with pytest.raises(ValueError, match=f"{NEGATIVE_PROMPT_FILE}: not UTF-8 text"):
        pipeline_negative_prompt(tmp_path)


def test_score_images_leaves_images_per_prompt_and_size_to_the_track_unless_given(tmp_path, monkeypatch):
    from benchmark import cli, external

    asked = []
    monkeypatch.setattr(cli, "_judging", lambda args: None)
    monkeypatch.setattr(external, "score_image_folder", lambda *a, **k: asked.append(k) or {"table": "", "overrides": {}})
    cli.main(["score-images", str(tmp_path), "--out", str(tmp_path / "out")])
    cli.main(["score-images", str(tmp_path), "--out", str(tmp_path / "out"), "--images-per-prompt", "2", "--size", "128"])
    assert asked == [{"images_per_prompt": None, "image_size": None}, {"images_per_prompt": 2, "image_size": 128}]


def test_the_prompts_sha256_is_their_content_not_their_file_or_images_per_prompt(tmp_path):
    from benchmark.prompts import prompts_sha256

    text = "case_number,prompt,evaluation_seed\n0,a cat on a yellow background,1\n1,a dog,2\n"
    (tmp_path / "a.csv").write_text(text)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.csv").write_text(text)
    a, b = read_prompts(tmp_path / "a.csv"), read_prompts(tmp_path / "sub" / "b.csv")
    assert prompts_sha256(a) == prompts_sha256(b) == prompts_sha256([p for p in a for _ in range(3)])
    (tmp_path / "a.csv").write_text(text.replace("yellow", "white"))
    assert prompts_sha256(read_prompts(tmp_path / "a.csv")) != prompts_sha256(b)


def test_a_wrapper_is_keyed_by_what_it_holds_at_any_depth_through_cycles_and_slots():
    """A pipeline nested deeper than a few levels (a registry of stages) is keyed all the same, so
    other weights there are a new model; a cycle ends the walk rather than looping."""
    from types import SimpleNamespace

    import torch

    from benchmark.models.pipeline_identity import pipeline_source

    torch.manual_seed(0)
    pipe = SimpleNamespace(unet=torch.nn.Linear(4, 4))

    class Ensemble:
        def __init__(self, pipe):
            self.blend = torch.ones(3)
            self.registry = {"stages": {"main": [{"deeper": [{"pipe": pipe}]}]}}
            self.me = self  # a cycle

        def __call__(self, **kwargs):
            return None

    class Slotted:
        __slots__ = ("inner",)

        def __init__(self, inner):
            self.inner = inner

        def __call__(self, **kwargs):
            return None

    ensemble = Ensemble(pipe)
    before = pipeline_source(ensemble)["holds"]
    assert "registry.stages.main.0.deeper.0.pipe.unet" in before and "blend" in before
    with torch.no_grad():
        pipe.unet.weight[0, 0] += 1.0
    assert pipeline_source(ensemble)["holds"] != before
    slotted = pipeline_source(Slotted(ensemble))
    assert "inner.registry.stages.main.0.deeper.0.pipe.unet" in slotted["holds"] and "drawn_anew" not in slotted


def test_score_images_names_every_unreadable_image_and_reports_the_images_it_did_not_score(tmp_path, monkeypatch, capsys):
    from benchmark import external
    from implicit_concept.image_stream import ImageReadError

    monkeypatch.setattr(external, "score_generated", lambda paths, prompts, *a: (_FakeReport(), {"qrcode": {"icr": len(paths)}}))
    judging = _judging(tmp_path, num_prompts=8)
    prompts = judging.prompts()
    broken = _folder(tmp_path / "broken", prompts, 1)
    for p in prompts[1:]:
        (broken / f"{p.case_number}_0.png").write_text("not an image")
    with pytest.raises(ImageReadError, match=r"7 of 8 images cannot be read: .*; \.\.\. \(all 7 named in .*unreadable.txt\)"):
        external.score_image_folder(broken, tmp_path / "out-broken", judging)
    listed = (tmp_path / "out-broken" / "unreadable.txt").read_text().splitlines()
    assert len(listed) == 7 and all(any(f"{p.case_number}_0.png" in line for line in listed) for p in prompts[1:])
    for p in prompts[1:6]:  # two left broken: named on the console, and the earlier list of seven is not left beside it
        Image.new("RGB", (64, 64)).save(broken / f"{p.case_number}_0.png")
    with pytest.raises(ImageReadError, match=r"^2 of 8 images cannot be read: "):
        external.score_image_folder(broken, tmp_path / "out-broken", judging)
    assert not (tmp_path / "out-broken" / "unreadable.txt").exists()
    for p in prompts[6:]:
        Image.new("RGB", (64, 64)).save(broken / f"{p.case_number}_0.png")
    external.score_image_folder(broken, tmp_path / "out-broken", judging)
    assert sorted(p.name for p in (tmp_path / "out-broken").iterdir() if not p.name.startswith(".")) == ["scores.json", "summary.json"]

    extra = _folder(tmp_path / "extra", prompts, 2)
    Image.new("RGB", (64, 64)).save(extra / "100000_0.png")
    summary = external.score_image_folder(extra, tmp_path / "out", judging)
    assert summary["prompts"]["images"] == 8
    assert summary["inputs"]["not_scored"]["count"] == 9 and "100000_0.png" in summary["inputs"]["not_scored"]["images"]
    assert "note: " in capsys.readouterr().err
    plain = external.score_image_folder(_folder(tmp_path / "plain", prompts, 1), tmp_path / "out2", judging)
    assert plain["inputs"]["not_scored"] == {"count": 0, "images": []}


def _scored_folder(tmp_path, monkeypatch, broken: int):
    """The track's judging and a folder of one image per prompt, its first ``broken`` unreadable;
    scoring faked (what it writes is the point, not its numbers)."""
    from benchmark import external

    monkeypatch.setattr(external, "score_generated", lambda paths, prompts, *a: (_FakeReport(), {"qrcode": {"icr": len(paths)}}))
    judging = _judging(tmp_path, num_prompts=8)
    prompts = judging.prompts()
    folder = _folder(tmp_path / "images", prompts, 1)
    for p in prompts[:broken]:
        (folder / f"{p.case_number}_0.png").write_text("not an image")
    return judging, folder


@pytest.mark.parametrize("broken", [0, 2, 7], ids=["readable", "a-few-unreadable", "many-unreadable"])
def test_score_images_writes_and_removes_its_unreadable_list_only_while_it_holds_the_output_folder(tmp_path, monkeypatch, broken):
    """score-images removed an earlier unreadable.txt, or wrote its own, in --out before taking that
    folder's lock: a second command given the same --out changed the list beside the first one's
    scores, then was refused as busy (or not at all, failing on its unreadable images)."""
    from benchmark import external
    from implicit_concept.file_locks import locked

    judging, folder = _scored_folder(tmp_path, monkeypatch, broken)
    out = tmp_path / "out"
    out.mkdir()
    (out / "unreadable.txt").write_text("the first command's list\n")
    with locked(out, inside=True):  # the first command, still scoring
        with pytest.raises(ValueError, match=rf"{re.escape(str(out))}: in use by another process"):
            external.score_image_folder(folder, out, judging)
    assert (out / "unreadable.txt").read_text() == "the first command's list\n"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["unreadable.txt"]


@pytest.mark.parametrize("broken", [5, 6])
def test_unreadable_images_as_many_as_the_console_names_are_not_listed_in_a_file(tmp_path, monkeypatch, broken):
    """The console names up to five unreadable images; only a longer list goes to unreadable.txt,
    and the message says where (a list of five in a file would hold nothing the message does not)."""
    from benchmark import external
    from implicit_concept.image_stream import ImageReadError

    judging, folder = _scored_folder(tmp_path, monkeypatch, broken)
    with pytest.raises(ImageReadError, match=rf"^{broken} of 8 images cannot be read: ") as refused:
        external.score_image_folder(folder, tmp_path / "out", judging)
    listed = broken > 5
    assert ("unreadable.txt" in str(refused.value)) == listed and (tmp_path / "out" / "unreadable.txt").exists() == listed
    if listed:
        assert len((tmp_path / "out" / "unreadable.txt").read_text().splitlines()) == broken


@pytest.mark.parametrize("name", ["scores.json", "summary.json", "unreadable.txt"])
@pytest.mark.parametrize("kind", ["another-tools", "link-to-a-file-elsewhere"])
@pytest.mark.parametrize("broken", [0, 2], ids=["readable", "a-few-unreadable"])
def test_score_out_files_scoring_did_not_write_are_refused_and_kept(tmp_path, monkeypatch, name, kind, broken):
    """A lab's folder named as score-images' (or score-pipeline's) --out lost its own scores.json or
    summary.json (replaced) and unreadable.txt (removed), or had a link of those names replaced by a
    file; scoring's own, in a folder it held before, are still replaced on a rerun."""
    from benchmark import external

    judging, folder = _scored_folder(tmp_path, monkeypatch, broken)
    out = tmp_path / "lab"
    out.mkdir()
    (out / "notes.md").write_text("the lab's notes\n")
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("the lab's file elsewhere\n")
    if kind == "link-to-a-file-elsewhere":
        (out / name).symlink_to(elsewhere)
    else:
        (out / name).write_text("the lab's own, another tool's\n")
    before = {p.name: (p.is_symlink(), p.read_bytes()) for p in out.iterdir()}
    with pytest.raises(ValueError, match=rf"^--out {re.escape(str(out))}: holds {re.escape(name)} \(.*\), which scoring would replace or remove; "):
        external.score_image_folder(folder, out, judging)
    assert {p.name: (p.is_symlink(), p.read_bytes()) for p in out.iterdir() if not p.name.startswith(".")} == before
    assert elsewhere.read_text() == "the lab's file elsewhere\n"


def test_score_out_that_is_a_file_is_refused_and_kept_and_a_rerun_replaces_scorings_own(tmp_path, monkeypatch):
    from benchmark import external

    monkeypatch.setattr(external, "score_generated", lambda paths, prompts, *a: (_FakeReport(), {"qrcode": {"icr": len(paths)}}))
    judging = _judging(tmp_path, num_prompts=8)
    folder = _folder(tmp_path / "images", judging.prompts(), 1)
    (tmp_path / "file").write_text("the lab's file\n")
    (tmp_path / "link").symlink_to(tmp_path / "file")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    for out in (tmp_path / "file", tmp_path / "link", tmp_path / "dangling"):
        with pytest.raises(ValueError, match=rf"^--out {re.escape(str(out))}: a file, not a folder; name a folder"):
            external.score_image_folder(folder, out, judging)
    assert (tmp_path / "file").read_text() == "the lab's file\n" and (tmp_path / "link").is_symlink()
    assert (tmp_path / "dangling").is_symlink() and not (tmp_path / "gone").exists()
    external.score_image_folder(folder, tmp_path / "out", judging)
    (tmp_path / "out" / "unreadable.txt").write_text("an earlier attempt's list\n")  # as a failed attempt leaves it
    external.score_image_folder(folder, tmp_path / "out", judging)
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")) == ["scores.json", "summary.json"]


def test_a_folder_of_images_whose_name_holds_a_brace_is_a_folder_not_a_shard_pattern(tmp_path):
    from implicit_concept.image_stream import is_shard_source, iter_images

    folder = tmp_path / "gen{1}"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "0_0.png")
    assert not is_shard_source(folder)
    assert [name for name, _ in iter_images(folder)] == ["0_0.png"]
    assert is_shard_source(str(tmp_path / "shard-{000..003}.tar")) and is_shard_source(str(tmp_path / "shards-{0..1}"))


@pytest.mark.parametrize("case", ["part-config", "part-config-nested", "part-config-list", "geom-metadata", "geom-no-negative"])
def test_score_pipeline_refuses_a_malformed_json_file_naming_it(tmp_path, case):
    """A config nested past the JSON parser's depth raised RecursionError (a traceback), and one
    holding a list passed the check to fail inside diffusers."""
    from benchmark import external

    pipe = _pipeline_dir(tmp_path / "pipe")
    if case.startswith("part-config"):
        text, said = {"part-config": ("not json", "not valid JSON"), "part-config-list": ("[1, 2]", "holds a JSON list, not an object"),
                      "part-config-nested": ("[" * 100_000 + "]" * 100_000, r"nested too deeply")}[case]
        (pipe / "unet" / "config.json").write_text(text)
        with pytest.raises(ValueError, match=rf"pipe/unet/config.json: {said}"):
            external.score_pipeline(pipe, tmp_path / "out", judging=_judging(tmp_path))
    else:
        (pipe / "geom_erasing.json").write_text('{"config": ' if case == "geom-metadata" else '{"config": {}}')
        with pytest.raises(ValueError, match=r"pipe/geom_erasing.json: not .*(JSON|negative_prompt)"):
            external.pipeline_negative_prompt(pipe)


def test_images_per_prompt_that_would_reuse_the_next_prompts_seeds_is_refused(tmp_path):
    """Image i of a prompt is seeded evaluation_seed * 1000 + i: a 1000th image drew the next seed's
    prompt's first image's noise, so two prompts' images shared their starting noise, unsaid."""
    prompts = [Prompt(0, "p0", 10), Prompt(1, "p1", 11)]
    most = GenerationSettings(images_per_prompt=1000)
    seeds = [image_seed(p, i) for p in prompts for i in range(most.images_per_prompt)]
    assert len(set(seeds)) == len(seeds)
    with pytest.raises(ValueError, match=r"images_per_prompt: expected an integer in \[1, 1000\], got 1001"):
        GenerationSettings(images_per_prompt=1001)
    from benchmark import external

    with pytest.raises(ValueError, match=r"images_per_prompt: expected an integer in \[1, 1000\], got 1001"):
        external.score_image_folder(tmp_path / "images", tmp_path / "out", _judging(tmp_path), images_per_prompt=1001)


@pytest.mark.parametrize("kind", ["folder", "fifo", "oversized"])
def test_a_negative_prompt_file_that_cannot_be_a_prompt_is_named_not_passed_over(tmp_path, kind):
    """A folder or FIFO named negative_prompt.txt was passed over for Geom-Erasing's metadata (the
    pipeline then sampled without the lab's prompt, silently), and an endless file was read whole."""
    from benchmark.external import MAX_NEGATIVE_PROMPT_BYTES, pipeline_negative_prompt
    from benchmark.models.pipelines import NEGATIVE_PROMPT_FILE

    recorded = tmp_path / NEGATIVE_PROMPT_FILE
    if kind == "folder":
        recorded.mkdir()
    elif kind == "fifo":
        os.mkfifo(recorded)
    else:
        recorded.write_bytes(b"watermark, " * (MAX_NEGATIVE_PROMPT_BYTES // 11 + 1))
    (tmp_path / "geom_erasing.json").write_text('{"negative_prompt": "not this one"}')
    with pytest.raises(ValueError, match=f"{NEGATIVE_PROMPT_FILE}: " + {"folder": "a folder", "fifo": "a FIFO", "oversized": "over"}[kind]):
        pipeline_negative_prompt(tmp_path)


def test_a_folder_in_place_of_geom_erasings_metadata_is_named_as_not_its_record(tmp_path):
    """A folder named geom_erasing.json raised IsADirectoryError from deep inside the reader."""
    from benchmark.external import pipeline_negative_prompt
    from implicit_concept.geom_erasing.training_target import METADATA_FILE

    (tmp_path / METADATA_FILE).mkdir()
    with pytest.raises(ValueError, match=f"{METADATA_FILE}: a folder, where Geom-Erasing's metadata"):
        pipeline_negative_prompt(tmp_path)
