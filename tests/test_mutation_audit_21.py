"""Mutation round 21: behaviours hand mutants of the worker's SIGTERM handler, builders/verify's key
order, and modules no earlier round mutated (box error, degraded boxes, caption text, shard tables,
content hashes) showed unguarded."""
import io
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from diffusers import DDPMScheduler

from benchmark.evaluation.box_error import RegionErrors, fixed_timesteps, paired_ratios, region_errors
from benchmark.models.clip_tokenizer import token_ids
from benchmark.models.pipelines import build_tiny_pipeline
from benchmark.training.data import _encode, diffusion_loss
from builders import distributor
from builders.distributor import run_units
from builders.recipe import load_recipe
from builders.sources.caption_text import MAX_CAPTION_BYTES, read_caption
from builders.shard_builder import WorkUnit
from builders.shard_table import METADATA_KEYS, sample_row, skipped_row, table_bytes, table_metadata
from builders.verify import VerifyReport, _key_index, _Problems, _ShardContents
from implicit_concept import worker_processes
from implicit_concept.content_hashes import folder_sha256
from implicit_concept.geom_erasing.degraded_boxes import box_iou, degrade_box
from implicit_concept.geom_erasing.loss_weights import region_mask
from implicit_concept.geom_erasing.training_target import sample_rng
from implicit_concept.sample import Box, Instance, SampleMeta
from implicit_concept.worker_processes import stopping_workers
from tests.test_box_error import MICRO, _sample


