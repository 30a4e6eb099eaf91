"""Runs every section of the haiscale benchmark, or those named on the command line."""

from __future__ import annotations

import argparse
import importlib

SECTIONS = ("ddp", "fsdp", "pipeline", "checkpoint")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m haiscale.bench", description=__doc__)
    parser.add_argument("sections", nargs="*", help=f"some of {', '.join(SECTIONS)} (default all)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    for name in args.sections or SECTIONS:
        module = importlib.import_module(f"haiscale.bench.{name}")
        print("\n".join(module.run(args.quick)), end="\n\n", flush=True)


if __name__ == "__main__":
    main()
