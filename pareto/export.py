"""Export a tracked run's front as standard PEFT LoRA adapters on one base model, ready for vLLM multi-LoRA.

    pareto export RUN --out DIR        ->  DIR/base/            the base model (save_pretrained)
                                           DIR/adapters/<name>/ one plain LoRA adapter per front point
                                           DIR/manifest.json    adapter name -> λ, objective values, method, rank

How each method's front point becomes a plain LoRA adapter (ΔW = B·A·scaling):
* per-weight models are LoRA already: copied as they are (rank-padded only if vLLM would refuse their rank);
* Panacea at λ: A = Vᵀ, B = U·diag(σ ⊕ s·λ) (`pareto.models.svd_lora.export_lora`), for every λ of a grid;
* Rewarded Soups at λ: the per-objective adapters concatenated along the rank,
  A = [A_1; ...; A_n], B = [λ_1 s_1 B_1, ..., λ_n s_n B_n], so B·A = Σ λ_i s_i B_i A_i exactly (rank Σ r_i);
* MAH-DPO (head mixing) and RiC (prompt conditioning) are not LoRA and are listed under `not_exported`.
vLLM's `max_lora_rank` must be one of (1, 8, 16, 32, 64, ...): ranks are zero-padded up to the next one, which
adds nothing to B·A.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pareto.generation import LORA_METHODS, NOT_LORA_REASONS
from pareto.models.sources import logged_base
from pareto.models.svd_lora import META_NAME, PANACEA_MARKER, VLLM_LORA_RANKS, next_vllm_rank

SCHEMA = "pareto.export/1"
MANIFEST = "manifest.json"
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
Adapter = tuple[dict[str, Any], dict[str, torch.Tensor]]  # (adapter_config.json as a dict, tensors)


# ---- plain LoRA adapters on disk ---------------------------------------------------------------------------
def read_adapter(path: str | Path) -> Adapter:
    path = Path(path)
    if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{path} is not a PEFT adapter ({CONFIG_NAME} and {WEIGHTS_NAME} expected)")
    return json.loads((path / CONFIG_NAME).read_text()), load_file(str(path / WEIGHTS_NAME))


def write_adapter(path: str | Path, adapter: Adapter, meta: dict[str, Any] | None = None) -> None:
    config, tensors = adapter
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / WEIGHTS_NAME), metadata={"format": "pt"})
    if meta is not None:
        (path / META_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True))


def lora_scaling(config: dict[str, Any]) -> float:
    """PEFT's scaling of B·A: alpha/r, or alpha/sqrt(r) with rsLoRA."""
    r, alpha = config["r"], config["lora_alpha"]
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def vllm_problems(config: dict[str, Any]) -> list[str]:
    """Why vLLM's LoRA loader would reject this adapter config (empty when it is fine)."""
    problems = []
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {config.get('peft_type')!r} (only LORA)")
    if config.get("use_dora"):
        problems.append("DoRA")
    if config.get("lora_bias"):
        problems.append("lora_bias")
    if config.get("modules_to_save"):
        problems.append(f"modules_to_save {config['modules_to_save']}")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        problems.append("rank_pattern/alpha_pattern (one rank for all layers expected)")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().split("_")[0] in ("pissa", "olora", "corda", "loftq", "eva"):
        problems.append(f"init_lora_weights={init!r}")
    if config.get("r") not in VLLM_LORA_RANKS:
        problems.append(f"rank {config.get('r')} (vLLM allows {VLLM_LORA_RANKS}; pad it)")
    return problems


def _modules(tensors: dict[str, torch.Tensor]) -> list[str]:
    return sorted(k.removesuffix(".lora_A.weight") for k in tensors if k.endswith(".lora_A.weight"))


def _plain_config(template: dict[str, Any], r: int, alpha: float, modules: Sequence[str]) -> dict[str, Any]:
    """A plain LoRA adapter_config: rank r, scaling alpha/r, targets named by the modules' last component."""
    targets = sorted({m.rsplit(".", 1)[-1] for m in modules})
    keep = ("base_model_name_or_path", "task_type", "fan_in_fan_out", "bias", "revision")
    config = {k: template[k] for k in keep if k in template}
    config.update({"peft_type": "LORA", "r": r, "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
                   "target_modules": targets, "lora_dropout": 0.0, "use_rslora": False, "use_dora": False,
                   "lora_bias": False, "rank_pattern": {}, "alpha_pattern": {}, "modules_to_save": None,
                   "init_lora_weights": True, "inference_mode": True, "bias": template.get("bias", "none")})
    return config