def test_a_second_sigterm_while_a_worker_ends_its_groups_leaves_none_running():
    """The group's SIGTERM and then the pool's own (``timeout``, a scheduler) reach a worker while its
    handler ends the command groups it registered. Taken a second time inside itself, the handler
    would list the groups again without the one the first had taken off the list but not yet killed,
    and end the worker: that command (outside the worker's tree) lived on."""
    commands = [subprocess.Popen(["sleep", "600"], start_new_session=True) for _ in range(2)]
    try:
        child = os.fork()
        if child == 0:  # the worker: registers both groups, and a second SIGTERM comes at its first kill
            try:
                worker_processes._worker = os.getpid()
                for command in commands:
                    worker_processes.own_group(command.pid)
                killpg, calls = os.killpg, []

                def killpg_after_a_second_sigterm(pgid, signum):
                    calls.append(pgid)
                    if len(calls) == 1:
                        signal.raise_signal(signal.SIGTERM)
                    killpg(pgid, signum)

                os.killpg = killpg_after_a_second_sigterm
                signal.signal(signal.SIGTERM, worker_processes._terminated)
                signal.raise_signal(signal.SIGTERM)
            finally:
                os._exit(3)
        _, status = os.waitpid(child, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM, status
        for command in commands:
            assert command.wait(timeout=10) == -signal.SIGKILL
    finally:
        for command in commands:
            if command.poll() is None:
                command.kill()
                command.wait()


def test_verify_without_a_recipe_flags_one_sample_index_under_two_key_widths():
    """With recipe.json unreadable verify reads each shard's keys in any width; ``000010001`` and
    ``0000100001`` are both sample 1 of shard 1: the second repeats it."""
    report = VerifyReport()
    problems, contents = _Problems(report), _ShardContents()
    for key in ("000010001", "0000100001"):
        assert _key_index(Path("00001.tar"), key, WorkUnit("icd-text", "train", 1), None, contents, problems) == 1
    assert report.problems == ["00001.tar:0000100001: key out of order or repeated"]


@pytest.fixture(scope="module")
def micro_pipeline(tmp_path_factory):
    """A micro pipeline whose latents are scaled (SD's VAE: 0.18215), as the tiny one's are not."""
    pipe = build_tiny_pipeline(MICRO, tmp_path_factory.mktemp("box-error") / "tokenizer", seed=0)
    pipe.vae.register_to_config(scaling_factor=0.5)
    return pipe


@torch.no_grad()
def test_the_box_error_is_training_s_loss_on_the_box_s_cells_and_the_rest(micro_pipeline):
    """Inside and outside are the diffusion loss training takes (pixels in [-1, 1], the VAE's scaled
    latents, the clean caption, the scheduler's target, squared), over every draw at every fixed
    timestep, with the noise of (seed, key), weighted to the cells the box covers and to the others."""
    pipe, box = micro_pipeline, Box(0, 0, 8, 8)
    sample = _sample(3, [box])
    errors = region_errors(pipe, [sample], timesteps=2, draws=2, seed=5)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    t0, t1 = fixed_timesteps(2, scheduler.config.num_train_timesteps)
    steps = torch.tensor([t0, t0, t1, t1])
    pixels = torch.from_numpy(np.asarray(sample.image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    latents = _encode(pipe.vae, pixels, pipe.vae.config.scaling_factor, pipe.unet.device).expand(4, -1, -1, -1)
    noise = torch.from_numpy(sample_rng(5, sample.key).standard_normal(latents.shape, dtype=np.float32))
    hidden = pipe.text_encoder(token_ids(pipe.tokenizer, [sample.caption]))[0].expand(4, -1, -1)
    pred = pipe.unet(scheduler.add_noise(latents, noise, steps), steps, hidden).sample
    grid = latents.shape[-1]
    mask = region_mask([box], 16, 16, grid, grid)
    assert 0 < int(mask.sum()) < mask.numel()
    for cells, measured in ((mask, errors.inside[0]), (~mask, errors.outside[0])):
        weights = (cells.float() / cells.float().mean()).expand(4, -1, -1)
        assert measured == pytest.approx(float(diffusion_loss(scheduler, pred, latents, noise, steps, weights, None)), rel=1e-5)


class _PoolStarted(Exception):
    pass


class _CountingBuilder:
    def __init__(self) -> None:
        self.built: list[tuple[tuple[str, int], ...]] = []

    def build(self, units, out):
        self.built.append(tuple((u.split, u.shard_id) for u in units))
        return [{"successes": 1} for _ in units]


@pytest.fixture
def pools_started(monkeypatch):
    """The local pools ``run_units`` asks for: (start method, processes, initargs); none is started."""
    started = []

    class Context:
        def __init__(self, method):
            self.method = method

        def Pool(self, processes, initializer, initargs):
            started.append((self.method, processes, initargs))
            raise _PoolStarted

    monkeypatch.setattr(distributor.mp, "get_context", Context)
    return started


def test_one_worker_builds_in_the_command_s_process_and_a_pool_is_no_larger_than_the_source_shards(pools_started, tmp_path):
    """``--workers 1`` builds every shard here with the builder given (no process started: a breakpoint
    or a profiler in a builder works); more workers start a pool of at most one process per source
    shard, each subset of a shard built together; torch loaded (it dislikes a fork) means spawned
    workers, which make their own builder."""
    recipe = load_recipe("icd-debug")
    units = [WorkUnit(subset, "train", shard) for shard in (0, 1) for subset in ("icd-text", "icd-qrcode")]
    builder = _CountingBuilder()
    stats = run_units(recipe, units, tmp_path, workers=1, progress=False, builder=builder)
    assert pools_started == [] and len(stats) == 4
    assert builder.built == [(("train", 0), ("train", 0)), (("train", 1), ("train", 1))]
    assert "torch" in sys.modules
    for workers in (2, 8):
        with pytest.raises(_PoolStarted):
            run_units(recipe, units, tmp_path, workers=workers, progress=False, builder=builder)
    assert pools_started == [("spawn", 2, (recipe, None))] * 2


@pytest.mark.timeout(120)  # with the interrupt read as an error, the pool waited for the task's 600 s
def test_a_ctrl_c_outside_the_command_s_handlers_terminates_the_running_task_s_worker():
    """A lab's own script runs fine-tunes through ``stopping_workers`` under Python's default SIGINT
    handler: its Ctrl-C is a plain KeyboardInterrupt, and the task running is stopped, not waited for."""
    assert not worker_processes._interrupted
    with pytest.raises(KeyboardInterrupt):
        with stopping_workers(ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))) as pool:
            future = pool.submit(time.sleep, 600)
            workers = list(pool._processes.values())
            raise KeyboardInterrupt
    assert [w.exitcode for w in workers] == [-signal.SIGTERM]
    assert future.done()


def test_paired_ratios_are_the_model_s_mean_over_the_reference_s_on_the_images_both_have_an_outside():
    """Outside is compared on the images where neither model's boxes cover every latent cell (a model
    of another resolution can cover all of an image's cells where the other does not)."""
    keys = ("a", "b", "c")
    model = RegionErrors(keys, np.array([1.0, 2.0, 6.0]), np.array([2.0, 5.0, 4.0]))
    reference = RegionErrors(keys, np.array([2.0, 2.0, 2.0]), np.array([1.0, np.nan, 1.0]))
    ratios = paired_ratios(model, reference, resamples=200)
    assert ratios.inside.value == pytest.approx(1.5)
    assert ratios.outside.value == pytest.approx(3.0)
    assert model.means() == {"inside": 3.0, "outside": pytest.approx(11 / 3), "images": 3}
    assert reference.means()["outside"] == 1.0


@pytest.mark.parametrize("a, b, iou", [
    ((0, 0, 10, 10), (5, 0, 15, 10), 50 / 150),  # half of each
    ((5, 0, 15, 10), (0, 0, 10, 10), 50 / 150),
    ((0, 0, 10, 10), (2, 2, 4, 4), 4 / 100),  # one inside the other
    ((2, 2, 4, 4), (0, 0, 10, 10), 4 / 100),
    ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
    ((0, 0, 4, 4), (4, 0, 8, 4), 0.0),  # touching
    ((0, 0, 4, 4), (6, 6, 8, 8), 0.0),
    ((3, 3, 3, 3), (3, 3, 3, 3), 0.0),  # no area: no union to divide by
])
def test_box_iou_is_the_intersection_over_the_union(a, b, iou):
    """What degrade_box aims at and its tests measure with: a wrong IoU there passed them, both sides wrong alike."""
    assert box_iou(a, b) == pytest.approx(iou)


def test_a_degraded_box_is_the_closest_to_its_target_iou_that_integers_allow():
    """For boxes of 14 px and more there is an integer box within 0.01 of any target: degrade_box keeps
    looking (other directions, each side floored or ceiled) until it has one, and keeps the closest."""
    misses = []
    for box in (Box(10, 12, 30, 28), Box(0, 0, 40, 25), Box(50, 40, 64, 64), Box(5, 5, 45, 55)):
        for target in (0.3, 0.4, 0.5, 0.7, 0.9):
            rng = np.random.default_rng(0)
            for _ in range(10):
                degraded = degrade_box(box, target, rng, 64, 64)
                assert degraded.inside(64, 64) and degraded.width >= 1 and degraded.height >= 1
                misses.append(abs(box_iou(box.as_list(), degraded.as_list()) - target))
    assert max(misses) < 0.01


@pytest.mark.parametrize("target", [0.005, 0.01, 0.02])
def test_a_box_degraded_to_almost_no_overlap_is_still_a_box(target):
    """Near zero IoU the closest integer box could be one of no width; it must stay 1 px wide and high
    (a box of no area is no box: Box refuses it, and a mask of it is empty)."""
    rng = np.random.default_rng(0)
    for box in (Box(5, 5, 45, 55), Box(0, 0, 40, 25)):
        for _ in range(5):
            degraded = degrade_box(box, target, rng, 64, 64)
            assert degraded.inside(64, 64) and degraded.width >= 1 and degraded.height >= 1


def test_a_file_rewritten_in_place_to_another_size_under_its_old_mtime_is_hashed_anew(tmp_path):
    """A coarse clock (or a copy that keeps times, ``cp -p``, ``rsync -t``) can leave a rewritten file
    its old mtime; its size still tells the remembered hash is stale."""
    folder = tmp_path / "pipe"
    folder.mkdir()
    weights = folder / "weights.bin"
    weights.write_bytes(b"aaaa")
    before = folder_sha256(folder)
    stat = weights.stat()
    with open(weights, "r+b") as f:
        f.write(b"aaaaaa")
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (weights.stat().st_ino, weights.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert folder_sha256(folder) != before


def test_a_folder_that_is_missing_or_a_file_has_no_content_hash(tmp_path):
    """Hashed, either is the empty folder's hash: a cache keyed by it would take one for the other."""
    (tmp_path / "weights.bin").write_bytes(b"a")
    for path in (tmp_path / "missing", tmp_path / "weights.bin"):
        with pytest.raises(FileNotFoundError, match=f"^{path}: not a folder"):
            folder_sha256(path)


def test_a_caption_of_exactly_the_cap_is_read_and_one_byte_more_is_refused():
    assert read_caption(b"a" * MAX_CAPTION_BYTES) == ("a" * MAX_CAPTION_BYTES, None, "")
    assert read_caption(b"a" * (MAX_CAPTION_BYTES + 1))[:2] == (None, "caption_too_large")


def test_an_ascii_caption_s_control_characters_become_spaces_too():
    """ASCII text skips the character-by-character pass only when it is all printable: a tab, a CRLF
    or DEL in plain ASCII would reach KEY.txt, KEY.json and the manifest as they are."""
    assert read_caption(b"a dog\ton a\r\nbeach\x7f") == ("a dog on a  beach", None, "")


def test_a_shard_table_row_counts_each_instance_of_a_concept_drawn_twice():
    """``num_instances`` is what a lab filters on (one watermark or two): two QR codes are two, one concept."""
    two = [Instance("qrcode", Box(0, 0, 20, 20)), Instance("qrcode", Box(30, 30, 60, 60))]
    meta = SampleMeta(key="000010003", caption="a square", width=64, height=64, split="train", subset="icd-qrcode",
                      source={"id": "procedural:3"}, instances=two, seed=[3], recipe="test", recipe_sha256="", version="0")
    row = sample_row(meta, WorkUnit("icd-qrcode", "train", 1), b"jpeg")
    assert (row["num_instances"], row["concepts"], row["contaminated"]) == (2, "qrcode", True)
    assert len(json.loads(row["instances"])) == 2


def test_a_skipped_item_s_row_says_its_reason_alone_without_detail_and_keeps_undecodable_names_bytes():
    """A file name in another encoding (``\\udcff``: byte 0xff, as Python reads it) reaches the table as
    that byte's escape, a JSON escape no byte became (``\\ud800``) as its UTF-8 bytes': Parquet holds
    only UTF-8, and every text column a skip writes holds either."""
    unit = WorkUnit("icd-text", "train", 1)
    assert skipped_row(unit, "000010001", "a.jpg", "too_small", "")["error_message"] == "too_small"
    row = skipped_row(unit, "000010002", "caf\udcff.jpg", "caption_names_concept", "names \ud800", caption="a \udcff dog")
    table = pq.read_table(io.BytesIO(table_bytes([row])))
    assert table.column("source_id").to_pylist() == ["caf\\xff.jpg"]
    assert table.column("caption").to_pylist() == ["a \\xff dog"]
    assert table.column("error_message").to_pylist() == ["caption_names_concept: names \\xed\\xa0\\x80"]
    assert table.column("status").to_pylist() == ["filtered"]


def test_a_shard_table_s_metadata_names_its_recipe_its_seed_and_the_build_s_version():
    """``pq.read_schema(path).metadata`` is how a lab finds what made a table: the recipe's name,
    sha256 and seed, and the version the build record names (a resumed build's, not the resuming process's)."""
    recipe = load_recipe("icd-debug")
    metadata = pq.read_schema(io.BytesIO(table_bytes([], table_metadata(recipe, {"packages": {"implicit-concept": "0.0.1"}})))).metadata
    assert {key: metadata.get(key) for key in METADATA_KEYS} == {
        b"implicit_concept.recipe": b"icd-debug", b"implicit_concept.recipe_sha256": recipe.sha256.encode(),
        b"implicit_concept.seed": str(recipe.seed).encode(), b"implicit_concept.version": b"0.0.1",
    }
