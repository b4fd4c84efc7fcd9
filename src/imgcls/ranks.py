"""Several processes under ``torchrun``: what rank 0 alone checks, and its refusal told to the
others.

Some checks are made by rank 0 only (a new run folder, an output's place: another rank probing
the same place at the same moment would meet rank 0's probe file). When rank 0 refuses, the
other ranks have gone on and wait for it in the process group, and a torchrun agent does not
stop its node when another node's process fails: across machines they would wait for ever (a
CI run saw it: the second node waited out the test's 300 s). So rank 0 joins the group only to
say why (:func:`tell_refusal`), and every rank, once in the group, hears rank 0's verdict
(:func:`hear_refusal`: nothing when it went on) and stops with its reason.

The verdict always travels over gloo: on GPUs the run's group is NCCL's, which joins without
waiting for the others and would leave a refusing rank 0 blocked in its first collective if
they never came; a gloo group waits for them at most ``TELL_TIMEOUT_S`` and then gives up.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from imgcls.errors import UserError

#: how long a refusing rank 0 waits for the others to join the group to hear why (they come
#: straight from the same checks, or from loading the model; a rank that failed on its own
#: never comes, and rank 0 then refuses alone)
TELL_TIMEOUT_S = 300.0


def _verdict_group() -> Any:
    """The group the verdict travels in: the run's own where it is gloo's, else a gloo group over
    the same ranks (made by every rank at this same point)."""
    import torch.distributed as dist

    if dist.get_backend() == "gloo":
        return None
    return dist.new_group(backend="gloo", timeout=timedelta(seconds=TELL_TIMEOUT_S))


def tell_refusal(device_type: str, reason: str) -> None:
    """Rank 0, refusing: join the group (NCCL on ``cuda``, else gloo, as the run would; the one
    the program is in, if any), send ``reason`` and wait at a barrier until every rank has it,
    then leave. Whatever fails on the way (no rank comes) leaves the refusal to be raised all the
    same: this only ever adds the others' stop to it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    import torch
    import torch.distributed as dist

    joined = False
    try:
        if not dist.is_initialized():
            if device_type == "cuda":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            backend = "nccl" if device_type == "cuda" else "gloo"
            dist.init_process_group(backend=backend, timeout=timedelta(seconds=TELL_TIMEOUT_S))
            joined = True
        group = _verdict_group()
        dist.broadcast_object_list([reason], src=0, group=group)
        dist.barrier(group=group)
    except Exception:  # no rank to tell, or the group broke: rank 0 refuses alone
        pass
    finally:
        if joined and dist.is_initialized():
            dist.destroy_process_group()


def hear_refusal() -> None:
    """Every rank, just after joining the group: rank 0's verdict (``None``: it went on); the
    other ranks stop with its reason."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() <= 1:
        return
    group = _verdict_group()
    box: list[str | None] = [None]
    dist.broadcast_object_list(box, src=0, group=group)
    if box[0] is not None and dist.get_rank() != 0:
        dist.barrier(group=group)
        raise UserError(f"rank 0 refused the run: {box[0]}")
