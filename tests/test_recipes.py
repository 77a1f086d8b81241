"""Real-scale recipes and infra/: every recipe validates and its plan resolves offline; the cluster files pass the
schemas their tools use (Ray's launcher schema, the KubeRay CRDs, Kubernetes' and Compose's schemas from PyPI
packages); and the runbook's local part (PostgreSQL + MLflow + Ray head + `ray job submit`) runs for real.
"""

from __future__ import annotations

import copy
import functools
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pareto.cli import app
from pareto.config import ConfigError, config_from_dict, load_config
from pareto.plan import KNOWN_MODELS, PlanError, describe_model, lora_params, resolve_plan

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "configs" / "recipes").glob("*.yaml"))
INFRA = ROOT / "infra"


# ---------------------------------------------------------------------------------------------- recipes


def test_the_recipes_named_in_the_issue_exist() -> None:
    names = {p.stem for p in RECIPES}
    assert {"panacea-dpo-pku-saferlhf", "ric-hh-rlhf", "mah-dpo-ultrafeedback", "ppo-vllm-hh-rlhf"} <= names
    methods = {p.stem: set(load_config(p).methods.enabled()) for p in RECIPES}
    assert methods["panacea-dpo-pku-saferlhf"] == {"panacea"} and methods["ric-hh-rlhf"] == {"ric"}
    assert methods["mah-dpo-ultrafeedback"] == {"mah_dpo"}
    assert methods["ppo-vllm-hh-rlhf"] == {"morlhf", "panacea_ppo"}
    assert load_config(ROOT / "configs/recipes/ppo-vllm-hh-rlhf.yaml").ppo.engine == "vllm"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_passes_validate_with_a_plan(recipe: Path) -> None:
    result = CliRunner().invoke(app, ["validate", str(recipe)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("ok: ")  # the one-line summary stays first
    assert lines[1].startswith("plan: ") and "nothing downloaded" in lines[1]
    cfg = load_config(recipe)
    plan = resolve_plan(cfg)
    assert plan.dataset is not None and all(s.pairs for s in plan.splits)  # published sizes known for every split
    for model in plan.models:
        assert model.params and model.source in ("known table", "config on disk"), model  # no download
    for method in plan.methods:
        for actor in method.actors:
            assert actor.memory_gib is not None and 0 < actor.memory_gib < cfg.resources.cluster.gpu_memory_gib
    assert not plan.warnings, plan.warnings
    json.dumps(plan.to_dict())  # the plan is plain data


def test_plan_numbers_are_the_hand_computed_ones() -> None:
    cfg = load_config(ROOT / "configs" / "recipes" / "panacea-dpo-pku-saferlhf.yaml")
    plan = resolve_plan(cfg)
    splits = {s.split: s.pairs for s in plan.splits}
    assert splits == {"train": int(73_907 * 0.98), "val": int(73_907 * 0.02), "eval": 8_211}
    qwen = KNOWN_MODELS["Qwen/Qwen2.5-0.5B-Instruct"]
    # Panacea rank 8 + K=2 preference dims on q,k,v,o,gate,up,down of 24 layers (896 hidden, 2 KV heads of 64).
    per_layer = 10 * ((896 + 896) + (896 + 128) * 2 + (896 + 896) + (896 + 4864) * 2 + (4864 + 896))
    assert lora_params(qwen, cfg.methods.panacea.target_modules, 10) == 24 * per_layer
    (trainer,) = plan.methods[0].actors
    gib = 1024**3
    assert trainer.memory["weights"] == pytest.approx(494_032_768 * 2 / gib)
    assert trainer.memory["logits"] == pytest.approx(2 * 4 * 8 * 1024 * 151_936 / gib)  # 4 pairs = 8 sequences
    assert trainer.memory["activations"] == pytest.approx((24 * 2 + 34) * 8 * 1024 * 896 / gib)
    assert trainer.memory["reward models (evaluation)"] == pytest.approx(2 * 774_031_360 * 2 / gib)
    assert "2,000 optimizer steps" in plan.methods[0].steps and "64,000 pairs" in plan.methods[0].steps


def test_mah_dpo_plan_counts_head_layers_instead_of_their_backbone_lora() -> None:
    # head_layers 2: the top two layers' projections leave the rank-16 backbone and get K rank-4 deltas each
    path = ROOT / "configs" / "recipes" / "mah-dpo-ultrafeedback.yaml"
    cfg0 = load_config(path, ["methods.mah_dpo.head_rank=4"])
    cfg2 = load_config(path, ["methods.mah_dpo.head_rank=4", "methods.mah_dpo.head_layers=2"])
    arch = resolve_plan(cfg0).models[0]
    mem0, mem2 = ([a.memory["adapter+optimizer"] for m in resolve_plan(c).methods for a in m.actors][0]
                  for c in (cfg0, cfg2))
    targets, m = cfg0.methods.mah_dpo.target_modules, KNOWN_MODELS[arch.name]
    per_layer = lora_params(m, targets, 1) // m.layers  # parameters of one rank-1 adapter set in one layer
    k = len(cfg0.objectives)
    assert k * 4 != 16 and (mem2 - mem0) * 1024**3 / 16 == pytest.approx(2 * per_layer * (k * 4 - 16))


def test_plan_reads_a_config_on_disk_and_counts_local_rows(tmp_path: Path) -> None:
    """A local model path: exact parameter count from its config.json (meta device); local rows are counted."""
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2).save_pretrained(tmp_path / "model")
    info = describe_model(str(tmp_path / "model"), "policy", "float32")
    assert info.source == "config on disk"
    # embed + lm_head (untied) + 2 × (attn q,o 64×64, k,v 64×32, mlp 3×64×128, 2 norms) + final norm
    assert info.params == 2 * 1000 * 64 + 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64) + 64
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps({"prompt": f"p{i}", "response_0": "a", "response_1": "b",
                                                          "h": 1}) + "\n" for i in range(40)))
    cfg = config_from_dict({
        "task": {"name": "mine", "dataset": {"format": "jsonl", "path": str(data), "labels": {"helpful": "h"},
                                             "splits": {"train": "train[:75%]", "val": "train[30:]"}}},
        "objectives": ["helpful", "concise"], "model": {"base": str(tmp_path / "model")},
        "reward_model": {"hf": [{"model": "Ray2333/gpt2-large-harmless-reward_model", "objectives": ["concise"]}]},
        "methods": {"panacea": None, "ric": {}},
        "evaluation": {"scorer": "reward_model", "reference_point": [0, 0]},
    })
    plan = resolve_plan(cfg)
    assert {s.split: s.pairs for s in plan.splits} == {"train": 30, "val": 10}
    assert plan.models[0].params == info.params and "rows counted" in plan.splits[0].how


