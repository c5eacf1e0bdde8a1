"""What a plug-in leaves set in the process besides torch's settings and the ones
``test_plugin_styles`` covers: the umask, tempfile's folder, the exception hooks and the garbage
collector, put back after its code so the run's later files and stages are as without it; and
what it prints at the process's exit kept off stdout, which holds the command's results."""
import gc
import os
import signal
import subprocess
import sys
import tempfile
import threading

import pytest

from benchmark import stages
from tests.test_plugin_ports import base, evaluate  # noqa: F401 (fixtures)

LEFTOVERS = '''
import gc, os, sys, tempfile, threading
from benchmark.methods.interface import FineTune, Generator, Method


def leave_behind():
    """Research code's habits: private files, its own scratch folder (gone when it is done), a
    debugger on any uncaught exception, no garbage collection while it trains."""
    os.umask(0o077)
    scratch = tempfile.TemporaryDirectory(prefix="lab-scratch-")
    tempfile.tempdir = scratch.name
    scratch.cleanup()
    sys.excepthook = threading.excepthook = lambda *args: print("lab: post-mortem debugger waits on stdin")
    gc.disable()


leave_behind()


class Leaves(Method):
    name = "leaves"

    def build(self, ctx):
        pipeline = ctx.load_pipeline(ctx.finetune(FineTune()))
        leave_behind()  # after the services, which run under the run's own umask
        return Generator(pipeline)
'''


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _state():
    return _umask(), tempfile.tempdir, tempfile.gettempdir(), sys.excepthook, threading.excepthook, gc.isenabled()


@pytest.fixture
def user_umask():
    """The process's umask 022 for the test (a file is made 0644), and whatever it was put back."""
    before = os.umask(0o022)
    yield
    os.umask(before)


def test_what_a_plug_in_leaves_set_is_put_back_before_its_images_and_the_next_stage(lab, evaluate, user_umask):
    """Left set, a plug-in's umask 077 made its own images and every later file of the run (the
    next methods' images, results.json, the cache) unreadable to the lab's group; its tempfile folder,
    removed, failed every later temporary file (FileNotFoundError); its exception hook started a
    debugger on the toolkit's next uncaught error; garbage collection stayed off for the whole run."""
    before = _state()
    try:
        rows = evaluate(f"{lab('leftovers', LEFTOVERS)}:Leaves")
        after = _state()
    finally:
        os.umask(0o022)
        tempfile.tempdir, sys.excepthook, threading.excepthook = before[1], before[3], before[4]
        gc.enable()
    assert rows[0]["status"] == "ok"
    images = evaluate.images("leaves")
    assert images and {oct(image.stat().st_mode & 0o777) for image in images} == {oct(0o644)}
    assert after == before
    with tempfile.NamedTemporaryFile():
        pass


WATCHDOG = '''
import signal
from benchmark.methods.interface import FineTune, Generator, Method


def on_timeout(signum, frame):
    raise TimeoutError("lab: build took over an hour")


class Watched(Method):
    name = "watched"

    def build(self, ctx):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # a command-line script's quiet end under | head
        signal.signal(signal.SIGALRM, on_timeout)
        signal.setitimer(signal.ITIMER_REAL, 3600.0)  # a watchdog over its build, never disarmed
        return Generator(ctx.load_pipeline(ctx.finetune(FineTune())))
'''


def test_an_alarm_a_plug_in_left_armed_is_disarmed_and_its_fatal_signal_defaults_put_back(lab, evaluate):
    """A watchdog alarm a build armed and never disarmed fired an hour later in whatever stage ran
    then (its TimeoutError that stage's failure; SIGALRM's default ends the process, "Alarm clock",
    status 142); SIGPIPE's default, left set, ended the run at its first write to a closed pipe
    instead of the toolkit's BrokenPipeError handling."""
    before = signal.getsignal(signal.SIGPIPE), signal.getsignal(signal.SIGALRM), signal.getitimer(signal.ITIMER_REAL)
    try:
        rows = evaluate(f"{lab('watchdog', WATCHDOG)}:Watched")
        after = signal.getsignal(signal.SIGPIPE), signal.getsignal(signal.SIGALRM), signal.getitimer(signal.ITIMER_REAL)
    finally:
        signal.setitimer(signal.ITIMER_REAL, *before[2])  # pytest-timeout's, if armed
        signal.signal(signal.SIGPIPE, before[0])
        signal.signal(signal.SIGALRM, before[1])
    assert rows[0]["status"] == "ok"
    assert after[:2] == before[:2]
    if before[2] == (0.0, 0.0):
        assert after[2] == (0.0, 0.0)
    else:  # pytest-timeout's alarm runs on, not the plug-in's hour
        assert 0 < after[2][0] <= before[2][0] and after[2][1] == before[2][1]


TOUCHED_IN_BUILD = '''
import os
from benchmark.methods.interface import FineTune, Generator, Method


class Private(Method):
    name = "private"

    def build(self, ctx):
        os.umask(0o077)
        return Generator(ctx.load_pipeline(ctx.finetune(FineTune())))
'''


def test_the_toolkits_services_write_under_the_runs_umask_whatever_the_build_set(lab, evaluate, monkeypatch, user_umask):
    """The fine-tune every method shares, trained when a build asks for it, was written under that
    build's umask 077: the shared cache unreadable to the lab's group."""
    made = []
    fine_tune = stages.finetune
    monkeypatch.setattr(stages, "finetune", lambda *a, **k: made.append(_umask()) or fine_tune(*a, **k))
    rows = evaluate(f"{lab('private', TOUCHED_IN_BUILD)}:Private")
    assert rows[0]["status"] == "ok"
    assert made == [0o022]


