"""The error for code the benchmark calls but does not own: a method's ``build`` and the pipeline it
returns. It names the method and the step and keeps what was raised, so a lab finds the failing
line in its own code instead of a bare exception from somewhere inside the benchmark
(:func:`plugin_failure`). Beside it, what is not the method's: the toolkit's own ``OSError`` met
while the method called it (:class:`ToolkitIOError`), and what its code prints, sent to stderr
(:func:`plugin_output`)."""
from __future__ import annotations

import contextlib
import functools
import sys
import traceback
from typing import Iterator


#: Faults of the pinned libraries that a method's pipeline runs into, told by the error they raise
#: (its type and a text in its message), with what they are and the way around: without this the
#: lab reads a library's AttributeError as a bug of its own method.
LIBRARY_FAULTS = (
    (AttributeError, "object has no attribute 'text_model'",
     "a fault of the pinned libraries, not of the method: diffusers 0.42.1 reads text_encoder.text_model, which "
     "transformers 5.6 and later flattened away (huggingface/diffusers#14124), when a pipeline is called with clip_skip or a "
     "LoRA scale in cross_attention_kwargs; encode the prompts in a function of your own and pass prompt_embeds"),
)


def library_fault(error: BaseException) -> str | None:
    """What :data:`LIBRARY_FAULTS` says of ``error``, or None when it is none of them."""
    for kind, text, said in LIBRARY_FAULTS:
        if isinstance(error, kind) and text in str(error):
            return said
    return None


class MethodFailed(RuntimeError):
    """``cause_traceback`` is the cause's traceback as text, so it reaches the main process whole
    from a ``--jobs`` worker (traceback objects do not pickle). It is always shown: the cause comes
    from code the benchmark does not own, so even a ``ValueError`` (numpy's, deep in a lab's code)
    needs its traceback, the line its author looks for."""

    def __init__(self, where: str, step: str, error: BaseException) -> None:
        fault = library_fault(error)
        super().__init__(f"{where}: {step} raised {type(error).__name__}: {error}" + (f" ({fault})" if fault else ""))
        self.cause_traceback = "".join(traceback.format_exception(error))

    def __reduce__(self):
        return _rebuilt, (str(self), self.cause_traceback)


def _rebuilt(message: str, cause_traceback: str) -> MethodFailed:
    failed = MethodFailed.__new__(MethodFailed)
    RuntimeError.__init__(failed, message)
    failed.cause_traceback = cause_traceback
    return failed


def plugin_failure(where: str, step: str, error: BaseException) -> MethodFailed:
    """``error``, raised by code the benchmark does not own (a plug-in's import, constructor,
    ``finetunes``, ``build`` or pipeline), as its :class:`MethodFailed`; a stop (``KeyboardInterrupt``:
    Ctrl-C, SIGTERM, SIGHUP) is raised again, the user's and not the plug-in's. Callers catch every
    ``BaseException``: the others would end the run with the plug-in's exit status or a bare traceback
    and no word of where: ``SystemExit`` (a ``sys.exit()`` in a lab's error path, ``argparse``'s
    ``parse_args()`` at import reading the benchmark's command line), asyncio's ``CancelledError`` (a
    sampler driven by an event loop), gevent's ``GreenletExit``, a lab's own."""
    if isinstance(error, KeyboardInterrupt):
        raise error
    return MethodFailed(where, step, error)


class ToolkitIOError(OSError):
    """An ``OSError`` met by the toolkit's own services while a method's ``build`` called them (a
    full disk while ``ctx.finetune`` saves a model): the toolkit's failure, not the method's, so it
    passes through as an ``OSError`` naming the file instead of becoming :class:`MethodFailed`."""


def toolkit_io(service):
    """``service`` (a toolkit function handed to a method) with every ``OSError`` it raises marked as
    :class:`ToolkitIOError`, whatever the method does around the call."""
    @functools.wraps(service)
    def call(*args, **kwargs):
        try:
            return service(*args, **kwargs)
        except OSError as e:
            raise toolkit_error(e) from e
    return call


def toolkit_error(error: OSError) -> ToolkitIOError:
    """``error`` marked as the toolkit's own (:class:`ToolkitIOError`), its errno and file kept."""
    if isinstance(error, ToolkitIOError):
        return error
    return ToolkitIOError(error.errno, error.strerror or str(error), error.filename)


@contextlib.contextmanager
def plugin_output() -> Iterator[None]:
    """What code the benchmark does not own prints (a plug-in's ``print`` at import, in ``build`` or
    while sampling) goes to stderr, beside the progress bars: stdout holds the command's results
    only (``results.md``, a table), which a lab's log line would otherwise lead or split."""
    with contextlib.redirect_stdout(sys.stderr):
        yield
