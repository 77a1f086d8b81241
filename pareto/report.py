"""The closing report of a run: each front's table, the vertex check, fluency, what the run trained on, and where
to look next. Pure text from a finished run's fronts (no MLflow, Ray or training imports): the CLI prints it, the
sweep reuses it for a conditioned method, the GPU check records it."""

from __future__ import annotations

import numpy as np

from pareto.config import ExperimentConfig


def summary(result, cfg: ExperimentConfig) -> str:
    """The closing report of a pipeline run: fronts, where they are tracked, how to look at them."""
    lines = [f"pareto: {cfg.name} (seed {cfg.seed}) finished in {result.seconds:.0f} s",
             "reward model held-out accuracy: "
             + ", ".join(f"{k} {v:.3f}" for k, v in result.reward_accuracy.items()), ""]
    stats = result.task.get("stats", {}) if getattr(result, "task", None) else {}
    if stats and result.task.get("pairs"):
        lines.insert(2, data_line(result.task))
    for name, front in result.fronts.items():
        lines += [f"== {name} ({front.meta.get('models_trained', '?')} model(s), "
                  f"{front.meta.get('train_seconds', 0):.0f} CPU-s of training) — {front.scorer.replace('_', ' ')} "
                  "scores", front.table(), *check_lines(front), ""]
    lines += [f"MLflow run {result.run_id} in experiment {result.experiment!r} at {result.tracking_uri}",
              "  read it back:  pareto front latest --json",
              f"  MLflow UI:     mlflow ui --backend-store-uri {result.tracking_uri} --host 127.0.0.1",
              "  explore it:    pareto ui      (then open http://127.0.0.1:8501)"]
    return "\n".join(lines)


def data_line(task: dict) -> str:
    """What the run trained on, and what the length rule and bad rows took away (never silently)."""
    st = task.get("stats", {})
    skipped = sum(v for k, v in st.items() if k.endswith("_rows_skipped"))
    dropped = sum(v for k, v in st.items() if k.endswith("_pairs_dropped"))
    return (f"data: {task['pairs'].get('train', 0)} train / {task['pairs'].get('val', 0)} val pairs, "
            f"{task['prompts'].get('eval', 0)} eval prompts; {skipped} bad rows skipped, {dropped} pairs dropped "
            f"(prompt too long), {st.get('prompts_shortened', 0)} prompts shortened to their last turns, "
            f"{st.get('train_responses_truncated', 0)} train pairs with a response cut at the budget"
            + (f", {st['train_pairs_dropped_long']} dropped (a response over the budget)"
               if st.get("train_pairs_dropped_long") else ""))


def check_lines(front) -> list[str]:
    """The vertex check (each objective highest at its own vertex, and above the base model there) in standard
    errors, and how fluent the answers stayed."""
    if len(front.points) < 2:
        return []
    sep = front.vertex_separation()
    gains = front.gain_over_base() if front.base_point is not None else None
    parts = []
    for i, name in enumerate(front.objectives):
        at = [j for j, p in enumerate(front.points) if abs(p.weights[i] - 1.0) < 1e-9]
        if not at:
            continue
        text = f"{name} {sep[i]:+.1f} SE over the other vertices"
        if gains is not None:
            text += f", {gains[at[0], i]:+.1f} SE over the base model"
        parts.append(text)
    lines = ["vertex check: " + "; ".join(parts)] if parts else []
    reps = [p.extra.get("repetition_rate", 0.0) for p in front.points]
    empty = [p.extra.get("empty_rate", 0.0) for p in front.points]
    lines.append(f"fluency: repetition rate {np.mean(reps):.3f} (max {max(reps):.3f}), empty answers "
                 f"{np.mean(empty):.3f} (max {max(empty):.3f})")
    return lines