def test_plan_refuses_what_the_cluster_cannot_place() -> None:
    base = yaml.safe_load((ROOT / "configs" / "recipes" / "ppo-vllm-hh-rlhf.yaml").read_text())
    too_big = copy.deepcopy(base)
    too_big["ppo"]["trainer"]["count"] = 4  # 2 methods × (4 + 1 + 0.5 + 0.5) GPUs > 8
    too_big["methods"]["morlhf"]["minibatches"] = 2
    too_big["methods"]["panacea_ppo"]["minibatches"] = 2
    with pytest.raises(PlanError, match=r"hold 12 GPUs, but resources.cluster has 8"):
        resolve_plan(config_from_dict(too_big))
    strict = copy.deepcopy(base)
    strict["ppo"]["placement_strategy"] = "STRICT_PACK"
    strict["resources"]["cluster"]["gpus_per_node"] = 1
    strict["resources"]["cluster"]["nodes"] = 8
    with pytest.raises(PlanError, match="STRICT_PACK puts 2 trainer ranks"):
        resolve_plan(config_from_dict(strict))
    result = CliRunner().invoke(app, ["validate", str(ROOT / "configs/recipes/ppo-vllm-hh-rlhf.yaml"),
                                      "--set", "ppo.trainer.count=4", "--set", "methods.morlhf.minibatches=2",
                                      "--set", "methods.panacea_ppo.minibatches=2"])
    assert result.exit_code == 2 and "plan: the PPO methods' actor groups" in result.output
    # Memory over the GPU is a warning, not an error (the estimate errs high).
    big = config_from_dict(base, ["resources.cluster.gpu_memory_gib=16"])
    assert any("GiB of GPU memory it is given" in w for w in resolve_plan(big).warnings)


