"""shipslog.gpu: the torch compute core (tensor files, device-to-host snapshots, LoRA merge, benchmarks).

The only package of shipslog that imports torch; nothing else imports it.
Importing it without torch installed raises
:class:`shipslog.engine.MissingDependencyError` naming the ``gpu`` extra.

Public surface:

* tensor files (safetensors, written directly, CRC-32 computed while
  writing): :func:`save_state_dict`, :func:`load_state_dict`,
  :func:`save_tensor_file`, :func:`load_tensor_file`, :func:`tensor_file_metadata`;
* :class:`HostSnapshot`: device-to-host copies into reused (pinned) buffers;
* :class:`AsyncCheckpointer` -> :class:`SaveHandle`: one save in flight,
  snapshot on the caller's thread, persisted through the engine's checkpoint
  operation on one worker thread;
* one call each way for a training loop: :func:`save_training` /
  :func:`save_training_async` (model, optimizer, scheduler, RNG states and
  extras as one committed checkpoint), :func:`restore_training` (the newest
  that verifies, falling back to the one before) -> :class:`Restored`, and
  :func:`load_checkpoint` (a committed checkpoint's state, verified as read);
* :func:`merge_lora` -> :class:`MergeResult`, :func:`load_adapter`,
  :func:`parse_adapter_config`;
* errors: :class:`PickleRefusedError`, :class:`TensorFileError`,
  :class:`TensorFileNotFoundError`, :class:`StateDictError`,
  :class:`AdapterError`, :class:`NonFiniteError`, :class:`AsyncSaveError`,
  :class:`CheckpointerClosedError`, :class:`SaveTimeoutError` (and the engine's
  :class:`IntegrityError` for checksum mismatches).
"""

from shipslog.engine import IntegrityError, MissingDependencyError

try:
    import torch as _torch  # noqa: F401  (probe: everything below needs it)
except ImportError as _exc:
    raise MissingDependencyError("torch", "gpu") from _exc

from ._async import (
    EXPECTED_BYTES_MARGIN,
    AsyncCheckpointer,
    AsyncSaveError,
    CheckpointerClosedError,
    SaveHandle,
    SaveTimeoutError,
)
from ._bench import (  # the baselines ``shipslog bench checkpoint`` measures beside the real operations
    bench_checkpoint,
    bench_merge,
    make_bench_state,
    torch_save_fsync,
    touch_every_byte,
    trim_heap,
    write_raw_fsync,
)
from ._consolidate import merge_folders
from ._errors import (
    AdapterError,
    GpuError,
    MergeOutOfMemoryError,
    NonFiniteError,
    PickleRefusedError,
    StateDictError,
    TensorFileError,
    TensorFileNotFoundError,
)
from ._hostcopy import HostSnapshot
from ._lora import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    DEFAULT_MERGE_BUDGET_BYTES,
    PEFT_PREFIX,
    LoraConfig,
    MergeResult,
    load_adapter,
    merge_lora,
    parse_adapter_config,
)
from ._preemption import Preemption
from ._tensorfile import (
    DEFAULT_SHARD_BYTES,
    DTYPES,
    INDEX_SUFFIX,
    SAFETENSORS_SUFFIX,
    TREE_SUFFIX,
    load_state_dict,
    load_tensor_file,
    save_state_dict,
    save_tensor_file,
    shard_file_name,
    tensor_file_metadata,
)
from ._training import (
    TRAINING_PREFIX,
    Restored,
    RestoreError,
    capture_rng,
    checkpoints_newest_first,
    free_checkpoint_name,
    load_checkpoint,
    load_checkpoint_folder,
    restore_rng,
    restore_training,
    rotate_checkpoints,
    save_training,
    save_training_async,
    training_state,
)

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_WEIGHTS_NAME",
    "DEFAULT_MERGE_BUDGET_BYTES",
    "DEFAULT_SHARD_BYTES",
    "DTYPES",
    "EXPECTED_BYTES_MARGIN",
    "INDEX_SUFFIX",
    "PEFT_PREFIX",
    "SAFETENSORS_SUFFIX",
    "TRAINING_PREFIX",
    "TREE_SUFFIX",
    "AdapterError",
    "AsyncCheckpointer",
    "AsyncSaveError",
    "CheckpointerClosedError",
    "GpuError",
    "HostSnapshot",
    "IntegrityError",
    "LoraConfig",
    "MergeOutOfMemoryError",
    "MergeResult",
    "MissingDependencyError",
    "NonFiniteError",
    "PickleRefusedError",
    "Preemption",
    "RestoreError",
    "Restored",
    "SaveHandle",
    "SaveTimeoutError",
    "StateDictError",
    "TensorFileError",
    "TensorFileNotFoundError",
    "bench_checkpoint",
    "bench_merge",
    "capture_rng",
    "checkpoints_newest_first",
    "free_checkpoint_name",
    "load_adapter",
    "load_checkpoint",
    "load_checkpoint_folder",
    "load_state_dict",
    "load_tensor_file",
    "make_bench_state",
    "merge_folders",
    "merge_lora",
    "parse_adapter_config",
    "restore_rng",
    "restore_training",
    "rotate_checkpoints",
    "save_state_dict",
    "save_tensor_file",
    "save_training",
    "save_training_async",
    "shard_file_name",
    "tensor_file_metadata",
    "torch_save_fsync",
    "touch_every_byte",
    "training_state",
    "trim_heap",
    "write_raw_fsync",
]
