"""The end-to-end demo: a local fs3 cluster and platform train a tiny DeepSeek-V3 with a
preemption and an exact resume (``hai demo``)."""

from hai.demo.run import run_demo
from hai.demo.scenario import DemoOptions
from hai.demo.stack import DemoError, DemoStack, stop

__all__ = ["DemoError", "DemoOptions", "DemoStack", "run_demo", "stop"]
