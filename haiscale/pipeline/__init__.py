"""Pipeline parallelism: split an ``nn.Sequential`` into stages and train it with GPipe,
1F1B (PipeDream) or interleaved 1F1B schedules over torch.distributed send/recv."""

from haiscale.pipeline.partition import partition
from haiscale.pipeline.schedules import GPipe, Interleaved1F1B, PipeDream
from haiscale.pipeline.subgroups import make_subgroups

__all__ = ["GPipe", "Interleaved1F1B", "PipeDream", "make_subgroups", "partition"]
