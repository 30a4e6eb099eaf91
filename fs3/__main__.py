"""``python -m fs3 ...``: the same commands as ``hai fs3 ...``, without the platform."""

from fs3.cli import fs3

fs3()
