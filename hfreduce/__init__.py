"""hfreduce: allreduce that sums gradients on the CPU.

Chunks are copied off the device into shared host buffers, summed with vectorised CPU
ops, exchanged between nodes over a double binary tree, and copied back, with every
stage pipelined across chunks.
"""

__all__: list[str] = []
