"""LoRA merge: arithmetic against a float64 reference, chunking, OOM retries, validation."""

from __future__ import annotations

import contextlib
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

import msgspec

from shipslog.gpu import (
    AdapterError,
    MergeOutOfMemoryError,
    NonFiniteError,
    PickleRefusedError,
    load_adapter,
    merge_lora,
    parse_adapter_config,
    save_tensor_file,
)

OUT, IN, R = 48, 32, 4
CONFIG_LIMIT = 4 << 20
"""The documented bound on an adapter_config.json (checked on the file size before reading)."""


def _patch_chunk_matmul(monkeypatch: pytest.MonkeyPatch, fake: Any) -> None:
    """Route the merge's in-place chunk product (``Tensor.addmm_``, torch's own) through ``fake(w, left, right, scale)``."""

    def addmm_(self: Any, mat1: Any, mat2: Any, *, beta: Any = 1, alpha: Any = 1) -> Any:
        assert beta == 1
        return fake(self, mat1, mat2, alpha)

    monkeypatch.setattr(torch.Tensor, "addmm_", addmm_)


def _real_chunk_matmul() -> Any:
    real = torch.Tensor.addmm_
    return lambda w32, left32, right32, scale: real(w32, left32, right32, alpha=scale)


def _model(dtype: Any = torch.float32, *, layers: int = 2, rank: int = R, seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    torch.manual_seed(seed)
    base: dict[str, Any] = {}
    adapter: dict[str, Any] = {}
    for i in range(layers):
        for proj in ("q_proj", "v_proj"):
            module = f"model.layers.{i}.attn.{proj}"
            base[f"{module}.weight"] = torch.randn(OUT, IN).to(dtype)
            base[f"{module}.bias"] = torch.randn(OUT).to(dtype)
            adapter[f"base_model.model.{module}.lora_A.weight"] = torch.randn(rank, IN) * 0.1
            adapter[f"base_model.model.{module}.lora_B.weight"] = torch.randn(OUT, rank) * 0.1
    base["model.norm.weight"] = torch.ones(IN).to(dtype)
    return base, adapter


def _config(**over: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"peft_type": "LORA", "r": R, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    config.update(over)
    return config


def _reference(base: dict[str, Any], adapter: dict[str, Any], scale: float) -> dict[str, Any]:
    out = dict(base)
    for key, a in adapter.items():
        if not key.endswith("lora_A.weight"):
            continue
        module = key[len("base_model.model.") : -len(".lora_A.weight")]
        b = adapter[key.replace("lora_A", "lora_B")]
        w = base[f"{module}.weight"]
        out[f"{module}.weight"] = (w.double() + scale * (b.double() @ a.double())).to(w.dtype)
    return out


@pytest.mark.parametrize(
    ("dtype", "atol", "rtol"),
    [(torch.float32, 1e-5, 1e-5), (torch.float16, 4e-3, 2e-3), (torch.bfloat16, 3e-2, 1e-2)],
)
def test_merge_matches_float64_reference(dtype: Any, atol: float, rtol: float) -> None:
    base, adapter = _model(dtype)
    result = merge_lora(base, adapter, _config())
    assert result.scale == 2.0
    ref = _reference(base, adapter, 2.0)
    assert list(result.state) == list(base)
    for key, tensor in result.state.items():
        assert tensor.dtype == dtype and tensor.shape == base[key].shape
        torch.testing.assert_close(tensor.double(), ref[key].double(), atol=atol, rtol=rtol)
    assert sorted(result.merged_modules) == sorted(
        f"model.layers.{i}.attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")
    )


def test_untargeted_tensors_are_the_base_objects_and_base_is_untouched() -> None:
    base, adapter = _model()
    before = {k: v.clone() for k, v in base.items()}
    result = merge_lora(base, adapter, _config())
    assert result.state["model.norm.weight"] is base["model.norm.weight"]
    assert result.state["model.layers.0.attn.q_proj.bias"] is base["model.layers.0.attn.q_proj.bias"]
    for key, tensor in base.items():
        assert torch.equal(tensor, before[key])
    assert not torch.equal(result.state["model.layers.0.attn.q_proj.weight"], base["model.layers.0.attn.q_proj.weight"])


def test_rslora_scale_is_alpha_over_sqrt_r() -> None:
    base, adapter = _model()
    result = merge_lora(base, adapter, _config(use_rslora=True))
    assert result.scale == pytest.approx(8 / math.sqrt(R))
    ref = _reference(base, adapter, 8 / math.sqrt(R))
    torch.testing.assert_close(result.state["model.layers.1.attn.v_proj.weight"], ref["model.layers.1.attn.v_proj.weight"], atol=1e-5, rtol=1e-5)


def test_rank_and_alpha_patterns_override_per_module() -> None:
    base, adapter = _model()
    result = merge_lora(base, adapter, _config(alpha_pattern={"v_proj": 2}))
    assert result.scales["model.layers.0.attn.q_proj"] == 2.0
    assert result.scales["model.layers.0.attn.v_proj"] == 0.5


def test_tiny_budget_merges_in_several_chunks_with_the_same_result() -> None:
    base, adapter = _model()
    whole = merge_lora(base, adapter, _config())
    # A: 4*32*4 = 512 bytes fixed; one row costs 32*(5+4) + 16 = 304 bytes -> 5 rows per chunk.
    chunked = merge_lora(base, adapter, _config(), memory_budget_bytes=512 + 5 * 304)
    assert set(chunked.chunk_rows.values()) == {5}
    assert chunked.chunks == 4 * math.ceil(OUT / 5)
    assert whole.chunks == 4
    for key in base:
        torch.testing.assert_close(chunked.state[key], whole.state[key], atol=1e-6, rtol=1e-6)


def test_simulated_oom_halves_the_chunk_and_still_merges_right(monkeypatch: pytest.MonkeyPatch) -> None:
    base, adapter = _model()
    real = _real_chunk_matmul()
    calls = {"n": 0}

    def flaky(w32: Any, left32: Any, right32: Any, scale: float) -> Any:
        calls["n"] += 1
        if calls["n"] <= 3:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(w32, left32, right32, scale)

    _patch_chunk_matmul(monkeypatch, flaky)
    result = merge_lora(base, adapter, _config())
    assert result.oom_retries == 3
    assert not result.fell_back_to_cpu
    assert result.chunk_rows["model.layers.0.attn.q_proj"] == OUT // 8
    assert len(result.events) == 3 and "retrying with 24 rows" in result.events[0]
    ref = _reference(base, adapter, 2.0)
    for key in base:
        torch.testing.assert_close(result.state[key], ref[key], atol=1e-5, rtol=1e-5)


def test_torch_oom_error_type_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    base, adapter = _model(layers=1)
    real = _real_chunk_matmul()
    calls = {"n": 0}

    def flaky(w32: Any, left32: Any, right32: Any, scale: float) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise oom("no memory left")
        return real(w32, left32, right32, scale)

    _patch_chunk_matmul(monkeypatch, flaky)
    assert merge_lora(base, adapter, _config()).oom_retries == 1


def test_oom_at_one_row_on_cpu_gives_up_with_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    base, adapter = _model(layers=1)

    def always(w32: Any, left32: Any, right32: Any, scale: float) -> Any:
        raise RuntimeError("out of memory")

    _patch_chunk_matmul(monkeypatch, always)
    with pytest.raises(MergeOutOfMemoryError, match=r"model\.layers\.0\.attn"):
        merge_lora(base, adapter, _config())


def test_other_errors_are_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    base, adapter = _model(layers=1)

    def broken(w32: Any, left32: Any, right32: Any, scale: float) -> Any:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    _patch_chunk_matmul(monkeypatch, broken)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        merge_lora(base, adapter, _config())


def test_nan_in_adapter_raises_and_returns_nothing() -> None:
    base, adapter = _model()
    adapter["base_model.model.model.layers.1.attn.q_proj.lora_B.weight"][3, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"model\.layers\.1\.attn\.q_proj\.weight") as info:
        merge_lora(base, adapter, _config())
    assert info.value.count == IN


def test_float16_overflow_is_caught() -> None:
    base, adapter = _model(torch.float16, layers=1)
    adapter["base_model.model.model.layers.0.attn.v_proj.lora_B.weight"][0, :] = 1e5
    with pytest.raises(NonFiniteError, match=r"v_proj\.weight"):
        merge_lora(base, adapter, _config())


def test_fan_in_fan_out_merges_the_transpose() -> None:
    torch.manual_seed(3)
    base = {"h.0.attn.c_attn.weight": torch.randn(IN, OUT)}
    a, b = torch.randn(R, IN), torch.randn(OUT, R)
    adapter = {"base_model.model.h.0.attn.c_attn.lora_A.weight": a, "base_model.model.h.0.attn.c_attn.lora_B.weight": b}
    result = merge_lora(base, adapter, _config(target_modules=["c_attn"], fan_in_fan_out=True), memory_budget_bytes=2048)
    expected = (base["h.0.attn.c_attn.weight"].double() + 2.0 * (b.double() @ a.double()).t()).float()
    torch.testing.assert_close(result.state["h.0.attn.c_attn.weight"], expected, atol=1e-5, rtol=1e-5)


def test_in_memory_peft_names_and_regex_targets() -> None:
    base, adapter = _model(layers=1)
    renamed = {k[len("base_model.model.") :].replace(".weight", ".default.weight"): v for k, v in adapter.items()}
    result = merge_lora(base, renamed, _config(target_modules=r".*\.(q_proj|v_proj)"))
    ref = _reference(base, adapter, 2.0)
    torch.testing.assert_close(result.state["model.layers.0.attn.q_proj.weight"], ref["model.layers.0.attn.q_proj.weight"])


def test_trained_bias_replaces_the_base_bias() -> None:
    base, adapter = _model(layers=1)
    adapter["base_model.model.model.layers.0.attn.q_proj.bias"] = torch.full((OUT,), 0.5)
    result = merge_lora(base, adapter, _config(bias="lora_only"))
    assert result.replaced == ("model.layers.0.attn.q_proj.bias",)
    assert torch.equal(result.state["model.layers.0.attn.q_proj.bias"], torch.full((OUT,), 0.5))


def test_report_is_json_for_the_journal() -> None:
    base, adapter = _model(layers=1)
    report = merge_lora(base, adapter, _config()).report()
    decoded = msgspec.json.decode(msgspec.json.encode(report))
    assert decoded["oom_retries"] == 0 and decoded["fell_back_to_cpu"] is False and decoded["scale"] == 2.0


# --------------------------------------------------------------------- validation


@pytest.mark.parametrize("r", [0, -2, 2.5, True])
def test_bad_rank_is_refused(r: Any) -> None:
    base, adapter = _model(layers=1)
    with pytest.raises(AdapterError, match=r"r: expected an int > 0"):
        merge_lora(base, adapter, _config(r=r))


def test_missing_lora_alpha_is_refused() -> None:
    base, adapter = _model(layers=1)
    config = _config()
    del config["lora_alpha"]
    with pytest.raises(AdapterError, match="no lora_alpha field"):
        merge_lora(base, adapter, config)


@pytest.mark.parametrize("targets", [None, [], ""])
def test_missing_target_modules_is_refused(targets: Any) -> None:
    base, adapter = _model(layers=1)
    with pytest.raises(AdapterError, match="target_modules"):
        merge_lora(base, adapter, _config(target_modules=targets))


def test_lora_a_without_b_is_refused() -> None:
    base, adapter = _model(layers=1)
    del adapter["base_model.model.model.layers.0.attn.v_proj.lora_B.weight"]
    with pytest.raises(AdapterError, match=r"module 'model.layers.0.attn.v_proj'.*lora_A .* without lora_B"):
        merge_lora(base, adapter, _config())


def test_lora_b_without_a_is_refused() -> None:
    base, adapter = _model(layers=1)
    del adapter["base_model.model.model.layers.0.attn.q_proj.lora_A.weight"]
    with pytest.raises(AdapterError, match=r"lora_B .* without lora_A"):
        merge_lora(base, adapter, _config())


def test_target_without_base_weight_is_refused() -> None:
    base, adapter = _model(layers=1)
    del base["model.layers.0.attn.q_proj.weight"]
    with pytest.raises(AdapterError, match=r"base weight 'model.layers.0.attn.q_proj.weight'.*no such tensor"):
        merge_lora(base, adapter, _config())


def test_shape_mismatch_names_module_and_both_shapes() -> None:
    base, adapter = _model(layers=1)
    base["model.layers.0.attn.q_proj.weight"] = torch.randn(OUT, IN + 1)
    with pytest.raises(AdapterError, match=r"q_proj.*\[48, 32\].*shape \[48, 33\]"):
        merge_lora(base, adapter, _config())


def test_rank_that_disagrees_with_config_is_refused() -> None:
    base, adapter = _model(layers=1, rank=3)
    with pytest.raises(AdapterError, match=r"r=4.*lora_A \[3, 32\]"):
        merge_lora(base, adapter, _config())


def test_module_outside_target_modules_is_refused() -> None:
    base, adapter = _model(layers=1)
    with pytest.raises(AdapterError, match="does not target"):
        merge_lora(base, adapter, _config(target_modules=["q_proj"]))


def test_dora_is_refused() -> None:
    base, adapter = _model(layers=1)
    with pytest.raises(AdapterError, match="use_dora"):
        merge_lora(base, adapter, _config(use_dora=True))


def test_unknown_adapter_tensor_is_refused_not_dropped() -> None:
    base, adapter = _model(layers=1)
    adapter["base_model.model.score.modules_to_save.default.weight"] = torch.ones(2, 2)
    with pytest.raises(AdapterError, match=r"score\.modules_to_save"):
        merge_lora(base, adapter, _config())


# --------------------------------------------------------------------- adapter folders


def _adapter_folder(tmp_path: Path, config: dict[str, Any]) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    base, adapter = _model(layers=1)
    folder = tmp_path / "adapter"
    folder.mkdir()
    save_tensor_file(folder / "adapter_model.safetensors", adapter)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder, base, adapter


def test_load_adapter_reads_the_peft_layout_and_merges(tmp_path: Path) -> None:
    folder, base, adapter = _adapter_folder(tmp_path, _config())
    state, config = load_adapter(folder)
    assert config["r"] == R and list(state) == list(adapter)
    result = merge_lora(base, state, folder / "adapter_config.json")
    ref = _reference(base, adapter, 2.0)
    torch.testing.assert_close(result.state["model.layers.0.attn.q_proj.weight"], ref["model.layers.0.attn.q_proj.weight"])


def test_load_adapter_without_config_is_refused(tmp_path: Path) -> None:
    folder, _base, _adapter = _adapter_folder(tmp_path, _config())
    (folder / "adapter_config.json").unlink()
    with pytest.raises(AdapterError, match=r"adapter_config\.json.*no such file"):
        load_adapter(folder)


def test_load_adapter_with_bad_config_is_refused(tmp_path: Path) -> None:
    folder, _base, _adapter = _adapter_folder(tmp_path, _config(r=0))
    with pytest.raises(AdapterError, match="r: expected"):
        load_adapter(folder)


def test_load_adapter_refuses_pickled_weights(tmp_path: Path) -> None:
    folder, _base, adapter = _adapter_folder(tmp_path, _config())
    (folder / "adapter_model.safetensors").unlink()
    torch.save(adapter, folder / "adapter_model.bin")
    with pytest.raises(PickleRefusedError, match=r"adapter_model\.bin"):
        load_adapter(folder)


def test_config_path_that_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "adapter_config.json"
    path.write_text("{r: 4")
    base, adapter = _model(layers=1)
    with pytest.raises(AdapterError, match="do not parse"):
        merge_lora(base, adapter, path)


# --------------------------------------------------------------------- hostile configs


def _config_file(tmp_path: Path, config: Any) -> Path:
    path = tmp_path / "adapter_config.json"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("pattern", ["(q_proj", r".*\.(q|v", "[q_proj", "q_proj)", r"\q", "a{2,1}", "*q"])
def test_invalid_target_modules_regex_is_an_adapter_error(tmp_path: Path, pattern: str) -> None:
    path = _config_file(tmp_path, _config(target_modules=pattern))
    with pytest.raises(AdapterError) as caught:
        parse_adapter_config(path)
    message = str(caught.value)
    assert f"{path}: target_modules" in message and repr(pattern) in message


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        (r"(a+)+$", "holds a quantifier or an alternation"),
        (r"(a|aa)*b", "holds a quantifier or an alternation"),
        (r"(\w+\s?)+$", "holds a quantifier or an alternation"),
        (r"^(([a-z])+.)+[A-Z]([a-z])+$", "holds a quantifier or an alternation"),
        (r"(.*\.)*q_proj", "holds a quantifier or an alternation"),
        ("a?" * 30 + "a" * 30, "backtracking"),
        (r".*a.*a.*a", "backtracking"),
        ("x*" * 9, "9 unbounded quantifiers"),
        (r"(\w)\1", "backreference"),
        (r"(?P<m>\w)(?P=m)", "backreference"),
        (r"(a)?(?(1)b|c)", "conditional"),
        (r"^(?!.*vision).*q_proj", "lookaround"),
        (r".*(?<=q)_proj", "lookaround"),
        (r"a{0,99999}", "repetition count above"),
        ("q" * 513, "more than 512"),
    ],
)
def test_catastrophic_target_modules_regex_is_refused(tmp_path: Path, pattern: str, reason: str) -> None:
    path = _config_file(tmp_path, _config(target_modules=pattern))
    with pytest.raises(AdapterError, match="target_modules") as caught:
        parse_adapter_config(path)
    assert str(path) in str(caught.value) and reason in str(caught.value)


