"""Merging a LoRA adapter (PEFT layout) into its base model's weights.

Name mapping.  PEFT saves the two factors of the adapter of module ``M`` as
``base_model.model.M.lora_A.weight`` (shape ``[r, in]``) and
``base_model.model.M.lora_B.weight`` (shape ``[out, r]``); an in-memory PEFT
state dict may carry the adapter name too (``M.lora_A.default.weight``).  The
prefix ``base_model.model.`` is stripped when present and the adapter name
dropped, so both map to module ``M``, whose base weight is ``M.weight`` (shape
``[out, in]``; ``[in, out]`` when the config says ``fan_in_fan_out``, as for
GPT-2's Conv1D).  An adapter tensor that is not a LoRA factor (a bias trained
with ``bias="all"``, a module in ``modules_to_save``) must map, after the same
prefix stripping, to an existing base tensor of the same shape; it replaces
that tensor in the result.  Anything else (DoRA magnitudes, embedding LoRA,
unknown names) is refused with :class:`AdapterError` rather than silently
dropped, since dropping it would lose trained weights.

Arithmetic.  ``W' = W + scale * (B @ A)`` with ``scale = lora_alpha / r``
(``lora_alpha / sqrt(r)`` with ``use_rslora``; ``rank_pattern`` and
``alpha_pattern`` override r and alpha per module as in PEFT), accumulated in
float32 over chunks of rows of ``W`` and ``B`` sized so that one chunk's
temporaries fit ``memory_budget_bytes``, then cast back to the base dtype.
Every merged tensor is checked finite (in its base dtype, so an overflow of
float16 is caught too) before anything is returned.

Untrusted configs.  An adapter_config.json is read with bounds (size,
JSON nesting) and every failure is an :class:`AdapterError` naming the file
and the field.  A str ``target_modules`` is a regular expression matched with
``re.fullmatch`` as PEFT does, accepted only when :func:`regex_refusal` finds
nothing in it that can backtrack without bound (no backreference, lookaround,
nested or alternated quantified group, bounded total backtracking work), and
module names longer than ``MAX_MODULE_NAME`` are refused, so every match runs
in bounded time.  ``rank_pattern``/``alpha_pattern`` keys are matched as plain
names (the module itself or a '.'-suffix), never interpolated into a regex;
keys holding regex metacharacters are refused rather than misread.

Out of memory.  A chunk that fails with an out-of-memory error is retried with
half the rows (memory freed first); at one row on a CUDA device the merge
moves to the CPU for the rest.  All of it is counted in the
:class:`MergeResult`, so the caller can journal it.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import msgspec
import torch

from shipslog.engine import FileEntry, decode_json_within
from shipslog.journal import read_limited

from ._errors import AdapterError, MergeOutOfMemoryError, NonFiniteError
from ._target_regex import MAX_MODULE_NAME, regex_refusal
from ._tensorfile import _show, load_state_dict

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_WEIGHTS_NAME",
    "DEFAULT_MERGE_BUDGET_BYTES",
    "PEFT_PREFIX",
    "LoraConfig",
    "MergeResult",
    "load_adapter",
    "merge_lora",
    "parse_adapter_config",
]

_log = logging.getLogger("shipslog.gpu.lora")

PEFT_PREFIX = "base_model.model."
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
DEFAULT_MERGE_BUDGET_BYTES = 256 << 20

_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<factor>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")
_UNSUPPORTED = ("lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector", "lora_E")

# Bounds on what an adapter config (untrusted bytes on disk) may hold.
_MAX_CONFIG_BYTES = 4 << 20
"""The largest adapter_config.json read (checked on the file size before reading)."""
_MAX_CONFIG_DEPTH = 32
"""The deepest JSON nesting accepted in an adapter config (PEFT's own nest 3 levels)."""
_REGEX_METACHARACTERS = frozenset("\\^$*+?{}[]|()")
"""Characters that make a rank_pattern/alpha_pattern key a regex: such keys are refused (they match by name only)."""
_MAX_RANK_VALUE = (1 << 63) - 1
"""The largest LoRA rank accepted (a tensor dimension)."""
def _compile_target_pattern(pattern: str, where: str) -> re.Pattern[str]:
    """Check (:func:`regex_refusal`) and compile a target_modules regex; :class:`AdapterError` names ``where`` and the pattern."""
    reason = regex_refusal(pattern)
    if reason is None:
        try:
            return re.compile(pattern)
        except (re.error, OverflowError, RecursionError) as exc:
            reason = f"an invalid regular expression ({exc})"
    raise AdapterError(
        where, "a regular expression that matches in bounded time (no backreference, lookaround or nested quantifier)",
        f"{_show(pattern, 600)}: {reason}",
        hint="list the module names instead (a list matches by exact name or '.'-suffix)",
    )


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class LoraConfig:
    """A validated LoRA adapter config (the fields of PEFT's adapter_config.json that a merge uses).

    Guarantee: ``r > 0``, ``lora_alpha`` finite, ``target_modules`` non-empty
    (a str one passed :func:`regex_refusal` and compiled), ``rank_pattern``
    and ``alpha_pattern`` keyed by plain module names; built only by
    :func:`parse_adapter_config`.
    """

    r: int
    lora_alpha: float
    target_modules: tuple[str, ...] | str
    use_rslora: bool = False
    fan_in_fan_out: bool = False
    rank_pattern: Mapping[str, int] = field(default_factory=dict)
    alpha_pattern: Mapping[str, float] = field(default_factory=dict)
    _target_regex: re.Pattern[str] | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, str):
            object.__setattr__(self, "_target_regex", _compile_target_pattern(self.target_modules, "target_modules"))

    @property
    def scale(self) -> float:
        """The scale of a module with the config's own r and alpha."""
        return _scale(self.lora_alpha, self.r, self.use_rslora)

    def targets(self, module: str) -> bool:
        """Whether ``module`` is named by ``target_modules`` (PEFT's rule: ``re.fullmatch`` when a str, else name or '.'-suffix).

        Guarantee: bounded time (the regex passed :func:`regex_refusal`); a
        module name longer than ``MAX_MODULE_NAME`` characters raises
        :class:`AdapterError` instead of being matched.
        """
        if len(module) > MAX_MODULE_NAME:
            raise AdapterError(
                f"module {_show(module, 120)}", f"a module name of at most {MAX_MODULE_NAME} characters",
                f"{len(module)} characters", hint="the adapter's tensor names are damaged or crafted",
            )
        if self._target_regex is not None:
            return self._target_regex.fullmatch(module) is not None
        return any(module == t or module.endswith(f".{t}") for t in self.target_modules)

    def rank_for(self, module: str) -> int:
        """The rank of ``module`` (the first ``rank_pattern`` key that is its name or a '.'-suffix of it)."""
        value = _pattern_value(self.rank_pattern, module)
        return int(value) if value is not None else self.r

    def scale_for(self, module: str) -> float:
        """The scale of ``module``: alpha/r, or alpha/sqrt(r) with rsLoRA, after the per-module patterns."""
        alpha = _pattern_value(self.alpha_pattern, module)
        return _scale(float(alpha) if alpha is not None else self.lora_alpha, self.rank_for(module), self.use_rslora)


