"""The ``--jobs N`` path without its processes: what :mod:`benchmark.parallel_finetunes` and
:mod:`benchmark.parallel_methods` hand their worker pool, run in this process by a stand-in pool
that pickles every task and initializer argument as a spawned worker receives it and runs a
submitted task only when its result is asked for (or at shutdown, as a pool finishes its queue).
The slow end-to-end test (``test_two_jobs_train_the_weights_and_make_the_images_one_job_makes``)
checks the bytes; these check, in seconds, that each task gets the inputs the serial path gives it."""
from __future__ import annotations

import pickle
import signal
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from benchmark import parallel_finetunes, parallel_methods, stages
from benchmark.benchmark_run import BenchmarkRun
from benchmark.methods.interface import FineTune, MethodContext
from benchmark.parallel_methods import MethodSeed
from benchmark.track import load_track
from benchmark.training import PIPELINE_DIR
from builders.dataset_card import CHECKSUMS
from implicit_concept import worker_processes
from implicit_concept.geom_erasing.training_target import GeomErasingConfig


def _sigint_blocked() -> bool:
    return signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])


class InlinePool:
    """A ``ProcessPoolExecutor`` stand-in: arguments cross a pickle, tasks run lazily in this process."""

    made: list["InlinePool"] = []

    def __init__(self, max_workers, mp_context, initializer=None, initargs=()):
        self.max_workers, self.start_method, self.initializer = max_workers, mp_context.get_start_method(), initializer
        self.pending: list[tuple[Future, object, tuple]] = []
        self.ran: list[object] = []
        self.submitted_blocking_sigint: list[bool] = []
        InlinePool.made.append(self)
        if initializer is worker_processes.start_worker:
            InlinePool.started.append(True)  # it would ignore Ctrl-C and take SIGTERM as a worker in this process
        elif initializer is not None:
            initializer(*pickle.loads(pickle.dumps(initargs)))

    def submit(self, fn, *args):
        self.submitted_blocking_sigint.append(_sigint_blocked())
        future = Future()
        self.pending.append((future, pickle.loads(pickle.dumps(fn)), pickle.loads(pickle.dumps(args))))
        original = future.result

        def result(timeout=None):
            self._run_until(future)
            return original(timeout)

        future.result = result
        return future

    def map(self, fn, items):
        futures = [self.submit(fn, item) for item in items]
        return (f.result() for f in futures)

    def _run_until(self, target):
        while self.pending and not target.done():
            future, fn, args = self.pending.pop(0)
            if future.set_running_or_notify_cancel():
                self.ran.append(args)
                try:
                    future.set_result(fn(*args))
                except BaseException as e:  # noqa: BLE001 - as a worker hands back any error
                    future.set_exception(e)

    def shutdown(self, wait=True, cancel_futures=False):
        self._run_until(Future())  # a pool finishes every task not cancelled


class LoadedDetector:
    def __init__(self, path):
        self.path = Path(path)

    @classmethod
    def load(cls, path):
        return cls(path)


@pytest.fixture
def pool(monkeypatch):
    InlinePool.made = []
    for module in (parallel_finetunes, parallel_methods):
        monkeypatch.setattr(module, "ProcessPoolExecutor", InlinePool)
        monkeypatch.setattr(module, "Detector", LoadedDetector)
    started = InlinePool.started = []
    monkeypatch.setattr(parallel_methods, "start_worker", lambda: started.append(True))  # it would ignore Ctrl-C in this process
    return InlinePool.made


