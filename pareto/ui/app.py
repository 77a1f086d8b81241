"""pareto front explorer: pick a tracked pipeline run or sweep, see its fronts, slide λ, ask the model that serves it.

Started by `pareto ui` (Streamlit on 127.0.0.1). Reads MLflow and the run's artifacts only, through
`pareto.serving` and `pareto.tracking`; no training code is imported.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st
from mlflow.exceptions import MlflowException

from pareto.serving import ServedRun, compare_table
from pareto.ui import explorer as ex
from pareto.ui import store

GUIDANCE = (
    "No pareto pipeline run or sweep in the MLflow tracking store at `{uri}` yet.\n\n"
    "Run `pareto quickstart` (about 3 minutes on 2 CPU cores), then reload this page. To explore another "
    "store, start the explorer with `pareto ui --tracking-uri URI` or set `MLFLOW_TRACKING_URI`."
)
NO_FRONT = ("Run `{run}` has no front to explore ({err}). It may still be running, or it stopped before its "
            "fronts were logged: pick another run, or start one with `pareto quickstart`.")
MISSING_ARTIFACT = ("A model artifact of run `{run}` is missing or unreadable ({err}). The pipeline logs "
                    "`base_model/`, `reward_model/` and each method's `adapter/` with the run; if they were "
                    "deleted, run the pipeline again.")


def main() -> None:
    st.set_page_config(page_title="pareto · front explorer", layout="wide")
    # Streamlit forgets a widget's value when a rerun does not draw it; re-assigning keeps the run, method and
    # λ of the Explore page while the Compare page is open.
    for key in [k for k in st.session_state if k in ("run", "method", "compare_runs") or str(k).startswith("w_")]:
        st.session_state[key] = st.session_state[key]
    uri = store.tracking_uri()
    st.sidebar.title("pareto")
    page = st.sidebar.radio("page", ["Explore", "Compare"], key="page", horizontal=True)
    try:
        exps = store.experiments(uri)
    except Exception as err:  # a server that is down or a store that is not MLflow: say so, no traceback
        st.error(f"Cannot read the MLflow tracking store at `{uri}`: {err}")
        st.stop()
    if not exps:
        st.title("pareto front explorer")
        st.info(GUIDANCE.format(uri=uri))
        st.stop()
    names = dict(exps)
    if st.session_state.get("experiment") not in names:
        st.session_state.pop("experiment", None)
    exp_id = st.sidebar.selectbox("experiment", list(names), format_func=names.__getitem__, key="experiment")
    if page == "Explore":
        explore(uri, store.runs(uri, exp_id))
    else:
        compare(uri, exps, exp_id)
    st.sidebar.caption(f"tracking store: `{uri}`")


# ---------------------------------------------------------------------------------------------------- Explore
def explore(uri: str, runs: list[store.RunInfo]) -> None:
    infos = {r.run_id: r for r in runs}
    if st.session_state.get("run") not in infos:
        st.session_state.pop("run", None)
    run_id = st.sidebar.selectbox("run (pipeline or sweep)", list(infos), format_func=lambda i: infos[i].label,
                                  key="run")
    try:
        served = store.served_run(run_id, uri)
    except LookupError as err:
        st.title(infos[run_id].name)
        st.warning(NO_FRONT.format(run=run_id, err=err))
        st.stop()
    methods = list(served.fronts)
    if st.session_state.get("method") not in methods:
        st.session_state.pop("method", None)
    method = st.sidebar.selectbox("method", methods, key="method", format_func=lambda m: _method_label(served, m))
    front = served.fronts[method]

    st.title(f"{infos[run_id].name} · {method}")
    left, right = st.columns([1, 2], gap="large")
    with left:
        st.subheader("Preference λ")
        weights = sliders(front.objectives)
        choice = served.choose(method, weights)
        highlight = ex.served_index(front, weights, choice.point)
        st.markdown(f"**Served by** `{choice.model_uri}`")
        st.caption(choice.reason)
        p = front.points[highlight]
        mark = "the model's point" if choice.point is not None else "the evaluated λ nearest to yours"
        st.markdown(f"**In red on the chart**: {mark}, λ = {_fmt(p.weights)} → "
                    + ", ".join(f"{n} {v:.3f}" for n, v in zip(front.objectives, p.values, strict=True)))
        if front.base_point is not None:
            b = front.base_point
            st.markdown("**In black, the base model** (untrained, where training started): "
                        + ", ".join(f"{n} {v:.3f} ± {s:.3f}" for n, v, s in zip(front.objectives, b.values, b.stderr,
                                                                                  strict=True)))
            st.caption(ex.base_gain_text(front, highlight))
    with right:
        _metrics(front)
        view = st.radio("view", ex.views(front.k), horizontal=True, key=f"view_{front.k}",
                        label_visibility="collapsed")
        chart = st.empty()  # filled last, so an answer given in this rerun is on the chart too
        with st.expander(f"Evaluated points ({len(front)})" + (" and the base model" if front.base_point else "")):
            st.table(pd.DataFrame(ex.points_table(front, highlight)).set_index("point"))
    # The oracle front is drawn on oracle-scored fronts only: a reward-model front is on another scale.
    oracle = store.oracle_front(run_id, uri) if front.scorer == "oracle" else None
    if front.scorer != "oracle":
        right.caption(f"Scored by the {front.scorer.replace('_', ' ')} only: "
                      + ("the oracle front is on another scale and is not drawn." if served.has_oracle else
                         "this run's task has no oracle (real data), so there is no true front to compare with."))
    elif oracle is None:
        right.caption("This run logged no oracle front (`oracle/front.json`): the task has no known true front.")

    st.divider()
    st.subheader("Ask the model that serves λ")
    ask(served, method, weights)
    answer, answer_name = _answer_values(served, method, front)
    chart.plotly_chart(ex.front_figure(front, view, highlight, oracle=oracle, answer=answer, answer_name=answer_name),
                       key="front_chart")


def sliders(names: tuple[str, ...]) -> tuple[float, ...]:
    """One slider per objective, kept on the simplex: moving one rescales the others (in its callback, so the
    other sliders show their new values in the same rerun)."""
    keys = tuple(f"w_{n}" for n in names)
    current = [st.session_state.get(k) for k in keys]
    if None in current or not ex.on_grid(current):  # first visit, or another run's objectives
        for k, w in zip(keys, ex.equal_weights(len(keys)), strict=True):
            st.session_state[k] = w
    for i, (name, key) in enumerate(zip(names, keys, strict=True)):
        st.slider(name, 0.0, 1.0, step=ex.STEP, key=key, on_change=_moved, args=(keys, i), format="%.2f")
    weights = tuple(float(st.session_state[k]) for k in keys)
    st.markdown(ex.format_weights(names, weights))
    return weights


def _moved(keys: tuple[str, ...], index: int) -> None:
    current = [float(st.session_state[k]) for k in keys]
    for key, w in zip(keys, ex.renormalise(current, index, current[index]), strict=True):
        st.session_state[key] = w


def ask(served: ServedRun, method: str, weights: tuple[float, ...]) -> None:
    # The synthetic task's held-out prompts; a run without an oracle (real data) has none of them to offer.
    examples = served.example_prompts() if served.has_oracle else []
    if "prompt" not in st.session_state:
        st.session_state["prompt"] = examples[0] if examples else ""
    if examples:
        st.selectbox("example prompts (held out; the oracle can score answers to these)", examples, index=None,
                     key="example", on_change=lambda: st.session_state.update(prompt=st.session_state["example"]),
                     placeholder="pick one to fill the prompt")
    prompt = st.text_input("prompt", key="prompt")
    if st.button("Ask", key="ask", type="primary"):
        if not prompt.strip():
            st.warning("Type a prompt first.")
        else:
            with st.spinner("Answering (the first question to a model loads it)…"):
                try:
                    with store.model_lock(served.run_id, served.tracking_uri):
                        text, used = served.answer(method, prompt, weights)
                        scores = served.score(prompt, text)
                except (MlflowException, OSError, StopIteration) as err:
                    st.error(MISSING_ARTIFACT.format(run=served.run_id, err=f"{type(err).__name__}: {err}"))
                    return
            st.session_state["answer"] = {"run_id": served.run_id, "method": method, "prompt": prompt,
                                          "text": text, "weights": weights, "model_uri": used.model_uri,
                                          "reason": used.reason, "scores": scores}
    a = st.session_state.get("answer")
    if not a or a["run_id"] != served.run_id or a["method"] != method:
        return
    with st.container(border=True):
        st.markdown(f"**{_escape(a['prompt'])}**")
        st.success(_escape(a["text"]) or "*(empty answer)*")
        st.markdown(f"answered by `{a['model_uri']}` at λ = {_fmt(a['weights'])}")
        st.caption(a["reason"])
        rows = {"reward model (z-score)" if src == "reward_model" else src: vals for src, vals in a["scores"].items()}
        st.dataframe(pd.DataFrame(rows).T, width="content")


def _answer_values(served: ServedRun, method: str, front) -> tuple[list[float] | None, str]:
    """The last answer's scores by the front's own scorer (so the marker is on the chart's scale), and its name."""
    source, name = ("oracle", ex.ANSWER) if front.scorer == "oracle" else ("reward_model", ex.ANSWER_RM)
    a = st.session_state.get("answer")
    if (not a or a["run_id"] != served.run_id or a["method"] != method or source not in a["scores"]
            or not set(front.objectives) <= set(a["scores"][source])):
        return None, name
    return [a["scores"][source][n] for n in front.objectives], name


def _metrics(front) -> None:
    m, mask = front.metrics, front.nondominated_mask()
    oracle = front.scorer == "oracle"  # IGD needs the oracle front: not shown for reward-model fronts
    cols = iter(st.columns(4 if oracle else 3))
    next(cols).metric("hypervolume", f"{m.get('hypervolume', front.hypervolume()):.4f}",
                      help=f"against the reference point {_fmt(front.reference_point)} fixed in the config")
    if oracle:
        next(cols).metric("IGD to oracle", f"{m['igd']:.4f}" if "igd" in m else "n/a")
    next(cols).metric("inner product", f"{m['inner_product']:.3f}" if "inner_product" in m else "n/a")
    next(cols).metric("non-dominated", f"{int(mask.sum())}/{len(mask)}")


# ---------------------------------------------------------------------------------------------------- Compare
def compare(uri: str, exps: list[tuple[str, str]], exp_id: str) -> None:
    st.title("Compare fronts")
    infos = {r.run_id: (name, r) for eid, name in exps for r in store.runs(uri, eid)}
    mine = [r.run_id for r in store.runs(uri, exp_id)]
    # Set through the state, not `default=`, so keeping it across pages raises no Streamlit warning; runs
    # deleted since the last rerun drop out of the selection.
    st.session_state["compare_runs"] = [i for i in st.session_state.get("compare_runs", mine[:3]) if i in infos]
    chosen = st.multiselect("runs (pipelines and sweeps)", list(infos), key="compare_runs",
                            format_func=lambda i: f"{infos[i][0]} / {infos[i][1].label}")
    if not chosen:
        st.info("Pick one or more runs.")
        return
    entries = []
    for run_id in chosen:
        try:
            fronts = store.fronts(run_id, uri)
        except LookupError as err:
            st.warning(NO_FRONT.format(run=run_id, err=err))
            continue
        entries += [(f"{infos[run_id][1].name}·{run_id[:6]}", f) for f in fronts]
    if not entries:
        return
    objectives = entries[0][1].objectives
    drawn = [(label, f) for label, f in entries if f.objectives == objectives]
    if len(drawn) < len(entries):
        st.warning(f"Only fronts over {objectives} are overlaid; the others have different objectives.")
    if len(objectives) in (2, 3):
        # The oracle front only under oracle-scored fronts; reward-model fronts are on another scale.
        oracle = store.oracle_front(chosen[0], uri) if all(f.scorer == "oracle" for _, f in drawn) else None
        st.plotly_chart(ex.overlay_figure(drawn, oracle=oracle), key="compare_chart")
    else:
        st.info(f"{len(objectives)} objectives: fronts are overlaid for 2 or 3; the table compares them all.")
    rows = compare_table(entries)
    table = pd.DataFrame(rows)
    table["base"] = [None if b is None else _fmt(b, 3) for b in table["base"]]
    st.dataframe(table, hide_index=True, key="compare_table",
                 column_config={"training CPU-s": st.column_config.NumberColumn(format="%.0f"),
                                "hypervolume": st.column_config.NumberColumn(format="%.4f"),
                                "IGD": st.column_config.NumberColumn(format="%.4f"),
                                "inner product": st.column_config.NumberColumn(format="%.3f")})
    st.caption("Compute: training CPU-seconds summed over the method's models. Hypervolume against the reference "
               "point fixed in each config; base: the base model's point (mean per objective, by the front's "
               "scorer; in black on the chart); IGD to the task's oracle front; inner product = mean ⟨λ, value(λ)⟩.")
    st.plotly_chart(ex.cost_figure(rows), key="cost_chart")


def _method_label(served: ServedRun, method: str) -> str:
    front = served.fronts[method]
    if served.is_conditioned(method):
        return f"{method} (one model for every λ)"
    return f"{method} ({front.meta.get('models_trained', len(front))} models, one per λ)"


def _fmt(weights, digits: int = 2) -> str:
    return "(" + ", ".join(f"{w:.{digits}f}" for w in weights) + ")"


def _escape(text: str) -> str:
    """Model text shown as markdown: escape the characters markdown would interpret."""
    return "".join("\\" + c if c in "\\`*_{}[]<>()#+-.!|~$" else c for c in text)


main()