def _scale(alpha: float, r: int, rslora: bool) -> float:
    return alpha / math.sqrt(r) if rslora else alpha / r


def _pattern_value(patterns: Mapping[str, Any], module: str) -> Any:
    """The value of the first key of ``patterns`` that is ``module`` or a '.'-suffix of it (plain strings, no regex).

    The same modules PEFT's ``(.*\\.)?(key)$`` match selects for a key that
    is a plain module name; :func:`parse_adapter_config` refuses keys holding
    regex metacharacters, so a key is never interpreted as a pattern.
    """
    for key, value in patterns.items():
        if module == key or module.endswith(f".{key}"):
            return value
    return None


def _is_finite_number(value: object) -> TypeGuard[int | float]:
    """A non-bool int or float that is finite as a float (an int too large for a float is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _is_rank(value: object) -> TypeGuard[int]:
    """A non-bool int in ``[1, _MAX_RANK_VALUE]``."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= _MAX_RANK_VALUE


def _check_pattern_keys(where: str, name: str, patterns: Mapping[Any, Any]) -> None:
    for key in patterns:
        if not isinstance(key, str) or not key or _REGEX_METACHARACTERS.intersection(key) or len(key) > MAX_MODULE_NAME:
            raise AdapterError(
                f"{where}: {name}", f"keys that are module names or '.'-suffixes of them, of at most {MAX_MODULE_NAME} characters",
                f"key {_show(key, 120)}",
                hint="regular expressions are not supported as rank_pattern/alpha_pattern keys; list the modules by name",
            )