def test_validate_keeps_the_one_line_output_for_embedded_configs() -> None:
    quick = ROOT / "configs" / "quickstart.yaml"
    out = CliRunner().invoke(app, ["validate", str(quick)])
    assert out.exit_code == 0 and len(out.output.strip().splitlines()) == 1 and out.output.startswith("ok: ")
    with_plan = CliRunner().invoke(app, ["validate", str(quick), "--plan"])
    assert with_plan.exit_code == 0 and with_plan.output.splitlines()[1].startswith("plan: quickstart")


def test_reward_model_config_errors_name_the_field() -> None:
    recipe = yaml.safe_load((ROOT / "configs" / "recipes" / "ric-hh-rlhf.yaml").read_text())
    bad = copy.deepcopy(recipe)
    bad["reward_model"]["hf"][1]["objectives"] = ["helpful"]
    with pytest.raises(ConfigError, match=r"reward_model.hf.1.objectives: 'helpful' is already scored"):
        config_from_dict(bad)
    bad = copy.deepcopy(recipe)
    bad["reward_model"]["hf"][0]["objectives"] = ["funny"]
    with pytest.raises(ConfigError, match=r"reward_model.hf.0.objectives: 'funny' is not in objectives"):
        config_from_dict(bad)


# ---------------------------------------------------------------------------------------------- Ray launcher


def test_ray_cluster_launcher_yaml_passes_rays_own_validation() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((INFRA / "ray" / "cluster-aws.yaml").read_text())
    prepared = prepare_config(copy.deepcopy(raw))  # what `ray up` does before validating
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    gpu_groups = {name: t for name, t in prepared["available_node_types"].items() if t["resources"].get("GPU")}
    assert set(gpu_groups) == {"gpu-a100x8", "gpu-l40sx4"}
    assert all(t["min_workers"] == 0 and t["max_workers"] >= 1 for t in gpu_groups.values())
    assert prepared["available_node_types"][prepared["head_node_type"]]["resources"] == {"CPU": 0}
    assert "--env RAY_AUTH_MODE=token" in prepared["docker"]["run_options"]
    broken = copy.deepcopy(raw)
    broken["docker"]["imagee"] = "typo"
    with pytest.raises(Exception, match="imagee"):
        validate_config(prepare_config(broken))


# ---------------------------------------------------------------------------------------------- KubeRay


def _strict(schema: dict) -> dict:
    """An OpenAPI CRD schema with unknown fields rejected (what `kubectl --validate=strict` does)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out \
                and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.cache
def _crd_validators() -> dict:
    """KubeRay v1.7.0's CRD schemas (vendored from its repository), strict, one validator per kind."""
    import jsonschema

    data = json.loads(gzip.decompress((INFRA / "kuberay" / "schemas" / "kuberay-v1.7.0-crds.json.gz").read_bytes()))
    return {kind: jsonschema.Draft7Validator(_strict(entry["schema"]))
            for kind, entry in data.items() if kind != "source"}


def _pod_templates(doc: dict) -> list[dict]:
    spec = doc["spec"]
    cluster = spec if doc["kind"] == "RayCluster" else spec.get("rayClusterSpec")
    if not cluster:
        return []
    return [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster.get("workerGroupSpecs", [])]


@functools.cache
def _k8s_validator(kind: str, api_version: str):
    """Kubernetes' strict JSON schema of one kind, from the `kubernetes-validate` package, built once.

    (`kubernetes_validate.validate` re-reads the 1.8 MB definitions and rebuilds its validator on every call.)
    """
    import jsonschema
    import kubernetes_validate
    from kubernetes_validate.utils import schema_contents
    from referencing import Registry, Resource

    version = kubernetes_validate.latest_version()
    folder = f"kubernetes-json-schema/v{version}-local-strict"
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema = schema_contents(f"{folder}/{kind.lower()}-{group}.json", version)
    definitions = schema_contents(f"{folder}/_definitions.json", version)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def _k8s_validate(resource: dict) -> None:
    _k8s_validator(resource["kind"], resource["apiVersion"]).validate(resource)