def test_train_all_trains_each_fine_tune_once_those_from_base_before_those_from_sd(pool, monkeypatch, tmp_path):
    trained = []

    def finetune(run, base, subset, ft, detector, may_train=True):
        trained.append((run.name, base, subset, ft, detector.path, _sigint_blocked()))
        return tmp_path / f"{ft.start}-{ft.seed}"

    monkeypatch.setattr(stages, "finetune", finetune)
    monkeypatch.setattr(stages, "finetune_folder", lambda run, base, subset, ft, detector: None)  # none made yet
    run = BenchmarkRun(track=load_track("debug"), name="jobs", runs_root=tmp_path)
    sd, clean, removal = FineTune(seed=1), FineTune(data="clean", seed=1), FineTune(start="sd", seed=1)
    parallel_finetunes.train_all(run, Path("base"), Path("data/icd-qrcode"), [removal, sd, clean, sd, removal],
                                 LoadedDetector("det/detector.safetensors"), jobs=2)
    (made,) = pool
    assert (made.max_workers, made.start_method, made.initializer) == (2, "spawn", parallel_finetunes.start_worker)
    assert [t[3] for t in trained] == [sd, clean, removal], "once each, those from base first"
    assert {t[:3] for t in trained} == {("jobs", Path("base"), Path("data/icd-qrcode"))}
    assert {t[4] for t in trained} == {Path("det/detector.safetensors")}
    assert all(made.submitted_blocking_sigint), "workers start with Ctrl-C held back"
    assert not _sigint_blocked()


