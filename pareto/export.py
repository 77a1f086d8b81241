"""Export a tracked run's front as standard PEFT LoRA adapters on one base model, ready for vLLM multi-LoRA.

    pareto export RUN --out DIR        ->  DIR/base/            the base model (save_pretrained)
                                           DIR/adapters/<name>/ one plain LoRA adapter per front point
                                           DIR/manifest.json    adapter name -> λ, objective values, method, rank

How each method's front point becomes a plain LoRA adapter (ΔW = B·A·scaling):
* per-weight models are LoRA already: copied as they are (rank-padded only if vLLM would refuse their rank);
* Panacea at λ: A = Vᵀ, B = U·diag(σ ⊕ s·λ) (`pareto.models.svd_lora.fold_layer`), for every λ of a grid;
* Rewarded Soups at λ: the per-objective adapters concatenated along the rank,
  A = [A_1; ...; A_n], B = [λ_1 s_1 B_1, ..., λ_n s_n B_n], so B·A = Σ λ_i s_i B_i A_i exactly (rank Σ r_i);
* MAH-DPO (head mixing) and RiC (prompt conditioning) are not LoRA and are listed under `not_exported`.
The adapter files themselves (read, write, pad to a vLLM rank, concatenate, fold) are `pareto.adapters`; its
public names are re-exported here.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pareto.adapters import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    Adapter,
    adapter_dir,
    average_adapters,
    concat_adapters,
    fold_panacea,
    is_panacea,
    lora_scaling,
    pad_rank,
    read_adapter,
    vllm_problems,
    write_adapter,
)
from pareto.config import spec_for
from pareto.models.sources import logged_base
from pareto.models.svd_lora import META_NAME, VLLM_LORA_RANKS

SCHEMA = "pareto.export/1"
MANIFEST = "manifest.json"
__all__ = [  # the adapter-file names stay importable from here
    "CONFIG_NAME", "MANIFEST", "SCHEMA", "SOUPS_MARKER", "WEIGHTS_NAME", "Adapter", "adapter_dir",
    "average_adapters", "concat_adapters", "export_panacea", "export_per_weight", "export_point", "export_run",
    "export_soup", "fold_panacea", "is_panacea", "lora_scaling", "pad_rank", "read_adapter", "soup_ingredients",
    "vllm_problems", "vllm_server_args", "write_adapter",
]


# ---- a tracked run -> an export directory --------------------------------------------------------------------
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
    by_method, wanted = _fronts_by_method(tracking.load_fronts(run, tracking_uri), run_id, methods)

    def log(msg: str) -> None:
        if progress:
            print(msg, flush=True)

    adapters: dict[str, dict[str, Any]] = {}
    not_exported: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        download = _Downloads(MlflowClient(tracking_uri), Path(tmp))
        base_src = Path(logged_base(download(f"runs:/{run_id}/base_model")))  # a SOURCE.json: the folder it names
        out.mkdir(parents=True, exist_ok=True)
        shutil.copytree(base_src, out / "base", ignore=shutil.ignore_patterns("DONE", ".complete"))
        log(f"base model -> {out / 'base'}")
        for method in wanted:
            fronts = by_method[method]
            front = fronts.get("oracle") or next(iter(fronts.values()))
            kind, reason = _export_kind(method, front, download)
            if kind is None:
                not_exported[method] = reason
                continue
            conditioned = kind != "adapter"
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


def _fronts_by_method(fronts: Sequence[Any], run_id: str,
                      methods: Sequence[str] | None) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The run's fronts as {method: {scorer: front}}, and the methods to export (all, or those asked for)."""
    by_method: dict[str, dict[str, Any]] = {}
    for front in fronts:
        by_method.setdefault(front.method, {})[front.scorer] = front
    wanted = list(methods) if methods else sorted(by_method)
    missing = [m for m in wanted if m not in by_method]
    if missing:
        raise ValueError(f"run {run_id} has no front for {missing}; it has {sorted(by_method)}")
    return by_method, wanted