def test_kuberay_manifests_pass_the_crd_and_kubernetes_schemas() -> None:
    pytest.importorskip("kubernetes_validate")
    crds = _crd_validators()
    kinds: dict[str, list[dict]] = {}
    for path in sorted((INFRA / "kuberay").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            kinds.setdefault(doc["kind"], []).append(doc)
            if doc["kind"] in crds:
                crds[doc["kind"]].validate(doc)
                for template in _pod_templates(doc):  # the pods, against Kubernetes' own strict schema
                    _k8s_validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                                   "template": template})
                    for container in template["spec"]["containers"]:
                        assert container["image"] == "pareto:0.1.0"
            else:
                _k8s_validate(doc)
    assert set(kinds) >= {"Namespace", "ConfigMap", "RayCluster", "RayJob"}
    (cluster,) = kinds["RayCluster"]
    assert cluster["spec"]["rayVersion"] == "2.60.0" and cluster["spec"]["authOptions"]["mode"] == "token"
    groups = cluster["spec"]["workerGroupSpecs"]
    assert all(int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) >= 1
               for g in groups)
    # Every recipe runs as a RayJob whose entry point names an existing config.
    entry = {re.search(r"--config /opt/pareto/(\S+)", j["spec"]["entrypoint"]).group(1) for j in kinds["RayJob"]}
    assert {f"configs/recipes/{p.name}" for p in RECIPES} <= entry
    assert all((ROOT / e).is_file() for e in entry)


def test_the_strict_crd_check_can_fail() -> None:
    import jsonschema

    crds = _crd_validators()
    doc = yaml.safe_load_all((INFRA / "kuberay" / "raycluster.yaml").read_text())
    cluster = next(d for d in doc if d["kind"] == "RayCluster")
    typo = copy.deepcopy(cluster)
    typo["spec"]["workerGroupSpecs"][0]["maxReplica"] = 2
    with pytest.raises(jsonschema.ValidationError, match="maxReplica"):
        crds["RayCluster"].validate(typo)
    missing = copy.deepcopy(cluster)
    del missing["spec"]["headGroupSpec"]
    with pytest.raises(jsonschema.ValidationError, match="headGroupSpec"):
        crds["RayCluster"].validate(missing)
    pytest.importorskip("kubernetes_validate")
    bad_pod = copy.deepcopy(cluster["spec"]["headGroupSpec"]["template"])
    bad_pod["spec"]["containers"][0]["imagePullPolicy"] = 3
    with pytest.raises(jsonschema.ValidationError, match="imagePullPolicy|3 is not of type"):
        _k8s_validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": bad_pod})


