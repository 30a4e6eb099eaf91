"""The Prometheus endpoints of a real server and agent, scraped over HTTP as Prometheus would."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hai.cluster import PROMETHEUS_TARGETS
from hai.metrics import SchedulerMetrics
from hai.records import Job, Node

Samples = dict[tuple[str, frozenset], float]


def scrape(port: int) -> Samples:
    """Every sample on the endpoint, keyed by (sample name, labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def scrape_until(cluster, port: int, what: str, check: Callable[[Samples], bool]) -> Samples:  # type: ignore[no-untyped-def]
    """Scrapes until ``check`` holds (gauges follow the store one pass later); the last scrape."""
    last: list[Samples] = []

    def ready() -> bool:
        last[:] = [scrape(port)]
        return check(last[0])

    cluster.wait_for(what, ready, timeout=30)
    return last[0]


@pytest.mark.slow
def test_endpoints_report_and_follow_a_preemption(metered_cluster: tuple) -> None:
    cluster, server_port, agent_ports = metered_cluster
    client, spec = cluster.client, cluster.train_spec

    def state(job_id: int) -> str:
        return cluster.describe(job_id)["job"]["state"]

    idle = scrape_until(
        cluster, server_port, "the node gauge", lambda s: value(s, "hai_nodes", state="ready") == 2
    )
    assert value(idle, "hai_running_jobs") == 0
    assert value(idle, "hai_allocated_gpu_ratio") == 0
    assert value(idle, "hai_preemptions_total") == 0
    assert value(idle, "hai_suspend_latency_seconds_count") == 0
    passes = value(idle, "hai_scheduling_pass_seconds_count")
    assert passes > 0
    # Every agent has an endpoint of its own, and `hai up` lists them all for Prometheus.
    for port in agent_ports:
        node = scrape(port)
        assert 0 <= value(node, "hai_node_cpu_percent") <= 100
        assert 0 < value(node, "hai_node_memory_percent") <= 100
        assert value(node, "hai_node_ranks") == 0
    targets = json.loads((cluster.state_dir / PROMETHEUS_TARGETS).read_text())
    listed = {t["labels"]["instance_name"]: t["targets"][0] for t in targets}
    assert listed == {
        "server": f"127.0.0.1:{server_port}",
        "node-0": f"127.0.0.1:{agent_ports[0]}",
        "node-1": f"127.0.0.1:{agent_ports[1]}",
    }

    # Too big for the cluster, so it stays queued at its level.
    big = client.call("Submit", spec=spec("big", 10, steps=1, nodes=3))["id"]
    scrape_until(
        cluster,
        server_port,
        "the queue gauge",
        lambda s: value(s, "hai_queue_length", priority="10") == 1,
    )
    client.call("Stop", job_id=big)

    low = client.call("Submit", spec=spec("low", 10, steps=1000, nodes=2))["id"]
    busy = scrape_until(
        cluster,
        server_port,
        "the running gauges",
        lambda s: value(s, "hai_running_jobs") == 1 and value(s, "hai_allocated_gpu_ratio") == 1,
    )
    assert value(busy, "hai_queue_length", priority="10") == 0
    assert value(busy, "hai_scheduling_pass_seconds_count") > passes
    for port in agent_ports:
        scrape_until(cluster, port, "the rank gauge", lambda s: value(s, "hai_node_ranks") == 1)

    high = client.call("Submit", spec=spec("high", 20, steps=2, nodes=2))["id"]
    cluster.wait_for("the high job to finish", lambda: state(high) == "succeeded")
    after = scrape(server_port)
    assert value(after, "hai_preemptions_total") == 1
    assert value(after, "hai_suspend_latency_seconds_count") == 1
    assert 0 < value(after, "hai_suspend_latency_seconds_sum") < 20  # within the grace period
    assert state(low) in ("queued", "running")  # requeued, not lost
    client.call("Stop", job_id=low)


def test_scheduler_metrics() -> None:
    m = SchedulerMetrics()
    jobs = [
        Job(1, "a", "u", "default", 50, 1, 8, {}, state="queued"),
        Job(2, "b", "u", "default", 10, 1, 8, {}, state="running"),
    ]
    nodes = [Node("n0", gpus=8), Node("n1", gpus=8), Node("n2", gpus=8, state="drained")]
    m.observe(jobs, nodes, {"n0"})
    assert m.registry.get_sample_value("hai_queue_length", {"priority": "50"}) == 1
    assert m.registry.get_sample_value("hai_running_jobs") == 1
    assert m.registry.get_sample_value("hai_allocated_gpu_ratio") == 0.5
    assert m.registry.get_sample_value("hai_nodes", {"state": "drained"}) == 1
