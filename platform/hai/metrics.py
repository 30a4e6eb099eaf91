"""Prometheus metrics of the scheduler and of each agent, each on its own registry.

Registries are per process object, not the client library's global one, so tests can run
a scheduler and several agents in one process without clashing names.
"""

from __future__ import annotations

from collections import Counter

import psutil
from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server
from prometheus_client import Counter as PromCounter

from hai.errors import Unavailable
from hai.records import JOB_STATES, NODE_STATES, QUEUED, RUNNING, Job, Node
from hai.spec import AUTO, PRIORITY_LEVELS


class _Endpoint:
    """A registry of our own and the HTTP endpoint Prometheus scrapes it on."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Raises Unavailable when ``host:port`` cannot be bound (in use, not this host's)."""
        try:
            start_http_server(port, addr=host, registry=self.registry)
        except OSError as err:
            raise Unavailable(f"cannot serve metrics on {host}:{port}: {err.strerror}") from None


class SchedulerMetrics(_Endpoint):
    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.queue = Gauge("hai_queue_length", "Queued jobs per priority", ["priority"], registry=r)
        self.jobs = Gauge("hai_jobs", "Jobs per state", ["state"], registry=r)
        self.running = Gauge("hai_running_jobs", "Running jobs", registry=r)
        self.nodes = Gauge("hai_nodes", "Nodes per state", ["state"], registry=r)
        self.gpu_ratio = Gauge(
            "hai_allocated_gpu_ratio", "Allocated / schedulable GPUs", registry=r
        )
        self.preemptions = PromCounter("hai_preemptions", "Jobs asked to suspend", registry=r)
        self.suspend_latency = Histogram(
            "hai_suspend_latency_seconds",
            "From suspend request to stop",
            registry=r,
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 300),
        )
        self.pass_latency = Histogram(
            "hai_scheduling_pass_seconds",
            "One scheduling pass",
            registry=r,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1),
        )

    def observe(self, jobs: list[Job], nodes: list[Node], allocated: set[str]) -> None:
        """Refreshes the gauges from a snapshot."""
        states = Counter(j.state for j in jobs)
        for state in JOB_STATES:
            self.jobs.labels(state).set(states[state])
        self.running.set(states[RUNNING])
        queued = Counter(j.priority for j in jobs if j.state == QUEUED)
        for level in (*PRIORITY_LEVELS, AUTO):
            self.queue.labels("AUTO" if level == AUTO else str(level)).set(queued[level])
        by_state = Counter(n.state for n in nodes)
        for state in NODE_STATES:
            self.nodes.labels(state).set(by_state[state])
        total = sum(n.gpus for n in nodes if n.state == "ready")
        used = sum(n.gpus for n in nodes if n.name in allocated)
        self.gpu_ratio.set(used / total if total else 0.0)


def gpu_use() -> list[tuple[int, float]]:
    """(memory used in bytes, utilisation %) of each GPU on the node, read through NVML.

    NVML sees every process's use, our job's ranks included, without opening a CUDA
    context in the agent (which would itself take GPU memory). Nodes without NVML (no
    driver, or the nvidia-ml-py package missing) report no GPUs.
    """
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # ImportError, or NVMLError when there is no driver
        return []
    try:
        use = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle).used
            use.append((int(memory), float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)))
        return use
    finally:
        pynvml.nvmlShutdown()


class AgentMetrics(_Endpoint):
    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.cpu = Gauge("hai_node_cpu_percent", "Node CPU use", registry=r)
        self.memory = Gauge("hai_node_memory_percent", "Node memory use", registry=r)
        self.gpu_memory = Gauge(
            "hai_node_gpu_memory_used_bytes", "GPU memory in use", ["gpu"], registry=r
        )
        self.gpu_util = Gauge(
            "hai_node_gpu_utilization_percent", "GPU busy time", ["gpu"], registry=r
        )
        self.ranks = Gauge("hai_node_ranks", "Rank processes running", registry=r)

    def observe(self, ranks: int) -> None:
        self.cpu.set(psutil.cpu_percent(interval=None))
        self.memory.set(psutil.virtual_memory().percent)
        self.ranks.set(ranks)
        for i, (memory, util) in enumerate(gpu_use()):
            self.gpu_memory.labels(str(i)).set(memory)
            self.gpu_util.labels(str(i)).set(util)
