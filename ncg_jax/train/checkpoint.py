"""Orbax checkpoints of the train state, one per epoch, with clear errors on bad ones.
(orbax is imported when a checkpoint is opened: entry points parse their flags first.)"""
import os
from typing import TYPE_CHECKING, Any

import jax

if TYPE_CHECKING:
  import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be read; never silently retrain over it."""


def manager(directory: str, keep: int = 2) -> "ocp.CheckpointManager":
  import orbax.checkpoint as ocp
  return ocp.CheckpointManager(
      os.path.abspath(directory),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def save(mngr: "ocp.CheckpointManager", step: int, state: Any) -> None:
  import orbax.checkpoint as ocp
  mngr.save(step, args=ocp.args.StandardSave(state))


def restore(mngr: "ocp.CheckpointManager", step: int, like: Any) -> Any:
  import orbax.checkpoint as ocp
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  try:
    return mngr.restore(step, args=ocp.args.StandardRestore(abstract))
  except Exception as e:  # orbax raises many types; all mean "unreadable"
    raise CheckpointError(
        f"cannot read checkpoint {os.path.join(str(mngr.directory), str(step))}: "
        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. "
        "Delete that run directory to retrain, or pass another --workdir.") from e
