"""A toy training job for the platform tests: counts steps, checkpoints, honours suspends.

Usage: train.py STEPS STEP_SECONDS [--ignore-suspend]
"""

import json
import os
import sys
import time

from hai import client

steps, step_s = int(sys.argv[1]), float(sys.argv[2])
ignore = "--ignore-suspend" in sys.argv
rank = int(os.environ["RANK"])
state = client.get_whole_life_state()
start = state.get("step", 0)
print(
    json.dumps(
        {
            "rank": rank,
            "world": int(os.environ["WORLD_SIZE"]),
            "local_rank": int(os.environ["LOCAL_RANK"]),
            "node": os.environ["HFREDUCE_NODE_ID"],
            "master": f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}",
            "restart_count": client.restart_count(),
            "resumed_from": start,
        }
    ),
    flush=True,
)
for step in range(start, steps):
    if client.receive_suspend_command() and not ignore:
        if rank == 0:
            client.set_whole_life_state({"step": step})
        print(f"suspending at step {step}", flush=True)
        client.go_suspend()
        time.sleep(60)  # the platform stops us
    time.sleep(step_s)
    if rank == 0 and step % 5 == 0:
        client.set_whole_life_state({"step": step})
        print(f"saved step {step}", flush=True)  # what tests wait for before a preemption
print("finished", flush=True)