@pytest.mark.parametrize(
    ("pattern", "module"),
    [
        (r".*\.(q_proj|v_proj)", "model.layers.0.self_attn.q_proj"),
        (r".*\.(q_proj|v_proj)", "model.layers.0.self_attn.k_proj"),
        (r".*\.(q_proj|v_proj)", "q_proj"),
        (r"model\.layers\.\d+\.self_attn\.(q|k|v)_proj", "model.layers.12.self_attn.k_proj"),
        (r"model\.layers\.\d+\.self_attn\.(q|k|v)_proj", "model.layers.x.self_attn.k_proj"),
        (r"model\.layers\.\d+\.self_attn\.(q|k|v)_proj", "model.layers.12.self_attn.k_proj.extra"),
        (r".*decoder.*(SelfAttention|EncDecAttention).*(q|v)$", "decoder.block.0.layer.0.SelfAttention.q"),
        (r".*(q_proj|k_proj|v_proj|o_proj).*", "model.layers.3.self_attn.o_proj"),
        (r"^model\.layers\.(\d|1\d)\.mlp\.(gate|up|down)_proj$", "model.layers.17.mlp.up_proj"),
        (r"(?i).*Q_PROJ", "layers.0.q_proj"),
        (r"[^.]+\.q_proj", "attn.q_proj"),
    ],
)
def test_normal_peft_patterns_are_accepted_and_match_as_re_fullmatch(pattern: str, module: str) -> None:
    config = parse_adapter_config(_config(target_modules=pattern))  # a refused pattern is an AdapterError
    assert config.target_modules == pattern
    assert config.targets(module) == (re.fullmatch(pattern, module) is not None)


