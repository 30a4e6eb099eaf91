"""A two-rank training loop over gloo for the test hosts (tests/hai/test_hosts.py): each
step all-reduces a gradient across the hosts, rank 0 checkpoints into the chain's
whole-life state, and a suspend stops every rank at the same step.

Usage: gloo_train.py STEPS STEP_SECONDS

The weight after STEPS steps is 1 - LR * (1 + 2) * STEPS * (STEPS + 1) / 2 whatever the
restarts, if every run resumes from a consistent checkpoint (its step with its weight).
"""

import json
import os
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from hai import client

LR = 1e-3
steps, step_s = int(sys.argv[1]), float(sys.argv[2])
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
# A peer host cut off must not hang the survivors for gloo's default 30 minutes.
dist.init_process_group("gloo", timeout=timedelta(seconds=60))
state = client.get_whole_life_state()
start, w = state.get("step", 0), state.get("w", 1.0)
header = {
    "rank": rank,
    "world": world,
    "node": os.environ["HFREDUCE_NODE_ID"],
    "master": os.environ["MASTER_ADDR"],
    "restart_count": client.restart_count(),
    "resumed_from": start,
}
print(json.dumps(header), flush=True)
for step in range(start, steps):
    # Gradient and "suspend asked" in one all-reduce: every rank stops at the same step.
    grad_and_flag = torch.tensor(
        [(rank + 1) * (step + 1.0), float(client.receive_suspend_command())]
    )
    dist.all_reduce(grad_and_flag, dist.ReduceOp.SUM)
    if grad_and_flag[1] > 0:
        if rank == 0:
            client.set_whole_life_state({"step": step, "w": w})
        print(f"suspending at step {step}", flush=True)
        client.go_suspend()
        time.sleep(120)  # the platform stops us
    w -= LR * float(grad_and_flag[0])
    if rank == 0 and (step + 1) % 5 == 0:
        client.set_whole_life_state({"step": step + 1, "w": w})
        print(f"saved step {step + 1}", flush=True)
    time.sleep(step_s)
print(f"finished w={w!r}", flush=True)
dist.destroy_process_group()