def pad_rank(adapter: Adapter, rank: int | None = None) -> Adapter:
    """Zero-pad every layer's A (rows) and B (columns) to `rank` (default: the next vLLM rank).

    The delta is unchanged: the new rows/columns are zero, and alpha is rescaled so alpha/r stays the same
    (rsLoRA's alpha/sqrt(r) is folded into B and the output is plain LoRA).
    """
    config, tensors = adapter
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ValueError("cannot pad an adapter with rank_pattern/alpha_pattern: one rank for all layers expected")
    r = int(config["r"])
    r_out = next_vllm_rank(r) if rank is None else int(rank)
    if r_out < r:
        raise ValueError(f"cannot pad rank {r} down to {r_out}")
    out: dict[str, torch.Tensor] = {}
    fold = 1.0
    if config.get("use_rslora"):  # scaling alpha/sqrt(r) does not survive a change of r: fold it into B
        fold, alpha = lora_scaling(config), float(r_out)
    else:
        alpha = config["lora_alpha"] * r_out / r
    for module in _modules(tensors):
        a, b = tensors[f"{module}.lora_A.weight"], tensors[f"{module}.lora_B.weight"]
        if a.shape[0] != r or b.shape[1] != r:
            raise ValueError(f"{module}: lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} do not have rank {r}")
        b = (b.float() * fold).to(b.dtype) if fold != 1.0 else b
        out[f"{module}.lora_A.weight"] = torch.cat([a, a.new_zeros(r_out - r, a.shape[1])], dim=0)
        out[f"{module}.lora_B.weight"] = torch.cat([b, b.new_zeros(b.shape[0], r_out - r)], dim=1)
    extra = sorted(set(tensors) - set(out))
    if extra:
        raise ValueError(f"the adapter has tensors that are not lora_A/lora_B weights: {extra[:3]}")
    if config.get("use_rslora"):
        return _plain_config(config, r_out, alpha, _modules(out)), out
    new_config = dict(config)
    new_config.update({"r": r_out, "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha})
    return new_config, out


def concat_adapters(adapters: Sequence[Adapter], weights: Sequence[float], pad: bool = True) -> Adapter:
    """Rewarded Soups in delta space, exactly: one LoRA adapter with B·A = Σ λ_i s_i B_i A_i (s_i = scaling).

    Adapters with λ_i = 0 are dropped (they add nothing); a layer missing from some adapters gets zero blocks.
    The output has scaling 1 (alpha = r) and rank Σ r_i, padded to the next vLLM rank when `pad`.
    """
    if len(adapters) != len(weights) or not adapters:
        raise ValueError(f"{len(adapters)} adapters for {len(weights)} weights; give one weight per adapter")
    lam = np.asarray(weights, dtype=np.float64)
    if not np.all(np.isfinite(lam)) or (lam < 0).any():
        raise ValueError(f"soup weights must be finite and non-negative, got {lam.tolist()}")
    fan = {bool(c.get("fan_in_fan_out", False)) for c, _ in adapters}
    if len(fan) != 1:
        raise ValueError("the adapters disagree on fan_in_fan_out; they cannot be concatenated")
    kept = [(c, t, float(w)) for (c, t), w in zip(adapters, lam, strict=True) if w > 0]
    if not kept:
        raise ValueError("every soup weight is zero: nothing to export")
    for c, _, _ in kept:
        if c.get("rank_pattern") or c.get("alpha_pattern") or c.get("use_dora") or c.get("lora_bias"):
            raise ValueError("soup adapters must be plain LoRA (no rank/alpha patterns, DoRA or lora_bias)")
    modules = sorted({m for _, t, _ in kept for m in _modules(t)})
    r_total = sum(int(c["r"]) for c, _, _ in kept)
    r_out = next_vllm_rank(r_total) if pad else r_total
    out: dict[str, torch.Tensor] = {}
    for module in modules:
        present = [t for _, t, _ in kept if f"{module}.lora_A.weight" in t][0]
        in_dim = present[f"{module}.lora_A.weight"].shape[1]
        out_dim = present[f"{module}.lora_B.weight"].shape[0]
        dtype = present[f"{module}.lora_A.weight"].dtype
        blocks_a, blocks_b = [], []
        for config, tensors, w in kept:
            r = int(config["r"])
            a, b = tensors.get(f"{module}.lora_A.weight"), tensors.get(f"{module}.lora_B.weight")
            if a is None:  # this adapter does not touch the layer
                a, b = torch.zeros(r, in_dim), torch.zeros(out_dim, r)
            blocks_a.append(a.float())
            blocks_b.append(b.float() * (w * lora_scaling(config)))  # λ_i s_i B_i (float32 math, then cast)
        a_cat, b_cat = torch.cat(blocks_a, dim=0), torch.cat(blocks_b, dim=1)
        if r_out > r_total:
            a_cat = torch.cat([a_cat, a_cat.new_zeros(r_out - r_total, in_dim)], dim=0)
            b_cat = torch.cat([b_cat, b_cat.new_zeros(out_dim, r_out - r_total)], dim=1)
        out[f"{module}.lora_A.weight"] = a_cat.to(dtype)
        out[f"{module}.lora_B.weight"] = b_cat.to(dtype)
    return _plain_config(kept[0][0], r_out, float(r_out), modules), out


def average_adapters(adapters: Sequence[Adapter], weights: Sequence[float], pad: bool = True) -> Adapter:
    """The soup of the paper's reference code: A = Σ λ_i A_i, B = Σ λ_i B_i at the shared rank and scaling
    (ΔW = s·(Σ λ_i B_i)(Σ λ_i A_i), not linear in λ). The adapters must share rank, scaling and layers."""
    if len(adapters) != len(weights) or not adapters:
        raise ValueError(f"{len(adapters)} adapters for {len(weights)} weights; give one weight per adapter")
    first, _ = adapters[0]
    for config, tensors in adapters[1:]:
        if config["r"] != first["r"] or lora_scaling(config) != lora_scaling(first):
            raise ValueError("parameter averaging needs adapters of one rank and scaling")
        if set(tensors) != set(adapters[0][1]):
            raise ValueError("parameter averaging needs adapters on the same layers")
    lam = [float(w) for w in weights]
    tensors = {key: sum(w * t[key].float() for (_, t), w in zip(adapters, lam, strict=True)).to(value.dtype)
               for key, value in adapters[0][1].items()}
    config = dict(first)
    if pad and (config["r"] not in VLLM_LORA_RANKS or config.get("use_rslora")):
        return pad_rank((config, tensors))
    return config, tensors


def fold_panacea(adapter_dir: str | Path, weights: Sequence[float], pad: bool = True) -> Adapter:
    """Panacea at λ as plain LoRA from the adapter files alone (no model load): the same tensors as
    `pareto.models.svd_lora.export_lora` — A kept, B' = B·diag(σ ⊕ s·λ), zero-padded to a vLLM rank with
    alpha·r'/r so the scaling is unchanged."""
    from pareto.models.svd_lora import validate_preference

    adapter_dir = Path(adapter_dir)
    if not _is_panacea(adapter_dir):
        raise ValueError(f"{adapter_dir} is not a Panacea adapter (no {PANACEA_MARKER} marker in {META_NAME})")
    k = json.loads((adapter_dir / META_NAME).read_text())["n_objectives"]
    lam = validate_preference(weights, k)
    if lam.dim() != 1:
        raise ValueError("fold one preference vector at a time")
    config = json.loads((adapter_dir / CONFIG_NAME).read_text())
    state = load_file(str(adapter_dir / WEIGHTS_NAME))
    r = int(config["r"])
    out: dict[str, torch.Tensor] = {}
    for module in _modules(state):
        a, b = state[f"{module}.lora_A.weight"], state[f"{module}.lora_B.weight"]
        sigma, scale = state[f"{module}.lora_sigma"], state[f"{module}.lora_pref_scale"]
        diag = torch.cat([sigma.float(), scale.float() * lam])
        out[f"{module}.lora_A.weight"], out[f"{module}.lora_B.weight"] = a, (b.float() * diag).to(b.dtype)
    folded = (_plain_config(config, r, config["lora_alpha"], _modules(out)), out)
    return pad_rank(folded) if pad and r not in VLLM_LORA_RANKS else folded


# ---- a tracked run -> an export directory --------------------------------------------------------------------
def _adapter_dir(root: Path) -> Path:
    """The directory holding adapter_config.json (PEFT nests non-default adapters one level down)."""
    if (root / CONFIG_NAME).is_file():
        return root
    found = sorted(p.parent for p in root.rglob(CONFIG_NAME))
    if len(found) != 1:
        raise FileNotFoundError(f"{root}: expected one PEFT adapter, found {len(found)}")
    return found[0]


def _is_panacea(path: Path) -> bool:
    meta = path / META_NAME
    return meta.is_file() and json.loads(meta.read_text()).get("marker") == PANACEA_MARKER


def _parse_runs_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("runs:/"):
        raise ValueError(f"model uri {uri!r} is not a runs:/ uri")
    run_id, _, path = uri.removeprefix("runs:/").partition("/")
    return run_id, path


def _point_values(fronts: dict[str, Any], weights: Sequence[float]) -> tuple[dict, dict]:
    """The evaluated values and stderr of λ under each scorer (empty when λ was not evaluated)."""
    values, stderr = {}, {}
    for scorer, front in fronts.items():
        for p in front.points:
            if np.allclose(p.weights, weights, atol=1e-9):
                values[scorer], stderr[scorer] = list(p.values), list(p.stderr)
                break
    return values, stderr


def export_run(run_ref: str, out: str | Path, tracking_uri: str, *, experiment: str | None = None,
               methods: Sequence[str] | None = None, grid_points: int | None = None, overwrite: bool = False,
               progress: bool = False) -> dict[str, Any]:
    """Export every front point of a tracked pipeline run (see the module docstring); returns the manifest.

    `grid_points` replaces the evaluated λ grid of conditioned methods (Panacea, Soups) by a denser one;
    points off the evaluated grid have no objective values in the manifest.
    """
    from mlflow.tracking import MlflowClient

    from pareto import tracking
    from pareto.front.grid import preference_grid

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"--out {out} exists and is not empty; choose a new directory or pass --overwrite")
        shutil.rmtree(out)
    run = tracking.find_run(run_ref, tracking_uri, experiment)
    run_id = run.info.run_id
    by_method: dict[str, dict[str, Any]] = {}
    for front in tracking.load_fronts(run, tracking_uri):
        by_method.setdefault(front.method, {})[front.scorer] = front
    wanted = list(methods) if methods else sorted(by_method)
    missing = [m for m in wanted if m not in by_method]
    if missing:
        raise ValueError(f"run {run_id} has no front for {missing}; it has {sorted(by_method)}")
    client = MlflowClient(tracking_uri)

    def log(msg: str) -> None:
        if progress:
            print(msg, flush=True)

    adapters: dict[str, dict[str, Any]] = {}
    not_exported: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        downloads: dict[str, Path] = {}

        def download(uri: str) -> Path:
            if uri not in downloads:
                src_run, artifact = _parse_runs_uri(uri)
                dst = tmp_path / f"dl{len(downloads)}"
                dst.mkdir()
                downloads[uri] = Path(client.download_artifacts(src_run, artifact, str(dst)))
            return downloads[uri]

        base_src = Path(logged_base(download(f"runs:/{run_id}/base_model")))  # a SOURCE.json: the folder it names
        out.mkdir(parents=True, exist_ok=True)
        shutil.copytree(base_src, out / "base", ignore=shutil.ignore_patterns("DONE", ".complete"))
        log(f"base model -> {out / 'base'}")

        for method in wanted:
            fronts = by_method[method]
            front = fronts.get("oracle") or next(iter(fronts.values()))
            policy_kind = str(front.meta.get("policy_kind", method))  # how serving loads it (models.conditioned)
            reason = NOT_LORA_REASONS.get(method) or NOT_LORA_REASONS.get(policy_kind)
            if reason:
                not_exported[method] = reason
                continue
            kind = LORA_METHODS.get(method) or LORA_METHODS.get(policy_kind)
            first = download(front.points[0].model_uri) if front.points and front.points[0].model_uri else None
            if first is None:
                not_exported[method] = "its front points carry no model uri"
                continue
            if kind is None:  # a method this module does not know: recognise it by its files
                single = sorted(p.parent for p in first.rglob(CONFIG_NAME))
                kind = "panacea-at-lambda" if len(single) == 1 and _is_panacea(single[0]) else (
                    "per-weight" if not front.meta.get("conditioned", False) else None)
            if kind is None:
                not_exported[method] = "not a LoRA method this exporter knows; serve it with transformers"
                continue
            conditioned = kind != "per-weight"
            grid = (preference_grid(front.k, n_points=grid_points) if conditioned and grid_points
                    else front.weights())
            made = _export_method(method, kind, front, grid, download, out, log)
            for name, entry in made.items():
                values, stderr = _point_values(fronts, entry["weights"])
                entry.update({"values": values, "stderr": stderr})
                adapters[name] = entry

    manifest = {
        "schema": SCHEMA, "run_id": run_id, "tracking_uri": tracking_uri,
        "objectives": list(next(iter(next(iter(by_method.values())).values())).objectives),
        "base_model": "base", "adapters": adapters, "not_exported": not_exported,
        "max_lora_rank": max((a["rank"] for a in adapters.values()), default=None),
    }
    manifest["vllm_server_args"] = vllm_server_args(manifest, out)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    log(f"{len(adapters)} adapter(s) -> {out / 'adapters'}; manifest {out / MANIFEST}")
    return manifest


def _export_method(method: str, kind: str, front: Any, grid: np.ndarray, download: Any, out: Path,
                   log: Any) -> dict[str, dict[str, Any]]:
    """Export one method's front points into out/adapters; returns manifest entries by adapter name."""
    if kind == "per-weight":
        made = {}
        for i, point in enumerate(front.points):
            name = f"{method}-{i}"
            entry = export_per_weight(_adapter_dir(download(point.model_uri)), out / "adapters" / name)
            made[name] = {"method": method, "weights": list(point.weights), "model_uri": point.model_uri,
                          "path": f"adapters/{name}", **entry}
            log(f"{name}: per-weight model of λ={np.round(point.weights, 3).tolist()} (rank {entry['rank']})")
        return made
    uri = front.points[0].model_uri
    names = [f"{method}-{i}" for i in range(len(grid))]
    if kind == "panacea-at-lambda":
        entries = export_panacea(_adapter_dir(download(uri)), out / "base", grid, out / "adapters", names)
    elif kind == "soup":
        ingredients, merge = soup_ingredients(download(uri), front.objectives)
        entries = export_soup(ingredients, grid, out / "adapters", names, merge)
    else:
        raise ValueError(f"unknown export kind {kind!r}")
    made = {}
    for name, entry in zip(names, entries, strict=True):
        made[name] = {"method": method, "model_uri": uri, **entry}
        log(f"{name}: {kind} at λ={np.round(entry['weights'], 3).tolist()} (rank {entry['source_rank']} -> "
            f"{entry['rank']})")
    return made


def export_per_weight(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """A per-weight LoRA model as it is (rank-padded only if vLLM would refuse its rank or rsLoRA scaling)."""
    src, dst = Path(src), Path(dst)
    if _is_panacea(src):
        raise ValueError(f"{src} is a Panacea adapter, not a per-weight LoRA: export it at a λ")
    config, tensors = read_adapter(src)
    source_rank = int(config["r"])
    if config["r"] not in VLLM_LORA_RANKS or config.get("use_rslora"):
        config, tensors = pad_rank((config, tensors))
    problems = vllm_problems(config)
    if problems:
        raise ValueError(f"{src} cannot be served by vLLM: {', '.join(problems)}")
    if int(config["r"]) == source_rank and not config.get("use_rslora"):
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".complete"))  # as it is
    else:
        write_adapter(dst, (config, tensors))
    return {"kind": "per-weight", "rank": int(config["r"]), "source_rank": source_rank}