def test_regex_refusal_never_raises_on_odd_syntax() -> None:
    for pattern in ["", "(", ")", "[", "]", "\\", "{", "}", "{1}", "a{", "a{1", "a{,}", "(?", "(?P", "(?P<", "(?P<1>a)", "(?#", "(?i", "(?-", "[]", "[^]", "[a-\\", r"\N", r"\N{", r"\x4", r"\0", "a**", "a*?+"]:
        with contextlib.suppress(AdapterError):  # refused or accepted; any other exception fails the test
            parse_adapter_config(_config(target_modules=pattern))


def test_overlong_module_name_is_an_adapter_error() -> None:
    config = parse_adapter_config(_config(target_modules=r".*\.(q_proj|v_proj)"))
    with pytest.raises(AdapterError, match="a module name of at most 1000 characters, found 1001 characters"):
        config.targets("m" * 994 + ".q_proj")
    assert config.targets("m" * 993 + ".q_proj")


@pytest.mark.parametrize("key", [".*", "q_proj|v_proj", "(q)", "layers\\.0", "^model"])
def test_rank_pattern_key_from_disk_is_never_a_regex(tmp_path: Path, key: str) -> None:
    path = _config_file(tmp_path, _config(rank_pattern={key: 8}))
    with pytest.raises(AdapterError, match=r"adapter_config\.json: rank_pattern.*module names or '\.'-suffixes"):
        parse_adapter_config(path)
    path = _config_file(tmp_path, _config(alpha_pattern={key: 8}))
    with pytest.raises(AdapterError, match=r"adapter_config\.json: alpha_pattern"):
        parse_adapter_config(path)


