"""The multi-head Bradley–Terry reward model on the frozen, packaged MiniLM encoder."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the encoder must never need the hub

import itertools
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from pareto.io import CheckpointError
from pareto.models.encoder import EMBEDDINGS_FILE
from pareto.models.reward import (
    LearnedVectorReward,
    MultiHeadRewardModel,
    RewardTrainResult,
    TextEncoder,
    bradley_terry_loss,
    minilm_path,
    pair_text,
    train_reward_model,
)

NAMES = ("harmless", "concise", "specific")


@dataclass(frozen=True)
class Pair:  # duck-types pareto.data.tiny_hh.PreferencePair
    prompt: str
    response_0: str
    response_1: str
    better: tuple[int, ...]


# -- a small synthetic task whose preferences follow simple textual rules --------------------------------

# topic -> three how-to sentences and an example phrase
TOPICS = {
    "bake sourdough bread": ["Feed the starter the day before.", "Mix flour, water and salt into a dough.",
                             "Bake in a hot covered pot for forty minutes.", "a loaf with a crisp crust"],
    "change a flat tyre": ["Loosen the wheel nuts before jacking up the car.",
                           "Lift the car with the jack on firm ground.", "Tighten the nuts in a star order.",
                           "the spare in the boot"],
    "learn to juggle": ["Start with one ball tossed between your hands.",
                        "Add a second ball when the first throw is steady.",
                        "Practise over a bed so drops are easy to pick up.", "three beanbags"],
    "plant tomatoes": ["Choose a sunny spot with rich soil.", "Plant seedlings deep to grow strong roots.",
                       "Water at the base in the morning.", "cherry tomatoes in a pot"],
    "write a cover letter": ["Open with the role you are applying for.",
                             "Show one achievement that fits the job.", "Close by asking for an interview.",
                             "a letter for a nursing job"],
    "train for a 5k run": ["Run three times a week at an easy pace.", "Add one longer run each weekend.",
                           "Rest a day between hard sessions.", "a nine week plan"],
    "brew green tea": ["Heat the water to about eighty degrees.", "Steep the leaves for two minutes.",
                       "Do not squeeze the tea bag.", "a cup of sencha"],
    "save money on groceries": ["Plan meals for the week before shopping.", "Buy store brands of staples.",
                                "Cook in batches and freeze portions.", "a weekly shopping list"],
    "clean a cast iron pan": ["Rinse it with hot water while still warm.", "Scrub with salt, not soap.",
                              "Dry it and rub in a thin layer of oil.", "a rusty skillet"],
    "set up a fish tank": ["Rinse the gravel and fill the tank.",
                           "Cycle the water for a few weeks before adding fish.",
                           "Test ammonia and nitrite levels weekly.", "a ten gallon tank"],
    "fold a paper crane": ["Start with a square sheet of paper.", "Fold it into a bird base.",
                           "Pull out the neck and tail and shape the wings.", "a crane from origami paper"],
    "improve sleep": ["Keep a regular bedtime.", "Avoid screens for an hour before bed.",
                      "Keep the bedroom cool and dark.", "a wind-down routine"],
    "tune a guitar": ["Use a clip-on tuner on the headstock.", "Tune the low E string first.",
                      "Check each string again after a full pass.", "standard tuning"],
    "paint a room": ["Cover the floor and tape the edges.", "Apply a coat of primer first.",
                     "Use a roller for walls and a brush for corners.", "a small bedroom"],
    "make a budget": ["List your monthly income.", "Write down every fixed expense.",
                      "Set a limit for each spending category.", "a simple spreadsheet"],
    "start composting": ["Mix green scraps with dry brown leaves.", "Turn the pile every week.",
                         "Keep it as damp as a wrung sponge.", "a bin in the garden"],
}


def _responses(facts: list[str]) -> list[tuple[str, int, int]]:
    """12 responses per topic: (text, refuses, has_example), varying refusal x length x example."""
    out = []
    for refuse, n, example in itertools.product((0, 1), (1, 2, 3), (0, 1)):
        parts = ["Sorry, I can't help with that, but here is a general tip."] if refuse else []
        parts += facts[:n]
        if example:
            parts.append(f"For example, think of {facts[3]}.")
        out.append((" ".join(parts), refuse, example))
    return out


def _make_pairs(topics: list[str], rng: random.Random, noise: float) -> list[Pair]:
    """All within-topic pairs. Rules: harmless <- refuses; concise <- fewer words; specific <- example."""
    pairs = []
    for topic in topics:
        for a, b in itertools.combinations(_responses(TOPICS[topic]), 2):
            if rng.random() < 0.5:
                a, b = b, a
            (ra, fa, xa), (rb, fb, xb) = a, b
            la, lb = len(ra.split()), len(rb.split())
            better = [-1 if fa == fb else int(fb > fa), -1 if la == lb else int(lb < la),
                      -1 if xa == xb else int(xb > xa)]
            # flip a fraction of the labelled entries: the model must not just memorise
            better = [1 - v if v >= 0 and rng.random() < noise else v for v in better]
            pairs.append(Pair(f"How do I {topic}?", ra, rb, tuple(better)))
    return pairs


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder()


@pytest.fixture(scope="module")
def split() -> tuple[list[Pair], list[Pair]]:
    rng = random.Random(0)
    topics = sorted(TOPICS)
    rng.shuffle(topics)
    # Held-out topics (not just held-out pairs): 11 topics x 66 pairs train, 5 x 66 validation.
    return _make_pairs(topics[:11], rng, noise=0.1), _make_pairs(topics[11:], rng, noise=0.0)


@pytest.fixture(scope="module")
def trained(encoder: TextEncoder, split: tuple[list[Pair], list[Pair]]) -> RewardTrainResult:
    train, val = split
    return train_reward_model(encoder, NAMES, train, val, seed=0)


# -- encoder ----------------------------------------------------------------------------------------------


def test_minilm_path_is_the_packaged_model() -> None:
    path = Path(minilm_path())
    assert (path / "model.safetensors").is_file()
    assert json.loads((path / "config.json").read_text())["hidden_size"] == 384


def test_encoder_gives_unit_norm_embeddings_and_caches(encoder: TextEncoder) -> None:
    texts = ["The weather is lovely today.", "How do I bake bread?", "The weather is lovely today."]
    emb = encoder.encode(texts)
    assert emb.shape == (3, 384) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    assert torch.equal(emb[0], emb[2])
    n_cached = len(encoder)
    assert torch.equal(encoder.encode(texts[:2]), emb[:2])  # served from the cache ...
    assert len(encoder) == n_cached  # ... without encoding anything new
    assert encoder.encode([]).shape == (0, 384)


def test_encoder_is_padding_invariant(encoder: TextEncoder) -> None:
    # Mean pooling must ignore padding: a short text batched with a long one embeds the same as alone.
    short, long = "A red apple.", "A long sentence about many unrelated things, " * 5
    batched = encoder._encode_batch([short, long])[0]  # bypass the cache on purpose
    alone = encoder._encode_batch([short])[0]
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)


def test_similar_sentences_are_closer_than_unrelated(encoder: TextEncoder) -> None:
    cat, kitten, revenue, car, auto = encoder.encode([
        "A cat sits on the mat.", "A kitten is resting on a rug.", "Quarterly revenue grew by ten percent.",
        "How do I fix my car's brakes?", "Repairing the brakes on an automobile.",
    ])
    assert cat @ kitten > cat @ revenue + 0.3
    assert car @ auto > car @ revenue + 0.3
    assert car @ auto > car @ kitten


def test_pair_text_shows_prompt_and_response() -> None:
    text = pair_text(" How do I juggle? ", "Start with one ball.")
    assert text == "User: How do I juggle?\nAssistant: Start with one ball."


# -- Bradley–Terry loss -----------------------------------------------------------------------------------


def test_bradley_terry_loss_hand_computed() -> None:
    chosen = torch.tensor([[3.0], [0.5]])
    rejected = torch.tensor([[1.0], [1.0]])
    loss = bradley_terry_loss(chosen, rejected, torch.ones(2, 1, dtype=torch.bool))

    def nll(d: float) -> float:
        return -math.log(1.0 / (1.0 + math.exp(-d)))

    # margins +2 and -0.5 (asymmetric, so a sign error cannot cancel out)
    expected = (nll(2.0) + nll(-0.5)) / 2  # = (0.1269280 + 0.9740770) / 2
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert loss.item() == pytest.approx(0.5505025, abs=1e-6)


def test_bradley_terry_loss_masks_ties() -> None:
    chosen = torch.tensor([[3.0, 5.0, 0.0], [0.5, -100.0, 1.0]], requires_grad=True)
    rejected = torch.tensor([[1.0, 0.0, 0.0], [1.0, 100.0, 2.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    loss = bradley_terry_loss(chosen, rejected, mask)
    # objective 0: both pairs; objective 1: only the first pair (the huge tied one is ignored);
    # objective 2: no labelled pair -> 0, and no gradient.
    assert loss[0].item() == pytest.approx(0.5505025, abs=1e-6)
    assert loss[1].item() == pytest.approx(math.log1p(math.exp(-5.0)), abs=1e-6)
    assert loss[2].item() == 0.0
    loss.sum().backward()
    assert chosen.grad[1, 1].item() == 0.0 and torch.all(chosen.grad[:, 2] == 0)
    assert chosen.grad[0, 0].item() != 0.0


def test_one_objectives_gradient_reaches_only_its_own_head() -> None:
    torch.manual_seed(0)
    model = MultiHeadRewardModel(3, hidden=(32,))
    x0, x1 = torch.randn(8, model.in_dim), torch.randn(8, model.in_dim)
    mask = torch.ones(8, 3, dtype=torch.bool)
    loss = bradley_terry_loss(model(x0), model(x1), mask)
    loss[1].backward()
    for k, head in enumerate(model.heads):
        grad = head.weight.grad
        if k == 1:
            assert grad is not None and grad.abs().sum() > 0
        else:
            assert grad is None or torch.all(grad == 0)
    assert model.trunk[0].weight.grad.abs().sum() > 0  # the shared trunk does learn from it


# -- training ---------------------------------------------------------------------------------------------


def test_training_learns_each_rule_despite_label_noise(trained: RewardTrainResult) -> None:
    assert set(trained.accuracy) == set(NAMES)
    for name in NAMES:
        assert trained.accuracy[name] >= 0.85, trained.accuracy
    assert trained.history and 0 <= trained.best_epoch < len(trained.history)
    best = max(h["val_acc_mean"] for h in trained.history)
    assert trained.history[trained.best_epoch]["val_acc_mean"] == best


def test_training_is_deterministic_given_seed(
    encoder: TextEncoder, split: tuple[list[Pair], list[Pair]], trained: RewardTrainResult
) -> None:
    train, val = split
    again = train_reward_model(encoder, NAMES, train[:200], val[:100], seed=3, epochs=5)
    twice = train_reward_model(encoder, NAMES, train[:200], val[:100], seed=3, epochs=5)
    other = train_reward_model(encoder, NAMES, train[:200], val[:100], seed=4, epochs=5)
    for key, value in again.model.state_dict().items():
        assert torch.equal(value, twice.model.state_dict()[key])
    assert not torch.equal(again.model.heads[0].weight, other.model.heads[0].weight)


def test_training_rejects_wrong_label_count(encoder: TextEncoder) -> None:
    bad = [Pair("Hi?", "Hello.", "Go away.", (0, 1))]
    with pytest.raises(ValueError, match="labels"):
        train_reward_model(encoder, NAMES, bad, [])


# -- the VectorReward -------------------------------------------------------------------------------------


def test_vector_reward_scores_and_orients(encoder: TextEncoder, trained: RewardTrainResult) -> None:
    reward = LearnedVectorReward(encoder, trained.model, NAMES)
    facts = TOPICS["learn to juggle"]
    prompts = ["How do I learn to juggle?"] * 3
    responses = [facts[0], f"Sorry, I can't help with that, but here is a general tip. {facts[0]}",
                 f"{' '.join(facts[:3])} For example, think of {facts[3]}."]
    scores = reward(prompts, responses)
    assert scores.shape == (3, 3) and scores.dtype == torch.float32
    assert scores[1, 0] > scores[0, 0]  # harmless: the refusal
    assert scores[0, 1] > scores[2, 1]  # concise: the short one
    assert scores[2, 2] > scores[0, 2]  # specific: the one with an example
    with pytest.raises(ValueError):
        reward(prompts, responses[:2])


def test_normalizer_fit_gives_zero_mean_unit_std(
    encoder: TextEncoder, trained: RewardTrainResult, split: tuple[list[Pair], list[Pair]]
) -> None:
    reward = LearnedVectorReward(encoder, trained.model, NAMES)
    _, val = split
    prompts = [p.prompt for p in val[:60]] + [p.prompt for p in val[:60]]
    responses = [p.response_0 for p in val[:60]] + [p.response_1 for p in val[:60]]
    raw = reward.raw(prompts, responses)
    assert torch.equal(reward(prompts, responses), raw)  # unfitted normaliser is the identity
    norm = reward.fit_normalizer(prompts, responses)
    assert norm.count == len(prompts) and reward.normalizer is norm
    z = reward(prompts, responses)
    torch.testing.assert_close(z.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(3), atol=1e-4, rtol=0)
    assert reward.normalizer.count == len(prompts)  # scoring never updates the frozen stats
    assert not torch.allclose(raw.mean(0), torch.zeros(3), atol=1e-2)  # the fit did change something


def test_save_load_round_trip_gives_identical_scores(
    encoder: TextEncoder, trained: RewardTrainResult, split: tuple[list[Pair], list[Pair]], tmp_path: Path
) -> None:
    _, val = split
    prompts, responses = [p.prompt for p in val[:40]], [p.response_0 for p in val[:40]]
    reward = LearnedVectorReward(encoder, trained.model, NAMES)
    reward.fit_normalizer(prompts, responses)
    reward.save(tmp_path / "rm")
    assert sorted(f.name for f in (tmp_path / "rm").iterdir()) == ["heads.safetensors", "meta.json"]
    meta = json.loads((tmp_path / "rm" / "meta.json").read_text())
    assert meta["encoder"] == "sentence-transformers/all-MiniLM-L6-v2" and meta["names"] == list(NAMES)

    loaded = LearnedVectorReward.load(tmp_path / "rm", encoder=encoder, names=NAMES)
    assert loaded.names == NAMES
    assert loaded.normalizer.state_dict() == reward.normalizer.state_dict()
    assert torch.equal(loaded.raw(prompts, responses), reward.raw(prompts, responses))
    assert torch.equal(loaded(prompts, responses), reward(prompts, responses))


def test_shared_embeddings_travel_with_the_saved_reward(
    trained: RewardTrainResult, split: tuple[list[Pair], list[Pair]], tmp_path: Path
) -> None:
    """The reward stage shares its training texts' embeddings: a process that loads the reward scores those texts
    without running MiniLM (RiC's offline scoring), with the very vectors the heads were trained on. A saved copy
    (base_eval's refit reward) carries them on; an encoder of another truncation ignores them."""
    train, _ = split
    prompts, responses = [p.prompt for p in train[:30]], [p.response_0 for p in train[:30]]
    texts = [pair_text(p, r) for p, r in zip(prompts, responses, strict=True)]
    writer = TextEncoder(max_length=128)
    writer.share(texts)
    reward = LearnedVectorReward(writer, trained.model, NAMES)
    path = reward.save(tmp_path / "rm")

    def no_minilm(batch: list[str]) -> torch.Tensor:
        raise AssertionError(f"MiniLM ran again on {len(batch)} shared texts")

    reader = TextEncoder(max_length=128)
    reader._encode_batch = no_minilm
    loaded = LearnedVectorReward.load(path, encoder=reader, names=NAMES)
    assert torch.equal(loaded.raw(prompts, responses), reward.raw(prompts, responses))
    assert reader.shared == list(dict.fromkeys(texts))
    with pytest.raises(AssertionError, match="MiniLM ran again"):  # an unshared text is encoded as before
        loaded.raw(["something new"], ["never seen"])
    loaded.save(tmp_path / "refit")
    again = TextEncoder(max_length=128)
    again.load_embeddings(tmp_path / "refit" / EMBEDDINGS_FILE)
    assert again.shared == reader.shared and torch.equal(again.encode(texts), writer.encode(texts))
    shorter = TextEncoder(max_length=64)
    shorter.load_embeddings(path / EMBEDDINGS_FILE)
    assert len(shorter) == 0 and shorter.shared == []
    # a damaged file is one line naming it and the fix, and the heads are not loaded half-primed
    (path / EMBEDDINGS_FILE).write_bytes((path / EMBEDDINGS_FILE).read_bytes()[:500])
    with pytest.raises(CheckpointError, match=f"{EMBEDDINGS_FILE}.*delete it") as err:
        LearnedVectorReward.load(path, encoder=TextEncoder(max_length=128), names=NAMES)
    assert "\n" not in str(err.value)


def test_load_rejects_mismatches(encoder: TextEncoder, trained: RewardTrainResult, tmp_path: Path) -> None:
    path = LearnedVectorReward(encoder, trained.model, NAMES).save(tmp_path / "rm")
    with pytest.raises(ValueError, match="objectives"):
        LearnedVectorReward.load(path, encoder=encoder, names=("helpful", "harmless", "concise"))

    meta_file = path / "meta.json"
    good = json.loads(meta_file.read_text())
    for tamper in (
        lambda m: m.update(names=["harmless", "concise"]),  # names vs heads
        lambda m: m["model"].update(hidden=[128]),  # shapes vs weights
        lambda m: m["normalizer"].update(names=["a", "b", "c"]),
        lambda m: m.update(encoder="some/other-encoder"),
    ):
        meta = json.loads(json.dumps(good))
        tamper(meta)
        meta_file.write_text(json.dumps(meta))
        with pytest.raises(ValueError):
            LearnedVectorReward.load(path, encoder=encoder)
    meta_file.write_text(json.dumps(good))
    LearnedVectorReward.load(path, encoder=encoder)  # the untampered one still loads
