"""The error for code the benchmark calls but does not own: a method's ``build`` and the pipeline it
returns. It names the method and the step and chains what was raised, so a lab finds the failing
line in its own code instead of a bare exception from somewhere inside the benchmark."""
from __future__ import annotations


class MethodFailed(RuntimeError):
    def __init__(self, where: str, step: str, error: BaseException) -> None:
        super().__init__(f"{where}: {step} raised {type(error).__name__}: {error}")