def export_panacea(adapter_dir: str | Path, base_dir: str | Path, grid: Sequence[Sequence[float]],
                   out_dir: str | Path, names: Sequence[str]) -> list[dict[str, Any]]:
    """Panacea at each λ of `grid` as plain LoRA (A = Vᵀ, B = U·diag(σ ⊕ s·λ), rank padded for vLLM);
    the Panacea model is loaded once."""
    from pareto.models.policy import load_policy
    from pareto.models.svd_lora import export_lora, load_panacea

    base, _ = load_policy(base_dir)
    model = load_panacea(base, adapter_dir)
    entries = []
    for name, lam in zip(names, np.asarray(grid, dtype=np.float64), strict=True):
        dst = Path(out_dir) / name
        export_lora(model, lam, dst)
        meta = json.loads((dst / META_NAME).read_text())
        entries.append({"kind": "panacea-at-lambda", "weights": lam.tolist(), "rank": meta["r"],
                        "source_rank": meta["source_r"], "path": f"adapters/{name}"})
    return entries


def export_soup(ingredients: Sequence[str | Path], grid: Sequence[Sequence[float]], out_dir: str | Path,
                names: Sequence[str], merge: str = "delta") -> list[dict[str, Any]]:
    """Rewarded Soups at each λ of `grid`, as the soup itself merges: "delta" concatenates the per-objective
    adapters (exact Σ λ_i s_i B_i A_i, see concat_adapters), "params" averages A and B (average_adapters)."""
    if merge not in ("delta", "params"):
        raise ValueError(f"unknown soup merge {merge!r}; expected 'delta' or 'params'")
    loaded = [read_adapter(p) for p in ingredients]
    entries = []
    for name, lam in zip(names, np.asarray(grid, dtype=np.float64), strict=True):
        config, tensors = concat_adapters(loaded, lam) if merge == "delta" else average_adapters(loaded, lam)
        write_adapter(Path(out_dir) / name, (config, tensors),
                      {"exported_from": "soups", "merge": merge, "weights": lam.tolist(), "r": config["r"]})
        entries.append({"kind": "soup", "merge": merge, "weights": lam.tolist(), "rank": int(config["r"]),
                        "source_rank": sum(int(c["r"]) for c, _ in loaded) if merge == "delta"
                        else int(loaded[0][0]["r"]), "path": f"adapters/{name}"})
    return entries