def _read_config_file(path: str) -> dict[str, Any]:
    """Read and decode the adapter config at ``path``.

    Guarantee: returns a JSON object or raises :class:`AdapterError` naming
    the file: more than ``_MAX_CONFIG_BYTES`` (checked before reading), bytes
    that are not JSON, a nesting deeper than ``_MAX_CONFIG_DEPTH`` (checked
    iteratively; a nesting too deep for msgspec is its ``RecursionError``,
    converted), or a value other than an object.  Never ``RecursionError``,
    ``UnicodeDecodeError``, ``OSError`` or a msgspec error.
    """
    try:
        raw = read_limited(path, _MAX_CONFIG_BYTES)
    except FileNotFoundError:
        raise AdapterError(path, f"an {ADAPTER_CONFIG_NAME} file", "no such file", hint="an adapter folder in the PEFT layout holds adapter_config.json beside its weights") from None
    except OSError as exc:
        raise AdapterError(path, "a readable JSON file", f"{type(exc).__name__}: {exc.strerror or exc}") from None
    if raw is None:
        raise AdapterError(path, f"an adapter config of at most {_MAX_CONFIG_BYTES} bytes", "a larger file")
    try:
        loaded = decode_json_within(raw, _MAX_CONFIG_DEPTH)
    except msgspec.DecodeError as exc:
        raise AdapterError(path, f"a JSON object nested at most {_MAX_CONFIG_DEPTH} levels deep", f"bytes that do not parse ({exc})") from None
    if not isinstance(loaded, dict):
        raise AdapterError(path, "a JSON object", f"a JSON {type(loaded).__name__}")
    return loaded


def parse_adapter_config(config: Mapping[str, Any] | str | os.PathLike[str]) -> LoraConfig:
    """Validate a PEFT LoRA config (a mapping, or the path of an adapter_config.json).

    Guarantee: returns a :class:`LoraConfig` or raises :class:`AdapterError`
    naming the file (when a path was given), the field, what was expected and
    what was found; never another exception type.  A file is read with the
    bounds of :func:`_read_config_file`; a str ``target_modules`` must pass
    :func:`regex_refusal` and compile; ``rank_pattern``/``alpha_pattern``
    keys must be plain module names (no regex metacharacters), matched by
    name or '.'-suffix.
    """
    if isinstance(config, Mapping):
        return _parse_config(config, "adapter config")
    path = os.fspath(config)
    return _parse_config(_read_config_file(path), path)


def _parse_config(config: Mapping[str, Any], where: str) -> LoraConfig:
    """:func:`parse_adapter_config` of a mapping; errors name ``where`` (the file, or "adapter config")."""
    peft_type = config.get("peft_type", "LORA")
    if peft_type != "LORA":
        raise AdapterError(f"{where}: peft_type", "'LORA'", _show(peft_type), hint="only LoRA adapters can be merged here")
    if config.get("use_dora"):
        raise AdapterError(f"{where}: use_dora", "a plain LoRA adapter (use_dora false)", "use_dora true", hint="merge DoRA adapters with PEFT's merge_and_unload")
    r = config.get("r")
    if not _is_rank(r):
        raise AdapterError(f"{where}: r", f"an int > 0 (the LoRA rank, at most {_MAX_RANK_VALUE})", _show(r))
    if "lora_alpha" not in config:
        raise AdapterError(f"{where}: lora_alpha", "a number (the LoRA scaling alpha)", "no lora_alpha field", hint="add lora_alpha as used in training; guessing it would change the merged weights")
    alpha = config["lora_alpha"]
    if not _is_finite_number(alpha):
        raise AdapterError(f"{where}: lora_alpha", "a finite number", _show(alpha))
    targets = config.get("target_modules")
    if isinstance(targets, str):
        if not targets:
            raise AdapterError(f"{where}: target_modules", "a non-empty list of module names or a regex", "an empty string")
        _compile_target_pattern(targets, f"{where}: target_modules")
        target_modules: tuple[str, ...] | str = targets
    elif isinstance(targets, (list, tuple)) and targets and all(isinstance(t, str) and t for t in targets):
        target_modules = tuple(targets)
    else:
        raise AdapterError(f"{where}: target_modules", "a non-empty list of module names or a regex", _show(targets))
    flags: dict[str, bool] = {}
    for name in ("use_rslora", "fan_in_fan_out"):
        value = config.get(name, False)
        if not isinstance(value, bool):
            raise AdapterError(f"{where}: {name}", "true or false", _show(value))
        flags[name] = value
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    if not isinstance(rank_pattern, Mapping) or not all(_is_rank(v) for v in rank_pattern.values()):
        raise AdapterError(f"{where}: rank_pattern", "an object of module name -> int > 0", _show(rank_pattern))
    if not isinstance(alpha_pattern, Mapping) or not all(_is_finite_number(v) for v in alpha_pattern.values()):
        raise AdapterError(f"{where}: alpha_pattern", "an object of module name -> finite number", _show(alpha_pattern))
    _check_pattern_keys(where, "rank_pattern", rank_pattern)
    _check_pattern_keys(where, "alpha_pattern", alpha_pattern)
    return LoraConfig(
        r=r,
        lora_alpha=float(alpha),
        target_modules=target_modules,
        use_rslora=flags["use_rslora"],
        fan_in_fan_out=flags["fan_in_fan_out"],
        rank_pattern=dict(rank_pattern),
        alpha_pattern=dict(alpha_pattern),
    )