AT_EXIT = '''
import atexit, sys, threading, time
from benchmark import cli
from benchmark.failures import plugin_output


def lab_run():
    """A command whose plug-in registered an exit handler and started a thread that print."""
    with plugin_output():
        atexit.register(print, "lab: total time 12 s")
        threading.Thread(target=lambda: (time.sleep(0.3), print("lab: upload done")), name="lab-upload").start()
    print("| method | ICR |")
    return 0


cli.main = lab_run
cli.console_main()
'''


def test_what_a_plug_in_prints_after_the_results_goes_to_stderr(tmp_path):
    """An exit handler a plug-in registered (a timer's summary) or a thread it left printing wrote
    after the results, on stdout: ``implicit-concept benchmark > results.md`` held a lab's log line."""
    done = subprocess.run([sys.executable, "-c", AT_EXIT], cwd=os.path.dirname(os.path.dirname(__file__)),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "| method | ICR |\n"
    assert "lab: total time 12 s" in done.stderr and "lab: upload done" in done.stderr


@pytest.mark.parametrize("collecting", [True, False])
def test_the_garbage_collectors_switch_is_put_back_as_it_was_whichever_way_it_was(collecting):
    """A run under ``gc.disable()`` (a lab's own speed setting, before the toolkit is called) had the
    collector switched on after a plug-in's code, whatever that code did to it."""
    from benchmark.plugin_state import kept_process_settings

    before = gc.isenabled()
    try:
        (gc.enable if collecting else gc.disable)()
        with kept_process_settings():
            (gc.disable if collecting else gc.enable)()
        assert gc.isenabled() is collecting
    finally:
        (gc.enable if before else gc.disable)()


def test_an_alarm_armed_before_a_plug_in_runs_on_with_its_time_left_and_its_interval(monkeypatch):
    """An alarm armed before the block (a test's or a lab's own timeout, repeating) is set back to
    what was left of it, less the block's time (not its whole first value again: each call into a
    plug-in would put its deadline back), and keeps its interval."""
    from benchmark import plugin_state

    clock = iter([1000.0, 1100.0])  # the block takes 100 s
    monkeypatch.setattr(plugin_state.time, "monotonic", lambda: next(clock))
    handler = signal.signal(signal.SIGALRM, lambda *args: None)
    before = signal.setitimer(signal.ITIMER_REAL, 3600.0, 600.0)
    try:
        with plugin_state.kept_signal_handlers():
            signal.setitimer(signal.ITIMER_REAL, 0.0)
        left, interval = signal.getitimer(signal.ITIMER_REAL)
    finally:
        signal.setitimer(signal.ITIMER_REAL, *before)
        signal.signal(signal.SIGALRM, handler)
    assert 3400.0 < left <= 3500.0 and interval == 600.0


def test_an_alarm_a_block_armed_with_none_armed_before_is_disarmed():
    """With no alarm armed before (a run outside pytest), a watchdog a plug-in armed is disarmed."""
    from benchmark.plugin_state import kept_signal_handlers

    handler = signal.signal(signal.SIGALRM, lambda *args: None)
    before = signal.setitimer(signal.ITIMER_REAL, 0.0)
    try:
        with kept_signal_handlers():
            signal.setitimer(signal.ITIMER_REAL, 3600.0)
        after = signal.getitimer(signal.ITIMER_REAL)
    finally:
        signal.setitimer(signal.ITIMER_REAL, *before)
        signal.signal(signal.SIGALRM, handler)
    assert after == (0.0, 0.0)


def test_reading_the_umask_leaves_it_as_it_was():
    """The umask is read by setting it; a lab's 027 (group-readable, not world) was left 022 by the
    services' wrapper, made when a plug-in's context is, for every later file of the run."""
    from benchmark.plugin_state import in_working_folder
    from implicit_concept.files import current_umask

    before = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        in_working_folder(lambda: None)
        after = os.umask(0o027)
    finally:
        os.umask(before)
    assert after == 0o027


def test_a_block_off_the_main_thread_leaves_the_alarm_the_main_thread_armed_meanwhile():
    """The alarm is the main thread's (its handler runs there): a plug-in's code run in a worker
    thread (a lab's own thread pool around the toolkit) put back the alarm as that thread found it,
    disarming the timeout the main thread armed while it ran."""
    from benchmark.plugin_state import kept_signal_handlers

    handler = signal.signal(signal.SIGALRM, lambda *args: None)
    before = signal.setitimer(signal.ITIMER_REAL, 0.0)
    entered, armed = threading.Event(), threading.Event()

    def worker():
        with kept_signal_handlers():
            entered.set()
            armed.wait(10)

    thread = threading.Thread(target=worker)
    try:
        thread.start()
        entered.wait(10)
        signal.setitimer(signal.ITIMER_REAL, 3600.0)
        armed.set()
        thread.join(10)
        after = signal.getitimer(signal.ITIMER_REAL)
    finally:
        signal.setitimer(signal.ITIMER_REAL, *before)
        signal.signal(signal.SIGALRM, handler)
    assert 3500.0 < after[0] <= 3600.0