SOUPS_MARKER = "pareto.soups.v1"  # pareto.models.soups writes it into the soup's meta.json


def soup_ingredients(root: str | Path, objectives: Sequence[str]) -> tuple[list[Path], str]:
    """The per-objective adapters of a Rewarded Soups model in objective order, and its merge ("delta"/"params").

    A soup saved by `pareto.models.soups.SoupsPolicy.save` lists them in meta.json; otherwise `root/<objective>`
    or `root/obj_<objective>` is used and the merge is "delta".
    """
    root = Path(root)
    meta_file = root / META_NAME
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    if meta.get("marker") == SOUPS_MARKER:
        if list(meta.get("objectives", [])) != list(objectives):
            raise ValueError(f"{root}: the soup was trained for {meta.get('objectives')}, the front has "
                             f"{list(objectives)}")
        return [root / name for name in meta["adapters"]], meta.get("merge", "delta")
    paths = []
    for name in objectives:
        found = [p for p in (root / name, root / f"obj_{name}") if (p / CONFIG_NAME).is_file()]
        if not found:
            raise FileNotFoundError(f"{root}: no adapter for objective {name!r} (expected {root / name}/{CONFIG_NAME})")
        paths.append(found[0])
    return paths, "delta"


def vllm_server_args(manifest: dict[str, Any], root: str | Path) -> list[str]:
    """Arguments for `python -m vllm.entrypoints.openai.api_server` serving every adapter of an export."""
    root = Path(root).resolve()
    rank = manifest.get("max_lora_rank") or 8
    modules = [f"{name}={root / a['path']}" for name, a in manifest["adapters"].items()]
    args = ["--model", str(root / manifest["base_model"]), "--enable-lora", "--max-lora-rank", str(rank),
            "--max-loras", str(max(1, min(len(modules), 4))), "--max-cpu-loras", str(max(1, len(modules)))]
    return args + (["--lora-modules", *modules] if modules else [])
