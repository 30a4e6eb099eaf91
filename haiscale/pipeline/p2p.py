"""Activations and gradients between neighbouring pipeline stages.

Sends are asynchronous (``isend``) and only waited for at the end of a step, so a stage
never blocks on a send while its neighbour blocks on one towards it. Every message has
its own tag (edge, micro-batch, kind), so a receive matches its send whatever order the
two stages' schedules post them in. An activation is preceded by a small header with its
dtype and shape: a stage needs no advance knowledge of what its predecessor produces.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

# Dtypes an activation may have, indexed by the code the header carries.
_DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
]
_MAX_DIMS = 8
# Per (edge, micro-batch): activation header, activation data, gradient.
_KINDS = 3


class StageLinks:
    """Point-to-point messages between the virtual stages of one pipeline.

    Virtual stage ``s`` lives on rank ``s % size`` of ``group``; stage ``s`` sends its
    activation for micro-batch ``m`` to stage ``s + 1`` and gets the gradient back.
    Received activations are allocated on ``device`` (where the stages' parameters are).
    """

    def __init__(self, group: dist.ProcessGroup | None, stages: int, device: torch.device) -> None:
        self.group = group
        # Global rank of each group rank: torch.distributed addresses peers globally.
        self.ranks = dist.get_process_group_ranks(group or dist.group.WORLD)
        self.stages = stages
        self.device = device
        self._sends: list[tuple[dist.Work, torch.Tensor]] = []

    def send_activation(self, x: torch.Tensor, stage: int, micro: int) -> None:
        """Send stage ``stage``'s output for ``micro`` to stage ``stage + 1``."""
        if x.dtype not in _DTYPES or x.dim() > _MAX_DIMS:
            raise ValueError(
                f"stage {stage} produced a {x.dtype} tensor of shape {tuple(x.shape)}; "
                f"pipeline activations need one of {_DTYPES} and at most {_MAX_DIMS} dims"
            )
        fields = [_DTYPES.index(x.dtype), x.dim(), *x.shape]
        fields += [0] * (2 + _MAX_DIMS - len(fields))
        header = torch.tensor(fields, dtype=torch.int64, device=self.device)
        tag = self._tag(stage, micro)
        self._send(header, stage + 1, tag)
        self._send(x.detach(), stage + 1, tag + 1)

    def recv_activation(self, stage: int, micro: int) -> torch.Tensor:
        """Receive stage ``stage``'s output for ``micro`` (called by stage ``stage + 1``)."""
        tag = self._tag(stage, micro)
        header = torch.empty(2 + _MAX_DIMS, dtype=torch.int64, device=self.device)
        code, dims, *shape = self._recv(header, stage, tag).tolist()
        x = torch.empty(shape[:dims], dtype=_DTYPES[code], device=self.device)
        return self._recv(x, stage, tag + 1)

    def send_grad(self, grad: torch.Tensor, stage: int, micro: int) -> None:
        """Send the gradient of stage ``stage``'s output for ``micro`` back to it."""
        self._send(grad, stage, self._tag(stage, micro) + 2)

    def recv_grad(self, like: torch.Tensor, stage: int, micro: int) -> torch.Tensor:
        """Receive the gradient of ``like``, stage ``stage``'s output for ``micro``."""
        return self._recv(torch.empty_like(like), stage + 1, self._tag(stage, micro) + 2)

    def wait_sends(self) -> None:
        """Block until every send of this step has been delivered."""
        for work, _ in self._sends:
            work.wait()
        self._sends.clear()

    def _tag(self, stage: int, micro: int) -> int:
        return (micro * self.stages + stage) * _KINDS

    def _peer(self, stage: int) -> int:
        return self.ranks[stage % len(self.ranks)]

    def _send(self, x: torch.Tensor, stage: int, tag: int) -> None:
        x = x.contiguous()
        # Delivered sends let go of their tensors now rather than at the end of the step,
        # so 1F1B's memory bound holds for the sent activations too.
        self._sends = [(work, t) for work, t in self._sends if not work.is_completed()]
        # The tensor is kept with its handle: it must outlive the asynchronous send.
        self._sends.append((dist.isend(x, self._peer(stage), self.group, tag), x))

    def _recv(self, x: torch.Tensor, stage: int, tag: int) -> torch.Tensor:
        dist.irecv(x, self._peer(stage), self.group, tag).wait()
        return x
