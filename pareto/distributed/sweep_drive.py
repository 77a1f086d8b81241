"""The sweep's drivers: Optuna ask/tell, or pymoo ask-and-tell recorded in the same Optuna storage, each trial a Ray
task, at most `concurrency` in flight, collected with `ray.wait` (`pareto.distributed.sweep`).

A killed driver leaves trials RUNNING in the storage: the next drive re-runs them with their own parameters under
their own trial number (Optuna), or replays pymoo's generations from the values in the storage (pymoo is
deterministic given its seed and the values it is told) and goes on where the killed one stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import ray
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from pareto.distributed.sweep_space import SearchSpace
from pareto.front.grid import n_das_dennis, preference_grid

_log = logging.getLogger("pareto.distributed.sweep")  # the sweep's one logger name, whichever module logs


def complete_trials(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


# submit(trial_number, params) -> ObjectRef of the trial's output; finish(trial, params, output) -> values.
Submit = Callable[[int, dict[str, Any]], Any]
Finish = Callable[[optuna.Trial, dict[str, Any], Any], list[float]]


@dataclass
class DriveStats:
    ran: list[int] = field(default_factory=list)        # trial numbers this process ran
    resumed: list[int] = field(default_factory=list)    # of which orphans of a killed driver
    failed: list[int] = field(default_factory=list)


def resume_orphan(study: optuna.Study, t: FrozenTrial, space: SearchSpace) -> optuna.Trial:
    """A trial a killed driver left RUNNING, to run again under its number with the parameters it drew. A kill
    inside `study.ask` (between creating the trial and suggesting its last parameter) leaves some undrawn: they are
    drawn now, as `ask` would have (it never reached Ray, so nothing of it ran)."""
    trial = optuna.trial.Trial(study, t._trial_id)
    for name, distribution in space.distributions().items():
        if name not in t.params:
            trial._suggest(name, distribution)  # what Study.ask does for each fixed distribution
    return trial


def _settle(study: optuna.Study, trial: optuna.Trial, params: dict, ref: Any, finish: Finish, stats: DriveStats,
            max_failed: int) -> list[float] | None:
    """Collect a finished Ray task: tell its values, or FAIL it (and stop once too many have failed)."""
    try:
        out = ray.get(ref)
        values = finish(trial, params, out)
    except Exception as err:  # a trial's failure is the study's data, not the driver's crash
        _log.warning("trial %d failed: %s", trial.number, err)
        study.tell(trial.number, state=TrialState.FAIL)
        stats.failed.append(trial.number)
        if len(stats.failed) > max_failed:
            raise RuntimeError(f"{len(stats.failed)} sweep trials failed (sweep.max_failed_trials={max_failed}); "
                               f"last error: {err}") from err
        return None
    study.tell(trial.number, values)
    stats.ran.append(trial.number)
    return values


def drive_optuna(study: optuna.Study, space: SearchSpace, submit: Submit, finish: Finish, n_trials: int,
                 concurrency: int, max_failed: int = 3, progress: bool = True) -> DriveStats:
    """Ask/tell until the study has `n_trials` COMPLETE trials, `concurrency` Ray tasks in flight at most.

    Trials left RUNNING by a killed driver are re-run first, with their own parameters and trial number.
    """
    stats = DriveStats()
    orphans = sorted(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)), key=lambda t: t.number)
    inflight: dict[Any, tuple[optuna.Trial, dict]] = {}
    done = len(complete_trials(study))
    keep = max(0, min(len(orphans), n_trials - done))
    for t in orphans[keep:]:
        study.tell(t.number, state=TrialState.FAIL)  # n_trials was lowered: close what is no longer wanted
    orphans = orphans[:keep]
    bar = tqdm(total=n_trials, initial=done, desc="sweep", unit="trial", disable=not progress)
    while True:
        while len(inflight) < concurrency and done + len(inflight) < n_trials:
            if orphans:
                trial = resume_orphan(study, orphans.pop(0), space)
                stats.resumed.append(trial.number)
            else:
                trial = study.ask(space.distributions())
            params = dict(trial.params)
            trial.set_user_attr("weights", space.weights(params))
            inflight[submit(trial.number, params)] = (trial, params)
        if not inflight:
            break
        ready, _ = ray.wait(list(inflight), num_returns=1)
        for ref in ready:
            trial, params = inflight.pop(ref)
            if _settle(study, trial, params, ref, finish, stats, max_failed) is not None:
                done += 1
                bar.update(1)
                bar.set_postfix_str(f"trial {trial.number}")
    bar.close()
    return stats


def pymoo_algorithm(name: str, space: SearchSpace, pop_size: int, x0: np.ndarray):
    """NSGA-II or NSGA-III whose first generation is `x0`; NSGA-III's reference directions are Das-Dennis."""
    k = len(space.objectives)
    if name == "pymoo-nsga3":
        from pymoo.algorithms.moo.nsga3 import NSGA3

        p = 1
        while n_das_dennis(k, p + 1) <= pop_size:
            p += 1
        ref_dirs = preference_grid(k, n_partitions=p)
        return NSGA3(ref_dirs=ref_dirs, pop_size=pop_size, sampling=x0)
    from pymoo.algorithms.moo.nsga2 import NSGA2

    return NSGA2(pop_size=pop_size, sampling=x0)