# ---------------------------------------------------------------------------------------------- compose, Dockerfile


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose variable interpolation: $$, ${VAR}, ${VAR:-default}, ${VAR:?error} (done before schema checks)."""

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise ValueError(f"{name}: {arg}")
        return arg or ""

    return re.sub(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)([^}]*))?\}", sub, text)


def test_compose_file_parses_and_passes_the_compose_spec() -> None:
    compose_spec = pytest.importorskip("compose_spec")
    text = (INFRA / "mlflow" / "docker-compose.yaml").read_text()
    raw = yaml.safe_load(text)
    env = dict(line.split("=", 1) for line in (INFRA / "mlflow" / ".env.example").read_text().splitlines()
               if line and not line.startswith("#"))
    parsed = compose_spec.PyCompose.from_yaml(interpolate(text, env))
    parsed.validate()
    spec = parsed.to_dict()
    services = spec["services"]
    assert set(services) == {"postgres", "minio", "minio-init", "mlflow"} == set(raw["services"])
    for name, service in services.items():
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
    command = services["mlflow"]["command"]
    backend = command[command.index("--backend-store-uri") + 1]
    assert backend.startswith("postgresql+psycopg2://mlflow:change-me-postgres@postgres:5432/")
    assert command[command.index("--artifacts-destination") + 1] == "s3://mlflow" and "--serve-artifacts" in command
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert services["mlflow"]["ports"] == ["127.0.0.1:5000:5000"]  # loopback unless MLFLOW_BIND says otherwise
    assert (INFRA / "mlflow" / services["mlflow"]["build"]["dockerfile"]).is_file()
    with pytest.raises(ValueError, match="POSTGRES_PASSWORD"):
        interpolate(text, {})  # a missing secret stops compose, as ${VAR:?} promises
    with pytest.raises(ValueError, match="enviroment"):
        compose_spec.PyCompose.from_yaml(interpolate(text, env).replace("    environment:\n      POSTGRES_USER",
                                                                         "    enviroment:\n      POSTGRES_USER"))


def dockerfile_stages(text: str) -> list[tuple[str, str]]:
    """(image, stage name) of every FROM, in order."""
    return re.findall(r"^FROM\s+(\S+)\s+AS\s+(\S+)\s*$", text, flags=re.MULTILINE | re.IGNORECASE)


def test_dockerfile_has_the_expected_stages() -> None:
    text = (INFRA / "docker" / "Dockerfile").read_text()
    stages = dockerfile_stages(text)
    assert [name for _, name in stages] == ["base", "deps", "vllm", "runtime"]
    assert stages[0][0] == "${CUDA_IMAGE}" and re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\S+-runtime-", text, re.M)
    names = {name for _, name in stages}
    parent = {name: image for image, name in stages}
    assert parent["deps"] == parent["vllm"] == "base" and parent["runtime"] == "deps"
    for source in re.findall(r"COPY --from=(\S+)", text):
        assert source in names
    # Every file the build copies exists in the repository (the context is the repo root).
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, flags=re.MULTILINE):
        for src in line.split()[:-1]:
            assert src == "." or (ROOT / src).exists(), src
    assert 'PARETO_VLLM_PACKAGE="vllm==' in text and "PARETO_VLLM_VENV=/opt/vllm" in text
    assert "/opt/venv" in text and '".[cluster]"' in text  # the training stack, torch pinned by pyproject
    assert '"torch==2.13.0"' in (ROOT / "pyproject.toml").read_text()
    users = re.findall(r"^USER (\S+)", text, flags=re.MULTILINE)
    assert users[-1] == "ray"  # the runtime is not root


# ---------------------------------------------------------------------------------------------- the local runbook


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.mark.slow
@pytest.mark.skipif(_postgres_bin() is None, reason="PostgreSQL from Debian packages is not installed "
                                                    "(apt-get install postgresql; .ci/run does)")
@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("runuser") is None, reason="needs runuser as root")
def test_runbook_local_part(tmp_path: Path) -> None:
    """docs/cluster.md part 1, as a user runs it: PostgreSQL -> MLflow server -> Ray head -> ray job submit."""
    work = Path("/tmp") / f"pareto-runbook-{os.getpid()}"  # postgres must reach it: not under pytest's 0700 dirs
    shutil.rmtree(work, ignore_errors=True)
    env = {**os.environ, "PARETO_RUNBOOK_QUICK": "1", "PARETO_RUNBOOK_DIR": str(work), "PYTHON": sys.executable}
    try:
        proc = subprocess.run(["bash", str(INFRA / "local" / "runbook-local.sh")], env=env, capture_output=True,
                              text=True, timeout=1200)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        summary = json.loads((work / "summary.json").read_text())
        assert summary["backend"] == "postgresql" and summary["postgres_run_rows"] >= 2  # parent + nested runs
        compare = summary["compare"]
        assert set(compare["methods"]) == {"panacea", "per_weight_dpo"}
        assert all(v["hypervolume"] >= 0 for v in compare["methods"].values())
        front = summary["front"]
        assert front["run_id"] == compare["run_id"]
        assert {f["method"] for f in front["fronts"]} >= {"panacea", "per_weight_dpo"}
        logged = {f["method"]: f["hypervolume"] for f in front["fronts"] if f.get("scorer") == "oracle"}
        for method, hv in logged.items():  # what the comparison read equals what the front artifact holds
            assert compare["methods"][method]["hypervolume"] == pytest.approx(hv, rel=1e-6)
        assert summary["ui_health"] == 200
    finally:
        shutil.rmtree(work, ignore_errors=True)
