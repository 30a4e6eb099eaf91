"""Lets ``python -m hai`` stand in for the ``hai`` console script."""

from hai.cli import main

main()