def pymoo_initial(space: SearchSpace, grid: np.ndarray, method_cfg: Any, pop_size: int, seed: int) -> np.ndarray:
    """The first generation: the preference grid (reference directions) at the configured hyper-parameters, then
    uniform draws in the box."""
    rng = np.random.default_rng(seed)
    rows = [space.encode(space.defaults(lam, method_cfg), rng) for lam in grid[:pop_size]]
    lo, hi = space.bounds()
    rows += [rng.uniform(lo, hi) for _ in range(pop_size - len(rows))]
    return np.array(rows)


def drive_pymoo(study: optuna.Study, space: SearchSpace, submit: Submit, finish: Finish, n_trials: int,
                concurrency: int, algorithm, seed: int, max_failed: int = 3, progress: bool = True) -> DriveStats:
    """pymoo ask-and-tell; every evaluation is an Optuna trial (user attrs pymoo_generation, pymoo_index).

    pymoo is deterministic given its seed and the values it is told, so a resumed sweep replays the generations
    already in the storage (reading values back, running nothing) and goes on from where the killed one stopped.
    """
    from pymoo.core.problem import Problem
    from pymoo.problems.static import StaticProblem

    xl, xu = space.bounds()
    problem = Problem(n_var=len(xl), n_obj=len(space.objectives), xl=xl, xu=xu)
    algorithm.setup(problem, termination=("n_eval", n_trials), seed=seed, verbose=False)
    stats = DriveStats()
    by_slot = _pymoo_slots(study, space)
    evaluated, generation = 0, 0
    bar = tqdm(total=n_trials, desc="sweep", unit="trial", disable=not progress)
    while evaluated < n_trials and algorithm.has_next():
        pop = algorithm.ask()
        pop = pop[: n_trials - evaluated]  # the last generation may be partial: exactly n_trials evaluations
        F = np.zeros((len(pop), len(space.objectives)))
        queue = _replay_generation(study, space, pop.get("X"), by_slot, generation, F, stats, bar)
        inflight: dict[Any, tuple[int, optuna.Trial, dict]] = {}
        while queue or inflight:
            while queue and len(inflight) < concurrency:
                i, trial, params = queue.pop(0)
                if trial is None:
                    study.enqueue_trial(params, user_attrs={"pymoo_generation": generation, "pymoo_index": i},
                                        skip_if_exists=False)
                    trial = study.ask(space.distributions())
                trial.set_user_attr("weights", space.weights(params))
                inflight[submit(trial.number, params)] = (i, trial, params)
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                i, trial, params = inflight.pop(ref)
                values = _settle(study, trial, params, ref, finish, stats, max_failed)
                if values is None:
                    queue.append((i, None, params))  # a failed evaluation is retried as a new trial
                    continue
                F[i] = -np.asarray(values)
                bar.update(1)
        algorithm.evaluator.eval(StaticProblem(problem, F=F), pop)
        algorithm.tell(infills=pop)
        evaluated += len(pop)
        generation += 1
    bar.close()
    return stats


def _pymoo_slots(study: optuna.Study, space: SearchSpace) -> dict[tuple[int, int], list[FrozenTrial]]:
    """The trials already in the storage, by their (generation, index) slot."""
    # A driver killed between enqueue and ask left WAITING trials: ask them now so they are RUNNING orphans of
    # their (generation, index) slot, never popped later by an ask meant for another individual.
    while study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        study.ask(space.distributions())
    by_slot: dict[tuple[int, int], list[FrozenTrial]] = {}
    for t in study.get_trials(deepcopy=False):
        if "pymoo_generation" in t.user_attrs:
            by_slot.setdefault((t.user_attrs["pymoo_generation"], t.user_attrs["pymoo_index"]), []).append(t)
    return by_slot


def _replay_generation(study: optuna.Study, space: SearchSpace, X: np.ndarray,
                       by_slot: dict[tuple[int, int], list[FrozenTrial]], generation: int,
                       F: np.ndarray, stats: DriveStats, bar: tqdm) -> list[tuple[int, optuna.Trial | None, dict]]:
    """Fill `F` with the values of this generation's individuals that a drive before finished; -> the queue of
    those left to run: (index, the orphan trial a killed driver left RUNNING or None for a new one, params)."""
    queue: list[tuple[int, optuna.Trial | None, dict]] = []
    for i, x in enumerate(X):
        params = space.decode(x)
        previous = by_slot.get((generation, i), [])
        done = next((t for t in previous if t.state == TrialState.COMPLETE), None)
        if done is not None:
            F[i] = -np.asarray(done.values)  # pymoo minimises
            bar.update(1)
            continue
        orphan = next((t for t in previous if t.state == TrialState.RUNNING), None)
        if orphan is not None:
            stats.resumed.append(orphan.number)
        queue.append((i, resume_orphan(study, orphan, space) if orphan is not None else None, params))
    return queue