@dataclass(frozen=True)
class MergeResult:
    """The merged state and a report of how the merge ran.

    Guarantee: every tensor of ``state`` is finite; tensors the adapter does
    not touch are the base's own tensor objects.  ``scale`` is the config's
    scale, ``scales`` each merged module's; ``oom_retries`` counts chunks
    retried after an out-of-memory error; ``fell_back_to_cpu`` says whether
    the merge moved to the CPU; ``chunk_rows`` is the row count each module
    finished with; ``events`` describes each retry and fallback.
    """

    state: dict[str, torch.Tensor]
    scale: float
    scales: dict[str, float]
    merged_modules: tuple[str, ...]
    replaced: tuple[str, ...]
    oom_retries: int
    fell_back_to_cpu: bool
    chunk_rows: dict[str, int]
    chunks: int
    device: str
    events: tuple[str, ...]

    def report(self) -> dict[str, Any]:
        """Everything but the tensors, as JSON-able data (for the journal)."""
        return {
            "scale": self.scale,
            "scales": dict(self.scales),
            "merged_modules": list(self.merged_modules),
            "replaced": list(self.replaced),
            "oom_retries": self.oom_retries,
            "fell_back_to_cpu": self.fell_back_to_cpu,
            "chunk_rows": dict(self.chunk_rows),
            "chunks": self.chunks,
            "device": self.device,
            "events": list(self.events),
        }


def _chunk_matmul(w32: torch.Tensor, left32: torch.Tensor, right32: torch.Tensor, scale: float) -> torch.Tensor:
    """``w32 += scale * left32 @ right32`` in place (float32); returns ``w32``."""
    return w32.addmm_(left32, right32, alpha=scale)


def _finite_hint(chunk: torch.Tensor) -> torch.Tensor:
    """A 0-d bool tensor that is True when every value of ``chunk`` is certainly finite.

    The float32 (float64 for float64 chunks) sum of a chunk is NaN or infinite
    whenever one of its values is, and a single reduction is several times
    faster than ``torch.isfinite(chunk).all()``.  A False (which a sum that
    overflows with finite values can also give) is settled by the exact
    ``isfinite`` count over the whole tensor.  Stays on the chunk's device:
    no synchronization per chunk.
    """
    acc = torch.float64 if chunk.dtype == torch.float64 else torch.float32
    return torch.isfinite(chunk.sum(dtype=acc))


def _oom_types() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = []
    for owner, name in ((torch, "OutOfMemoryError"), (torch.cuda, "OutOfMemoryError")):
        candidate = getattr(owner, name, None)
        if isinstance(candidate, type) and issubclass(candidate, BaseException):
            found.append(candidate)
    return tuple(found)


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, _oom_types()):
        return True
    if isinstance(exc, (RuntimeError, MemoryError)):
        text = str(exc).lower()
        return "out of memory" in text or "can't allocate memory" in text or isinstance(exc, MemoryError)
    return False


@dataclass
class _Job:
    module: str
    weight_key: str
    weight: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    scale: float


