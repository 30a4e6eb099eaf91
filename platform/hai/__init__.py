"""hai: the HAI platform.

Job specs, the preemptive time-sharing scheduler, node agents, executors and the ``hai``
command line that ties the whole stack together.
"""

__all__: list[str] = []