class _Downloads:
    """A run's artifacts by runs:/ uri, each downloaded once into its own folder under `root`."""

    def __init__(self, client: Any, root: Path) -> None:
        self.client, self.root = client, root
        self.paths: dict[str, Path] = {}

    def __call__(self, uri: str) -> Path:
        from pareto.registry import parse_runs_uri

        if uri not in self.paths:
            src_run, artifact = parse_runs_uri(uri)
            dst = self.root / f"dl{len(self.paths)}"
            dst.mkdir()
            self.paths[uri] = Path(self.client.download_artifacts(src_run, artifact, str(dst)))
        return self.paths[uri]


def _export_kind(method: str, front: Any, download: _Downloads) -> tuple[str | None, str]:
    """How the method's front points become plain LoRA (the method table's `export`: adapter, fold, merge), or
    (None, why they are not exported)."""
    spec = spec_for(method, front.meta.get("policy_kind"))
    if spec is not None and spec.export is None:
        return None, spec.not_lora
    kind = spec.export if spec is not None else None
    first = download(front.points[0].model_uri) if front.points and front.points[0].model_uri else None
    if first is None:
        return None, "its front points carry no model uri"
    if kind is None:  # a method this module does not know: recognise it by its files
        single = sorted(p.parent for p in first.rglob(CONFIG_NAME))
        kind = "fold" if len(single) == 1 and is_panacea(single[0]) else (
            "adapter" if not front.meta.get("conditioned", False) else None)
    if kind is None:
        return None, "not a LoRA method this exporter knows; serve it with transformers"
    return kind, ""


def _export_method(method: str, kind: str, front: Any, grid: np.ndarray, download: Any, out: Path,
                   log: Any) -> dict[str, dict[str, Any]]:
    """Export one method's front points into out/adapters; returns manifest entries by adapter name."""
    if kind == "adapter":  # each point is one LoRA model already (one per λ, or one for every λ)
        made = {}
        for i, point in enumerate(front.points):
            name = f"{method}-{i}"
            entry = export_per_weight(adapter_dir(download(point.model_uri)), out / "adapters" / name)
            made[name] = {"method": method, "weights": list(point.weights), "model_uri": point.model_uri,
                          "path": f"adapters/{name}", **entry}
            log(f"{name}: the LoRA model of λ={np.round(point.weights, 3).tolist()} (rank {entry['rank']})")
        return made
    uri = front.points[0].model_uri
    names = [f"{method}-{i}" for i in range(len(grid))]
    if kind == "fold":
        entries = export_panacea(adapter_dir(download(uri)), out / "base", grid, out / "adapters", names)
    elif kind == "merge":
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


def export_point(src: Path, dst: Path, *, method: str, policy_kind: str, conditioned: bool,
                 weights: Sequence[float], objectives: Sequence[str]) -> None:
    """One chosen front point (a serving Choice) as a plain LoRA adapter at `dst`: a per-weight model as it is,
    a soup or a Panacea adapter (DPO or PPO) at λ = `weights`. `src` is the point's downloaded model."""
    spec = spec_for(method, policy_kind)
    if not conditioned or (spec is not None and spec.export == "adapter"):
        export_per_weight(adapter_dir(src), dst)
    elif spec is not None and spec.export == "merge":
        ingredients, merge = soup_ingredients(src, objectives)
        export_soup(ingredients, [weights], dst.parent, [dst.name], merge)
    elif is_panacea(adapter_dir(src)):  # Panacea (DPO or PPO): fold λ from the files
        write_adapter(dst, fold_panacea(adapter_dir(src), weights))
    else:
        raise ValueError(f"{method}: no LoRA export for policy kind {policy_kind!r}")


def export_per_weight(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """A per-weight LoRA model as it is (rank-padded only if vLLM would refuse its rank or rsLoRA scaling)."""
    src, dst = Path(src), Path(dst)
    if is_panacea(src):
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
    return {"kind": "adapter", "rank": int(config["r"]), "source_rank": source_rank}


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
        entries.append({"kind": "fold", "weights": lam.tolist(), "rank": meta["r"],
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
        entries.append({"kind": "merge", "merge": merge, "weights": lam.tolist(), "rank": int(config["r"]),
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