class _Run:
    """The mutable state of one merge: device, budget, counters."""

    def __init__(self, budget: int, device: torch.device) -> None:
        self.budget = budget
        self.device = device
        self.oom_retries = 0
        self.fell_back = False
        self.chunks = 0
        self.events: list[str] = []

    def rows_for(self, per_row: int, fixed: int, total: int) -> int:
        return max(1, min(total, (self.budget - fixed) // per_row)) if total else 1

    def free(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _merge_module(job: _Job, fan_in_fan_out: bool, run: _Run) -> tuple[torch.Tensor, int]:
    """Merge one module in row chunks; return the merged tensor and the final rows per chunk."""
    weight = job.weight
    if fan_in_fan_out:
        left, right = job.a.t(), job.b.t()  # W is [in, out]: delta = (B @ A).T = A.T @ B.T
    else:
        left, right = job.b, job.a
    total, cols = weight.shape
    rank = left.shape[1]
    per_row = cols * (5 + weight.element_size()) + 4 * rank
    fixed = 4 * rank * cols
    rows = run.rows_for(per_row, fixed, total)
    out = torch.empty_like(weight)
    right32: torch.Tensor | None = None
    flags: list[torch.Tensor] = []
    start = 0
    while start < total:
        n = min(rows, total - start)
        dev = run.device
        direct = weight.dtype == torch.float32 and weight.device == dev
        w32: torch.Tensor | None = None
        left32: torch.Tensor | None = None
        failed: str | None = None
        try:
            if right32 is None or right32.device != dev:
                right32 = None
                right32 = right.to(dev, torch.float32, copy=True).contiguous()
            if direct:
                w32 = out[start : start + n]
                w32.copy_(weight[start : start + n])
            else:
                w32 = weight[start : start + n].to(dev, torch.float32, copy=True)
            left32 = left[start : start + n].to(dev, torch.float32)
            w32 = _chunk_matmul(w32, left32, right32, job.scale)
            if not direct:
                out[start : start + n].copy_(w32)
            flags.append(_finite_hint(out[start : start + n]))
        except Exception as exc:
            if not _is_oom(exc):
                raise
            failed = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        if failed is None:
            run.chunks += 1
            start += n
            continue
        w32 = left32 = None
        run.free()
        run.oom_retries += 1
        if n > 1:
            rows = max(1, n // 2)
            run.budget = fixed + rows * per_row
            run.events.append(f"{job.module}: out of memory on {dev} with {n} rows ({failed}); retrying with {rows} rows")
            _log.warning("merge of %s ran out of memory on %s with %d rows; retrying with %d", job.module, dev, n, rows)
        elif dev.type != "cpu":
            run.device = torch.device("cpu")
            run.fell_back = True
            right32 = None
            rows = run.rows_for(per_row, fixed, total)
            run.events.append(f"{job.module}: out of memory on {dev} with 1 row ({failed}); continuing on the CPU with {rows} rows")
            _log.warning("merge of %s ran out of memory on %s with 1 row; falling back to the CPU", job.module, dev)
        else:
            run.events.append(f"{job.module}: out of memory on the CPU with 1 row ({failed}); giving up")
            raise MergeOutOfMemoryError(job.module, failed)
    if flags and not bool(torch.stack([f.to("cpu") for f in flags]).all()):
        count = int((~torch.isfinite(out)).sum())
        if count:
            raise NonFiniteError(job.weight_key, count, f"merging module {job.module!r} with scale {job.scale:g}")
    return out, rows


def _module_name(key: str) -> str:
    return key.removeprefix(PEFT_PREFIX)


def merge_lora(
    base_state: Mapping[str, torch.Tensor],
    adapter_state: Mapping[str, torch.Tensor],
    adapter_config: Mapping[str, Any] | str | os.PathLike[str],
    *,
    memory_budget_bytes: int = DEFAULT_MERGE_BUDGET_BYTES,
    device: str | torch.device | None = None,
) -> MergeResult:
    """Merge a LoRA adapter into ``base_state``; return the merged state and a report.

    Guarantee: nothing is written and nothing is returned unless every check
    passed.  The config and every adapter tensor are validated (pairs, ranks,
    shapes, target modules, base weights) before any arithmetic, raising
    :class:`AdapterError`; each merged tensor is ``W + scale * (B @ A)``
    computed in float32 in row chunks whose temporaries fit
    ``memory_budget_bytes`` (an estimate), cast back to ``W``'s dtype and
    device, and checked finite (:class:`NonFiniteError` names the tensor).
    ``device`` is where the arithmetic runs (default: each weight's own
    device); out-of-memory errors halve the chunk, then fall back to the CPU
    (see :class:`MergeResult`).  ``base_state`` is not modified.
    """
    config = parse_adapter_config(adapter_config)
    if memory_budget_bytes <= 0:
        raise AdapterError("memory_budget_bytes", "a positive number of bytes", str(memory_budget_bytes))

    factors: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    replacements: dict[str, tuple[str, torch.Tensor]] = {}
    adapter_names: set[str] = set()
    for key, tensor in adapter_state.items():
        if not isinstance(key, str) or not isinstance(tensor, torch.Tensor):
            raise AdapterError(f"adapter entry {key!r}", "a str name mapped to a tensor", f"{type(key).__name__} -> {type(tensor).__name__}")
        if any(f".{marker}" in key for marker in _UNSUPPORTED):
            raise AdapterError(f"adapter tensor {key!r}", "plain LoRA factors (lora_A / lora_B)", "a tensor of an unsupported LoRA variant", hint="merge this adapter with PEFT's merge_and_unload")
        match = _LORA_KEY.match(key)
        if match is None:
            base_key = _module_name(key)
            if base_key not in base_state:
                raise AdapterError(f"adapter tensor {key!r}", f"a lora_A/lora_B factor or a replacement for base tensor {base_key!r}", "neither", hint="this merge handles plain LoRA adapters only; nothing was merged")
            replacements[base_key] = (key, tensor)
            continue
        if match["adapter"] is not None:
            adapter_names.add(match["adapter"])
        module = _module_name(match["module"])
        factors.setdefault(module, {})[match["factor"]] = (key, tensor)
    if len(adapter_names) > 1:
        raise AdapterError("adapter state", "the weights of one adapter", f"several adapters: {sorted(adapter_names)}", hint="pass one adapter's weights at a time")
    if not factors:
        raise AdapterError("adapter state", "at least one lora_A/lora_B pair", "none", hint="check that this is a LoRA adapter's weights")

    jobs: list[_Job] = []
    for module, pair in factors.items():
        if "A" not in pair or "B" not in pair:
            have, lack = ("lora_A", "lora_B") if "A" in pair else ("lora_B", "lora_A")
            raise AdapterError(f"module {module!r}", "both lora_A and lora_B", f"{have} ({next(iter(pair.values()))[0]!r}) without {lack}", hint="the adapter weights are incomplete; restore them from a good copy")
        if not config.targets(module):
            raise AdapterError(f"module {module!r}", f"a module named by target_modules {config.target_modules!r}", "LoRA weights for a module the config does not target", hint="the config does not belong to these weights")
        a = pair["A"][1]
        b = pair["B"][1]
        weight_key = f"{module}.weight"
        weight = base_state.get(weight_key)
        if weight is None:
            raise AdapterError(f"module {module!r}", f"a base weight {weight_key!r}", "no such tensor in the base state", hint="the adapter was trained for a different base model, or the base state uses other names")
        if not weight.is_floating_point() or weight.ndim != 2:
            raise AdapterError(f"module {module!r}", "a 2-D floating-point base weight", f"{weight_key} of dtype {weight.dtype} and shape {list(weight.shape)}")
        r = config.rank_for(module)
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != r or b.shape[1] != r:
            raise AdapterError(f"module {module!r}", f"lora_A of shape [{r}, in] and lora_B of shape [out, {r}] (r={r})", f"lora_A {list(a.shape)} and lora_B {list(b.shape)}")
        if not a.is_floating_point() or not b.is_floating_point():
            raise AdapterError(f"module {module!r}", "floating-point LoRA factors", f"lora_A {a.dtype} and lora_B {b.dtype}")
        expected = [a.shape[1], b.shape[0]] if config.fan_in_fan_out else [b.shape[0], a.shape[1]]
        if list(weight.shape) != expected:
            layout = "[in, out] (fan_in_fan_out)" if config.fan_in_fan_out else "[out, in]"
            raise AdapterError(f"module {module!r}", f"base weight {weight_key} of shape {expected} {layout} to fit lora_B {list(b.shape)} @ lora_A {list(a.shape)}", f"shape {list(weight.shape)}")
        jobs.append(_Job(module, weight_key, weight.detach(), a.detach(), b.detach(), config.scale_for(module)))
    for base_key, (key, tensor) in replacements.items():
        if tensor.shape != base_state[base_key].shape:
            raise AdapterError(f"adapter tensor {key!r}", f"shape {list(base_state[base_key].shape)} of base tensor {base_key!r}", f"shape {list(tensor.shape)}")
        if base_key in {job.weight_key for job in jobs}:
            raise AdapterError(f"adapter tensor {key!r}", "either LoRA factors or a replacement for a base tensor", f"both for {base_key!r}")
    untargeted = [t for t in config.target_modules if not any(m == t or m.endswith(f".{t}") for m in factors)] if not isinstance(config.target_modules, str) else []
    if untargeted:
        _log.warning("target_modules %s match no LoRA weights in the adapter", untargeted)

    start_device = torch.device(device) if device is not None else None
    run = _Run(memory_budget_bytes, start_device or (jobs[0].weight.device if jobs else torch.device("cpu")))
    merged: dict[str, torch.Tensor] = {}
    chunk_rows: dict[str, int] = {}
    with torch.no_grad():
        for job in jobs:
            if start_device is None and not run.fell_back:
                run.device = job.weight.device
            merged[job.weight_key], chunk_rows[job.module] = _merge_module(job, config.fan_in_fan_out, run)
        replaced: dict[str, torch.Tensor] = {}
        for base_key, (key, tensor) in replacements.items():
            base = base_state[base_key]
            new = tensor.detach().to(base.device, base.dtype, copy=True)
            if new.is_floating_point() and not bool(torch.isfinite(new).all()):
                raise NonFiniteError(base_key, int((~torch.isfinite(new)).sum()), f"replacement from adapter tensor {key!r}")
            replaced[base_key] = new

    state: dict[str, torch.Tensor] = {}
    for key, tensor in base_state.items():
        state[key] = merged.get(key, replaced.get(key, tensor))
    _log.info(
        "merged LoRA into %d modules (scale %g, %d chunks, %d OOM retries%s)",
        len(merged), config.scale, run.chunks, run.oom_retries, ", fell back to CPU" if run.fell_back else "",
    )
    return MergeResult(
        state=state,
        scale=config.scale,
        scales={job.module: job.scale for job in jobs},
        merged_modules=tuple(job.module for job in jobs),
        replaced=tuple(replaced),
        oom_retries=run.oom_retries,
        fell_back_to_cpu=run.fell_back,
        chunk_rows=chunk_rows,
        chunks=run.chunks,
        device=str(start_device or (jobs[0].weight.device if jobs else "cpu")),
        events=tuple(run.events),
    )


def load_adapter(
    folder: str | os.PathLike[str],
    *,
    entries: Sequence[FileEntry] | None = None,
    device: str | torch.device = "cpu",
    allow_pickle: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read an adapter folder in the PEFT layout: ``adapter_config.json`` + ``adapter_model.safetensors``.

    Guarantee: returns ``(adapter_state, config)`` only when the config
    validates (:func:`parse_adapter_config`, else :class:`AdapterError`) and
    the weights load (with ``entries``, every listed file verified first, as
    :func:`load_state_dict` does).  ``adapter_model.bin`` is read only with
    ``allow_pickle=True`` and ``torch.load(weights_only=True)``.
    """
    folder = os.fspath(folder)
    config_path = os.path.join(folder, ADAPTER_CONFIG_NAME)
    if entries is not None and ADAPTER_CONFIG_NAME not in {e.path for e in entries}:
        raise AdapterError(config_path, "a config listed in the manifest entries", "entries that do not list it")
    if not os.path.isfile(config_path):
        raise AdapterError(config_path, f"an {ADAPTER_CONFIG_NAME} file", "no such file", hint="an adapter folder in the PEFT layout holds adapter_config.json beside adapter_model.safetensors")
    state = load_state_dict(folder, entries=entries, device=device, allow_pickle=allow_pickle, prefix="adapter_model")
    config = _read_config_file(config_path)
    _parse_config(config, config_path)
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise AdapterError(os.path.join(folder, ADAPTER_WEIGHTS_NAME), "a flat dict of named tensors", f"entry {key!r} of type {type(value).__name__}")
    return state, config
