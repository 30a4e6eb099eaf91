"""The platform on Kubernetes: the HaiJob resource, its operator, the pods of a run.

Our scheduler stays the decider (priority, gangs, quotas, time-sharing); Kubernetes only
runs what it is told. :mod:`hai.k8s.haijob` maps HaiJobs to job specs and scheduler
state to HaiJob status, :mod:`hai.k8s.crd` generates the HaiJob CRD from the job spec,
:mod:`hai.k8s.pods` turns one node's share of a run into a pod,
:mod:`hai.k8s.operator` holds the kopf handlers, :mod:`hai.k8s.launch` starts the ranks
inside a pod. The tests run them against a real kube-apiserver (tests/kube/).
"""

from hai.k8s.names import GROUP, KIND, PLURAL, VERSION

__all__ = ["GROUP", "KIND", "PLURAL", "VERSION"]
