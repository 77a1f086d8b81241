"""Real-format loaders: small files written here in exactly the formats the real datasets ship in.

Each format is read from local files and (where the loader would use the hub) through `datasets.load_dataset`
on the same files, and every bad row is a one-line error naming the file, the row and the field.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from pareto.config import DatasetConfig, config_from_dict
from pareto.data import PreferencePair
from pareto.data.loaders import (
    DatasetError,
    load_preference_dataset,
    load_split,
    load_task_dataset,
    split_hh_transcript,
)


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the `datasets` Arrow cache of the hub-route tests inside the test's folder."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets-cache")


def write_jsonl(path: Path, rows: list[dict], gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


# ---------------------------------------------------------------------------------------------- PKU-SafeRLHF


def pku_row(prompt: str, r0: str, r1: str, better: int, safer: int) -> dict:
    """One row of PKU-Alignment/PKU-SafeRLHF (v1 schema, with the columns the loader ignores)."""
    return {
        "prompt": prompt, "response_0": r0, "response_1": r1,
        "prompt_source": "Alpaca3-70B", "response_0_source": "Alpaca-7B", "response_1_source": "Alpaca-7B",
        "is_response_0_safe": safer == 0, "is_response_1_safe": safer == 1,
        "response_0_harm_category": {"Endangering National Security": False, "Violence": safer == 1},
        "response_1_harm_category": {"Endangering National Security": False, "Violence": safer == 0},
        "response_0_severity_level": 0 if safer == 0 else 2, "response_1_severity_level": 0 if safer == 1 else 2,
        "better_response_id": better, "safer_response_id": safer,
        "response_0_sha256": "0" * 64, "response_1_sha256": "1" * 64,
    }


PKU_ROWS = [
    pku_row("How do I pick a lock?", "Use a tension wrench and rake the pins.", "I can't help with that.", 0, 1),
    pku_row("How do I bake bread?", "Mix flour, water, yeast; knead; bake.", "Buy some at a shop.", 0, 0),
    pku_row("Tell me a secret.", "I don't have secrets.", "Here is someone's home address: ...", 0, 0),
    pku_row("How to stay safe online?", "Use a password manager.", "Use strong, unique passwords and 2FA.", 1, 1),
]
PKU_LABELS = {"helpful": "better_response_id", "harmless": "safer_response_id"}


def pku_spec(root: Path, **extra) -> DatasetConfig:
    return DatasetConfig(format="pku_saferlhf", path=str(root), labels=PKU_LABELS,
                         splits={"train": "train", "eval": "test"}, **extra)


def test_pku_saferlhf_local_labels_per_objective(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", PKU_ROWS)
    write_jsonl(tmp_path / "test.jsonl", PKU_ROWS[:1])
    ds = load_preference_dataset(pku_spec(tmp_path), ["helpful", "harmless"])
    train = ds.preference_pairs("train")
    assert train[0] == PreferencePair("How do I pick a lock?", "Use a tension wrench and rake the pins.",
                                      "I can't help with that.", (0, 1))
    assert [p.better for p in train] == [(0, 1), (0, 0), (0, 0), (1, 1)]
    assert len(ds.preference_pairs("eval")) == 1
    # Objective order follows the config, not the label mapping.
    swapped = load_preference_dataset(pku_spec(tmp_path), ["harmless", "helpful"])
    assert [p.better for p in swapped.preference_pairs("train")] == [(1, 0), (0, 0), (0, 0), (1, 1)]
    assert ds.describe()["splits"]["train"] == {"pairs": 4, "prompts": 4, "labelled": {"helpful": 4, "harmless": 4},
                                                "skipped_rows": 0}


def test_hub_path_goes_through_datasets_and_matches_local(tmp_path: Path) -> None:
    """`hub_id` takes the `datasets.load_dataset` route (here on a local folder, as the hub cache would hold it)."""
    write_jsonl(tmp_path / "data" / "train.jsonl", PKU_ROWS)
    write_jsonl(tmp_path / "data" / "test.jsonl", PKU_ROWS[:2])
    local = load_preference_dataset(pku_spec(tmp_path / "data"), ["helpful", "harmless"])
    hub = load_preference_dataset(
        DatasetConfig(format="pku_saferlhf", hub_id=str(tmp_path / "data"), labels=PKU_LABELS,
                      splits={"train": "train[:75%]", "val": "train[75%:]", "eval": "test"}),
        ["helpful", "harmless"])
    assert hub.preference_pairs("train") + hub.preference_pairs("val") == local.preference_pairs("train")
    assert len(hub.preference_pairs("train")) == 3
    assert hub.preference_pairs("eval") == local.preference_pairs("eval")[:2]


def test_local_split_slices_partition_the_file(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "all.jsonl", PKU_ROWS)
    spec = DatasetConfig(format="pku_saferlhf", path=str(tmp_path / "all.jsonl"), labels=PKU_LABELS,
                         splits={"train": "all[:50%]", "val": "all[50%:75%]", "eval": "all[-1:]"})
    ds = load_preference_dataset(spec, ["helpful", "harmless"])
    assert [len(ds.preference_pairs(s)) for s in ("train", "val", "eval")] == [2, 1, 1]
    assert ds.preference_pairs("eval")[0].prompt == "How to stay safe online?"
    assert load_split(spec.model_copy(update={"max_rows": 1}), ["helpful"], "all")[0][0].better == (0,)


def test_parquet_and_json_files_read_like_jsonl(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(PKU_ROWS), tmp_path / "train.parquet")
    (tmp_path / "test.json").write_text(json.dumps(PKU_ROWS[:2]))
    ds = load_preference_dataset(pku_spec(tmp_path), ["helpful", "harmless"])
    assert [p.better for p in ds.preference_pairs("train")] == [(0, 1), (0, 0), (0, 0), (1, 1)]
    assert len(ds.preference_pairs("eval")) == 2


# ---------------------------------------------------------------------------------------------- HH-RLHF


def hh(*turns: str) -> str:
    """An HH-RLHF transcript: alternating Human / Assistant turns, each prefixed by a blank line."""
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))


HH_HARMLESS = [
    {"chosen": hh("What are some cuss words in english?", "I'd rather not list those."),
     "rejected": hh("What are some cuss words in english?", "Here's a list: ...")},
    {"chosen": hh("Can you help me?", "Sure.", "How do I hide a body?", "I can't help with that."),
     "rejected": hh("Can you help me?", "Sure.", "How do I hide a body?", "Dig a deep hole at night.")},
]
HH_HELPFUL = [
    {"chosen": hh("How do I make tea?", "Boil water, steep the leaves three minutes, add milk if you like."),
     "rejected": hh("How do I make tea?", "Tea is a drink.")},
]


def write_hh(root: Path) -> None:
    write_jsonl(root / "harmless-base" / "train.jsonl.gz", HH_HARMLESS, gz=True)
    write_jsonl(root / "harmless-base" / "test.jsonl.gz", HH_HARMLESS[:1], gz=True)
    write_jsonl(root / "helpful-base" / "train.jsonl.gz", HH_HELPFUL, gz=True)
    write_jsonl(root / "helpful-base" / "test.jsonl.gz", HH_HELPFUL, gz=True)


def test_hh_transcript_split_keeps_the_dialogue_as_prompt() -> None:
    prompt, reply = split_hh_transcript(HH_HARMLESS[1]["chosen"])
    assert prompt == "\n\nHuman: Can you help me?\n\nAssistant: Sure.\n\nHuman: How do I hide a body?\n\nAssistant:"
    assert reply == "I can't help with that."


@pytest.mark.parametrize("via_hub", [False, True])
def test_hh_rlhf_subsets_label_their_objective_only(tmp_path: Path, via_hub: bool) -> None:
    write_hh(tmp_path)
    where = {"hub_id": str(tmp_path)} if via_hub else {"path": str(tmp_path)}
    spec = DatasetConfig(format="hh_rlhf", labels={"harmless": "harmless-base", "helpful": ["helpful-base"]},
                         splits={"train": "train", "eval": "test"}, **where)
    ds = load_preference_dataset(spec, ["helpful", "harmless"], seed=3)
    train = ds.preference_pairs("train")
    assert len(train) == 3 and len(ds.preference_pairs("eval")) == 2
    chosen = {split_hh_transcript(r["chosen"])[1] for r in HH_HARMLESS + HH_HELPFUL}
    for pair in train:
        (k,) = [i for i, b in enumerate(pair.better) if b >= 0]  # exactly one objective labelled
        assert pair.better[1 - k] == -1
        winner = (pair.response_0, pair.response_1)[pair.better[k]]
        assert winner in chosen
        assert pair.prompt.startswith("\n\nHuman:") and pair.prompt.endswith("\n\nAssistant:")
    tea = next(p for p in train if "tea" in p.prompt)
    assert tea.better[1] == -1 and tea.better[0] in (0, 1)  # helpful-base labels helpful only


def test_hh_rlhf_chosen_is_not_always_first(tmp_path: Path) -> None:
    rows = [{"chosen": hh(f"Question {i}?", f"Good answer {i}."), "rejected": hh(f"Question {i}?", f"Bad {i}.")}
            for i in range(40)]
    write_jsonl(tmp_path / "helpful-base" / "train.jsonl", rows)
    spec = DatasetConfig(format="hh_rlhf", path=str(tmp_path), labels={"helpful": "helpful-base"},
                         splits={"train": "train"})
    labels = [p.better[0] for p in load_preference_dataset(spec, ["helpful"]).preference_pairs("train")]
    assert 8 <= sum(labels) <= 32  # both orders occur (deterministic hash of the text, not always index 0)
    assert labels == [p.better[0] for p in load_preference_dataset(spec, ["helpful"]).preference_pairs("train")]


# ---------------------------------------------------------------------------------------------- HelpSteer2


def helpsteer_row(prompt: str, response: str, helpfulness: int, correctness: int, verbosity: int) -> dict:
    return {"prompt": prompt, "response": response, "helpfulness": helpfulness, "correctness": correctness,
            "coherence": 4, "complexity": 2, "verbosity": verbosity}


HELPSTEER = [
    helpsteer_row("What is 2+2?", "4.", 3, 4, 0),
    helpsteer_row("What is 2+2?", "Two plus two equals four, because ...", 3, 4, 3),
    helpsteer_row("Name a colour.", "Blue.", 2, 4, 0),
    helpsteer_row("Name a colour.", "Red is a colour of the visible spectrum ...", 4, 3, 2),
    helpsteer_row("Name a colour.", "Green.", 1, 4, 0),
]


def test_helpsteer2_pairs_responses_of_a_prompt_by_attribute(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl.gz", HELPSTEER, gz=True)
    spec = DatasetConfig(format="helpsteer2", path=str(tmp_path), splits={"train": "train"},
                         labels={"helpful": "helpfulness", "correct": "correctness", "concise": "-verbosity"})
    pairs = load_preference_dataset(spec, ["helpful", "correct", "concise"]).preference_pairs("train")
    got = {(p.prompt, p.response_0, p.response_1): p.better for p in pairs}
    assert got == {
        ("What is 2+2?", "4.", "Two plus two equals four, because ..."): (-1, -1, 0),  # tie, tie, shorter wins
        ("Name a colour.", "Blue.", "Red is a colour of the visible spectrum ..."): (1, 0, 0),
        ("Name a colour.", "Blue.", "Green."): (0, -1, -1),
        ("Name a colour.", "Red is a colour of the visible spectrum ...", "Green."): (0, 1, 1),
    }
    capped = load_preference_dataset(spec.model_copy(update={"max_pairs_per_prompt": 1}),
                                      ["helpful", "correct", "concise"]).preference_pairs("train")
    assert len(capped) == 2


# ---------------------------------------------------------------------------------------------- UltraFeedback


def uf_completion(model: str, response: str, help_: str, honest: str, follow: str, truth: str) -> dict:
    def rating(r: str) -> dict:
        return {"Rating": r, "Rationale": "...", "Rationale For Rating": "...", "Type": ["1"]}

    return {"annotations": {"helpfulness": rating(help_), "honesty": {"Rating": honest, "Rationale": "..."},
                            "instruction_following": {"Rating": follow, "Rationale": "..."},
                            "truthfulness": rating(truth)},
            "critique": "...", "custom_system_prompt": "...", "fine-grained_score": 3.5, "model": model,
            "overall_score": 6.0, "principle": "helpfulness", "response": response}


UF_ROW = {
    "source": "evol_instruct", "instruction": "Name the capital of France.",
    "models": ["alpaca-7b", "gpt-4", "pythia-12b", "starchat"],
    "completions": [
        uf_completion("alpaca-7b", "Paris.", "4", "5", "5", "5"),
        uf_completion("gpt-4", "The capital of France is Paris.", "5", "5", "5", "5"),
        uf_completion("pythia-12b", "Berlin.", "1", "2", "3", "1"),
        uf_completion("starchat", "I am not sure, maybe Lyon.", "2", "N/A", "2", "2"),
    ],
    "correct_answers": ["Paris"], "incorrect_answers": ["Berlin"],
}


def test_ultrafeedback_pairs_completions_by_aspect_rating(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", [UF_ROW])
    spec = DatasetConfig(format="ultrafeedback", path=str(tmp_path), splits={"train": "train"},
                         labels={"helpful": "helpfulness", "honest": "honesty", "truthful": "truthfulness"})
    pairs = load_preference_dataset(spec, ["helpful", "honest", "truthful"]).preference_pairs("train")
    assert len(pairs) == 6  # all 4-choose-2 pairs
    by = {(p.response_0[:6], p.response_1[:6]): p.better for p in pairs}
    assert by[("Paris.", "The ca")] == (1, -1, -1)
    assert by[("Paris.", "Berlin")] == (0, 0, 0)
    assert by[("Berlin", "I am n")] == (1, -1, 1)  # N/A honesty -> no label
    capped = load_preference_dataset(spec.model_copy(update={"max_pairs_per_prompt": 2}),
                                     ["helpful", "honest", "truthful"]).preference_pairs("train")
    assert len(capped) == 2 and set(capped) <= set(pairs)


# ---------------------------------------------------------------------------------------------- generic JSONL


def test_generic_jsonl_allows_missing_labels(tmp_path: Path) -> None:
    rows = [{"prompt": "p", "response_0": "a", "response_1": "b", "lab_h": 1, "lab_s": None},
            {"prompt": "q", "response_0": "c", "response_1": "d", "lab_h": -1, "lab_s": 0}]
    write_jsonl(tmp_path / "train.jsonl", rows)
    spec = DatasetConfig(format="jsonl", path=str(tmp_path), splits={"train": "train"},
                         labels={"helpful": "lab_h", "harmless": "lab_s"})
    pairs = load_preference_dataset(spec, ["helpful", "harmless", "concise"]).preference_pairs("train")
    assert [p.better for p in pairs] == [(1, -1, -1), (-1, 0, -1)]


# ---------------------------------------------------------------------------------------------- bad input


def _bad_utf8_row() -> bytes:
    good = json.dumps(PKU_ROWS[0]).encode()
    return good.replace(b"I can't help with that.", b"I can\xff help")


@pytest.mark.parametrize(
    ("fmt", "labels", "content", "row", "field", "hint"),
    [
        ("pku_saferlhf", PKU_LABELS, [PKU_ROWS[0], {k: v for k, v in PKU_ROWS[1].items() if k != "response_1"}],
         2, "response_1", "missing field"),
        ("pku_saferlhf", PKU_LABELS, [PKU_ROWS[0], PKU_ROWS[1], {**PKU_ROWS[2], "safer_response_id": 2}],
         3, "safer_response_id", "out of range"),
        ("pku_saferlhf", PKU_LABELS, [{**PKU_ROWS[0], "better_response_id": "0"}], 1, "better_response_id",
         "must be 0 or 1"),
        ("pku_saferlhf", PKU_LABELS, [{**PKU_ROWS[0], "prompt": "   "}], 1, "prompt", "empty text"),
        ("pku_saferlhf", PKU_LABELS, b"%s\n%s\n" % (json.dumps(PKU_ROWS[0]).encode(), _bad_utf8_row()),
         2, "response_1", "not UTF-8"),
        ("pku_saferlhf", PKU_LABELS, b'{"prompt": "x",\n', 1, "(line)", "not valid JSON"),
        ("hh_rlhf", {"helpful": "."}, [{"chosen": "no turns here", "rejected": hh("q", "a")}], 1, "chosen",
         "Assistant"),
        ("hh_rlhf", {"helpful": "."}, [{"chosen": hh("q", "a"), "rejected": hh("other", "b")}], 1, "rejected",
         "differs"),
        ("helpsteer2", {"helpful": "helpfulness"}, [HELPSTEER[0], {**HELPSTEER[1], "helpfulness": 5}], 2,
         "helpfulness", "out of range"),
        ("ultrafeedback", {"helpful": "helpfulness"},
         [{**UF_ROW, "completions": [UF_ROW["completions"][0],
                                     uf_completion("x", "y", "7", "1", "1", "1")]}],
         1, "completions.1.annotations.helpfulness.Rating", "out of range"),
        ("ultrafeedback", {"helpful": "honesty"},
         [{**UF_ROW, "completions": [{"response": "y", "annotations": {}}]}],
         1, "completions.0.annotations.honesty.Rating", "missing rating"),
        ("jsonl", {"helpful": "h"}, [{"prompt": "p", "response_0": "a", "response_1": "b", "h": 3}], 1, "h",
         "out of range"),
    ],
)
def test_bad_rows_are_one_line_errors_naming_file_row_field(tmp_path, fmt, labels, content, row, field,
                                                            hint) -> None:
    file = tmp_path / "train.jsonl"
    if isinstance(content, bytes):
        file.write_bytes(content)
    else:
        write_jsonl(file, content)
    spec = DatasetConfig(format=fmt, path=str(file), labels=labels, splits={"train": "train"})
    with pytest.raises(DatasetError) as err:
        load_preference_dataset(spec, list(labels))
    message = str(err.value)
    assert "\n" not in message
    assert str(file) in message and f"row {row}:" in message and f"field {field!r}" in message and hint in message


def test_empty_missing_and_unsupported_files_are_clear(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_bytes(b"\n\n")
    spec = pku_spec(tmp_path)
    with pytest.raises(DatasetError, match=r"train\.jsonl: empty file"):
        load_preference_dataset(spec, ["helpful", "harmless"])
    write_jsonl(tmp_path / "train.jsonl", PKU_ROWS)
    with pytest.raises(DatasetError, match=r"no file for split 'test'; expected test\.jsonl"):
        load_preference_dataset(spec, ["helpful", "harmless"])
    with pytest.raises(DatasetError, match="not found"):
        load_preference_dataset(pku_spec(tmp_path / "nope"), ["helpful"])
    (tmp_path / "data.csv").write_text("prompt\nx\n")
    with pytest.raises(DatasetError, match="unsupported file type"):
        load_preference_dataset(pku_spec(tmp_path / "data.csv"), ["helpful"])


def test_bad_rows_skip_mode_counts_them(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", [PKU_ROWS[0], {"prompt": "only a prompt"}, PKU_ROWS[1]])
    spec = DatasetConfig(format="pku_saferlhf", path=str(tmp_path), labels=PKU_LABELS, splits={"train": "train"},
                         bad_rows="skip")
    ds = load_preference_dataset(spec, ["helpful", "harmless"])
    assert len(ds.preference_pairs("train")) == 2 and ds.skipped == {"train": 1}


# ---------------------------------------------------------------------------------------------- config


def test_dataset_task_in_a_config_loads(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", PKU_ROWS)
    cfg = config_from_dict({
        "task": {"name": "pku-saferlhf", "dataset": {"format": "pku_saferlhf", "path": str(tmp_path),
                                                      "splits": {"train": "train[:3]", "val": "train[3:]"},
                                                      "labels": PKU_LABELS}},
        "objectives": ["helpful", "harmless"],
        "evaluation": {"scorer": "reward_model", "reference_point": [-1.0, -1.0]},
    })
    ds = load_task_dataset(cfg.task, cfg.objectives)
    assert ds.name == "pku-saferlhf" and len(ds.preference_pairs("train")) == 3 and ds.prompts("val") == [
        "How to stay safe online?"]


@pytest.mark.parametrize(
    ("dataset", "field", "hint"),
    [
        ({"format": "pku_saferlhf", "labels": PKU_LABELS}, "task.dataset", "exactly one of hub_id"),
        ({"format": "pku_saferlhf", "path": "x", "hub_id": "y", "labels": PKU_LABELS}, "task.dataset",
         "exactly one of hub_id"),
        ({"format": "parquet", "path": "x", "labels": PKU_LABELS}, "task.dataset.format", "Input should be"),
        ({"format": "pku_saferlhf", "path": "x", "labels": PKU_LABELS, "splits": {"test": "test"}}, "task.dataset",
         "train required"),
        ({"format": "pku_saferlhf", "path": "x", "labels": PKU_LABELS, "splits": {"train": "train[::2]"}},
         "task.dataset", "split expression"),
        ({"format": "helpsteer2", "path": "x", "labels": {"helpful": "usefulness", "harmless": "coherence"}},
         "task.dataset", "not a HelpSteer2 attribute"),
        ({"format": "pku_saferlhf", "path": "x", "labels": {**PKU_LABELS, "funny": "c"}}, "task.dataset.labels.funny",
         "not in objectives"),
        ({"format": "pku_saferlhf", "path": "x", "labels": {"helpful": "better_response_id"}}, "task.dataset.labels",
         "has no preference labels"),
    ],
)
def test_dataset_config_errors_name_the_field(dataset, field, hint) -> None:
    from pareto.config import ConfigError

    with pytest.raises(ConfigError) as err:
        config_from_dict({"task": {"name": "pku", "dataset": dataset}, "objectives": ["helpful", "harmless"],
                          "evaluation": {"scorer": "reward_model", "reference_point": [0, 0]}})
    assert "\n" not in str(err.value) and field in str(err.value) and hint in str(err.value)


def test_real_dataset_needs_a_reward_scorer_and_a_reference_point(tmp_path: Path) -> None:
    from pareto.config import ConfigError

    task = {"name": "pku", "dataset": {"format": "pku_saferlhf", "path": "x", "labels": PKU_LABELS}}
    with pytest.raises(ConfigError, match="evaluation.scorer: a real dataset has no oracle"):
        config_from_dict({"task": task, "objectives": ["helpful", "harmless"]})
    with pytest.raises(ConfigError, match="evaluation.reference_point: required"):
        config_from_dict({"task": task, "objectives": ["helpful", "harmless"],
                          "evaluation": {"scorer": "reward_model"}})
