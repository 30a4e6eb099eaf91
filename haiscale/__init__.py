"""haiscale: parallel training wrappers.

DDP over hfreduce, fully sharded data parallel, pipeline schedules, expert parallelism
for MoE and asynchronous checkpoints to fs3.
"""

__all__: list[str] = []
