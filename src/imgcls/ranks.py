"""Several processes under ``torchrun``: what rank 0 alone checks, and its refusal told to the
others.

Some checks are made by rank 0 only (a new run folder, an output's place: another rank probing
the same place at the same moment would meet rank 0's probe file). When rank 0 refuses, the
other ranks have gone on and wait for it in the process group, and a torchrun agent does not
stop its node when another node's process fails: across machines they would wait for ever (a
CI run saw it: the second node waited out the test's 300 s). So rank 0 joins the group only to
say why (:func:`tell_refusal`), and every rank, once in the group, hears rank 0's verdict
(:func:`hear_refusal`: nothing when it went on) and stops with its reason.
"""

from __future__ import annotations

import os

from imgcls.errors import UserError

#: how long a refusing rank 0 waits for the others to join the group to hear why (they come
#: straight from the same checks; a rank that failed on its own never comes)
TELL_TIMEOUT_S = 60.0


def tell_refusal(device_type: str, reason: str) -> None:
    """Rank 0, refusing: join the group (NCCL on ``cuda``, else gloo, as the run would), send
    ``reason`` and wait at a barrier until every rank has it (NCCL sends asynchronously), then
    leave. A failed join (a rank that stopped on its own never comes) leaves the refusal to be
    raised all the same."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    try:
        if device_type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=TELL_TIMEOUT_S))
    except Exception:  # no rank to tell: rank 0 refuses alone
        return
    try:
        dist.broadcast_object_list([reason], src=0)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def hear_refusal() -> None:
    """Every rank, just after joining the group: rank 0's verdict (``None``: it went on); the
    other ranks stop with its reason."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() <= 1:
        return
    box: list[str | None] = [None]
    dist.broadcast_object_list(box, src=0)
    if box[0] is not None and dist.get_rank() != 0:
        dist.barrier()
        raise UserError(f"rank 0 refused the run: {box[0]}")