def test_train_all_starts_no_worker_for_fine_tunes_already_made_and_trains_one_folder_once(pool, monkeypatch, tmp_path):
    """A resume of a trained run starts no pool; two spellings of one fine-tune (the plain Geom-Erasing
    config written out) are one folder, trained once. Folders are named by the real cache keys."""
    base, subset = tmp_path / "base", tmp_path / "data" / "icd-qrcode"
    base.mkdir()
    (base / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    subset.mkdir(parents=True)
    (subset.parent / CHECKSUMS).write_text("0" * 64 + "  icd-qrcode/train/00000.tar\n")
    run, detector = _run(tmp_path), LoadedDetector(tmp_path / "detector.safetensors")
    trained = []

    def finetune(run, base, subset, ft, detector, may_train=True):
        trained.append(ft)
        made = stages.finetune_folder(run, base, subset, ft, detector) / PIPELINE_DIR
        made.mkdir(parents=True, exist_ok=True)
        (made / "model_index.json").write_text("{}")

    monkeypatch.setattr(stages, "finetune", finetune)
    sd, spelled_out, removal = FineTune(seed=1), FineTune(seed=1, geom=GeomErasingConfig.plain()), FineTune(start="sd", seed=1)
    assert stages.finetune_folder(run, base, subset, removal, detector) is None, "sd not made: its removal's folder is not known"
    parallel_finetunes.train_all(run, base, subset, [removal, spelled_out, sd], detector, jobs=2)
    assert trained == [spelled_out, removal]
    assert len(pool) == 1

    parallel_finetunes.train_all(run, base, subset, [removal, spelled_out, sd], detector, jobs=2)
    assert trained == [spelled_out, removal], "nothing trained again"
    assert len(pool) == 1, "no pool started for a resume"


def test_train_all_of_a_run_stopped_after_sd_trains_the_fine_tunes_from_sd_left(pool, monkeypatch, tmp_path):
    """A resume where every fine-tune from the base is made still trains, side by side, those from ``sd``."""
    trained = []
    monkeypatch.setattr(stages, "finetune", lambda run, base, subset, ft, detector, may_train=True: trained.append(ft))
    monkeypatch.setattr(stages, "finetune_folder", lambda run, base, subset, ft, detector: tmp_path / f"{ft.start}-{ft.seed}")
    monkeypatch.setattr(stages, "is_made", lambda folder: folder.name.startswith("base-"))
    sd, removal = FineTune(seed=1), FineTune(start="sd", seed=1)
    parallel_finetunes.train_all(_run(tmp_path), Path("base"), Path("data/icd-qrcode"), [sd, removal],
                                 LoadedDetector("det/detector.safetensors"), jobs=2)
    assert trained == [removal]


def test_train_all_raises_a_fine_tunes_error_and_starts_none_from_sd_after_it(pool, monkeypatch, tmp_path):
    """A fine-tune that fails in its worker fails ``train_all`` (not swallowed by the pool), and those
    that start from ``sd`` are not handed out until every one from the base has finished."""
    trained = []

    def finetune(run, base, subset, ft, detector, may_train=True):
        trained.append(ft)
        if ft.data == "clean":
            raise RuntimeError("planted")

    monkeypatch.setattr(stages, "finetune", finetune)
    monkeypatch.setattr(stages, "finetune_folder", lambda run, base, subset, ft, detector: None)
    sd, clean, removal = FineTune(seed=1), FineTune(data="clean", seed=1), FineTune(start="sd", seed=1)
    with pytest.raises(RuntimeError, match="planted"):
        parallel_finetunes.train_all(_run(tmp_path), Path("base"), Path("data/icd-qrcode"), [sd, clean, removal],
                                     LoadedDetector("det/detector.safetensors"), jobs=2)
    assert removal not in trained


def _run(tmp_path, progress=True):
    return BenchmarkRun(track=load_track("debug"), name="jobs", runs_root=tmp_path, progress=progress)


@pytest.fixture
def evaluated(pool, monkeypatch, tmp_path):
    """``evaluate_method`` recording what each task was given; a task whose spec is ``raises`` raises."""
    calls = []

    def method_context(run, base, subset, concepts, detector):
        return MethodContext(concepts=concepts, work_dir=run.root / "methods", seed=run.track.seed,
                             finetune=lambda ft: Path(f"models/{ft.seed}"), load_pipeline=print, train_shards=subset / "train",
                             detector=detector, base=base)

    def evaluation_for(run, subset, detector):
        return SimpleNamespace(subset=subset.name, detector=detector.path)

    def evaluate_method(run, spec, ctx, evaluation, label=""):
        calls.append(spec)
        if spec == "raises":
            raise RuntimeError("planted")
        rows = [{"method": spec, "progress": run.progress, "seed": ctx.seed, "sd": ctx.finetune(FineTune()), "label": label,
                 "concepts": ctx.concepts, "ctx_detector": ctx.detector.path, "evaluation": evaluation, "threads": torch.get_num_threads()}]
        return rows, None

    monkeypatch.setattr(parallel_methods, "method_context", method_context)
    monkeypatch.setattr(parallel_methods, "evaluation_for", evaluation_for)
    monkeypatch.setattr(parallel_methods, "evaluate_method", evaluate_method)
    threads = torch.get_num_threads()
    yield calls
    torch.set_num_threads(threads)
    parallel_methods._worker = None


def test_evaluate_all_gives_each_tasks_rows_in_task_order_from_a_worker_seeded_per_task(evaluated, pool, tmp_path):
    tasks = [MethodSeed("sd", 0, ""), MethodSeed("np", 3, "-seed3"), MethodSeed("np", 5, "-seed5")]
    torch.set_num_threads(2)
    out = list(parallel_methods.evaluate_all(_run(tmp_path), "base", Path("data/icd-qrcode"), ("qrcode",),
                                             LoadedDetector("det/detector.safetensors"), tasks, jobs=3))
    (made,) = pool
    assert (made.max_workers, made.start_method) == (3, "spawn") and InlinePool.started == [True], "a worker ignores Ctrl-C, ends with its parent"
    assert all(made.submitted_blocking_sigint)
    rows = [r for rows, report in out for r in rows]
    assert [(r["method"], r["seed"], r["sd"], r["label"]) for r in rows] == [
        ("sd", 0, Path("models/0"), ""), ("np", 3, Path("models/3"), "-seed3"), ("np", 5, Path("models/5"), "-seed5")]
    assert {r["progress"] for r in rows} == {False}, "a worker draws no progress bars over the main process's"
    assert {r["threads"] for r in rows} == {1}, "one torch thread per worker"
    assert {r["concepts"] for r in rows} == {("qrcode",)}
    assert {r["ctx_detector"] for r in rows} == {r["evaluation"].detector for r in rows} == {Path("det/detector.safetensors")}
    assert {r["evaluation"].subset for r in rows} == {"icd-qrcode"}


def test_evaluate_all_drops_the_tasks_not_started_when_one_raises(evaluated, tmp_path):
    tasks = [MethodSeed("sd", 0, ""), MethodSeed("raises", 0, ""), MethodSeed("np", 0, ""), MethodSeed("esd", 0, "")]
    done = parallel_methods.evaluate_all(_run(tmp_path), "base", Path("data/icd-qrcode"), ("qrcode",),
                                         LoadedDetector("det/detector.safetensors"), tasks, jobs=2)
    assert next(done)[0][0]["method"] == "sd"
    with pytest.raises(RuntimeError, match="planted"):
        next(done)
    assert evaluated == ["sd", "raises"], "the tasks after the failure are cancelled, not run"