def test_pattern_keys_match_by_name_or_dot_suffix_only() -> None:
    config = parse_adapter_config(_config(alpha_pattern={"layers.1.attn.v_proj": 2, "attn.q_proj": 4}))
    assert config.scale_for("model.layers.1.attn.v_proj") == 0.5
    assert config.scale_for("model.layers.11.attn.v_proj") == 2.0
    assert config.scale_for("model.layersX1.attn.v_proj") == 2.0
    assert config.scale_for("model.layers.0.attn.q_proj") == 1.0
    assert config.scale_for("model.layers.0.xattn.q_proj") == 2.0


def test_adapter_config_nested_deeply_is_an_adapter_error(tmp_path: Path) -> None:
    path = tmp_path / "adapter_config.json"
    path.write_bytes(b'{"r": 4, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    with pytest.raises(AdapterError, match=r"adapter_config\.json: expected a JSON object nested at most 32 levels deep"):
        parse_adapter_config(path)
    path.write_bytes(b'{"r": 4, "x": ' + b"[" * 40 + b"]" * 40 + b"}")
    with pytest.raises(AdapterError, match=r"adapter_config\.json.*nests more than 32 levels deep"):
        parse_adapter_config(path)


def test_adapter_config_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    path = _config_file(tmp_path, _config())
    with open(path, "ab") as f:  # valid JSON padded with spaces to one byte over the limit
        f.write(b" " * (CONFIG_LIMIT + 1 - path.stat().st_size))
    with pytest.raises(AdapterError, match=rf"adapter_config\.json: expected an adapter config of at most {CONFIG_LIMIT} bytes"):
        parse_adapter_config(path)
    with open(path, "r+b") as f:  # at the limit it is read
        f.truncate(CONFIG_LIMIT)
    assert parse_adapter_config(path).r == R


@pytest.mark.parametrize("raw", [b'{"r": "\xff"}', b'{"r": 1' + b"0" * 5000 + b"}", b"[1, 2]", b"NaN", b""])
def test_adapter_config_that_is_not_a_json_object_is_an_adapter_error(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "adapter_config.json"
    path.write_bytes(raw)
    with pytest.raises(AdapterError, match=r"adapter_config\.json: expected a JSON object"):
        parse_adapter_config(path)


@pytest.mark.parametrize(("field", "value"), [("lora_alpha", 10**400), ("r", 2**64), ("rank_pattern", {"q_proj": 2**64}), ("alpha_pattern", {"q_proj": 10**400})])
def test_numbers_out_of_range_are_adapter_errors(tmp_path: Path, field: str, value: Any) -> None:
    path = _config_file(tmp_path, _config(**{field: value}))
    with pytest.raises(AdapterError, match=rf"adapter_config\.json: {field}"):
        parse_adapter_config(path)


def test_load_adapter_with_hostile_config_is_an_adapter_error(tmp_path: Path) -> None:
    folder, _base, _adapter = _adapter_folder(tmp_path, _config(target_modules="(a+)+$"))
    with pytest.raises(AdapterError, match=r"adapter_config\.json: target_modules"):
        load_adapter(folder)


@pytest.mark.cuda
def test_cuda_merge_matches_reference() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    base, adapter = _model(torch.bfloat16)
    cuda_base = {k: v.cuda() for k, v in base.items()}
    result = merge_lora(cuda_base, adapter, _config(), memory_budget_bytes=4096)
    ref = _reference(base, adapter, 2.0)
    for key, tensor in result.state.items():
        assert tensor.device.type == "cuda"
        torch.testing.assert_close(tensor.cpu().double(), ref[key].double(), atol=3e-2, rtol=1e-2)


@pytest.mark.cuda
def test_cpu_base_merged_on_cuda_stays_on_cpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    base, adapter = _model()
    result = merge_lora(base, adapter, _config(), device="cuda")
    ref = _reference(base, adapter, 2.0)
    for key, tensor in result.state.items():
        assert tensor.device.type == "cpu"
        torch.testing.assert_close(tensor, ref[key], atol=1e-4, rtol=1e-4)
