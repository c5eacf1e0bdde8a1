"""``python -m benchmark``: the ``implicit-concept`` command, for an environment whose scripts
folder is not on ``PATH`` (a venv used without activating it, ``pip install --user``)."""
from benchmark.command import console_main

console_main()
