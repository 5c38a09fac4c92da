"""Tests for the TOFU evaluator: summarise() on a hand-made table, evaluate() end to end, the registry."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from tests.tiny_lm import make_model
from unlearn.benchmarks.base import Task
from unlearn.benchmarks.tofu.benchmark import tofu_task
from unlearn.benchmarks.tofu.data import TofuData
from unlearn.benchmarks.tofu.evaluator import TofuEvaluator, forget_truth_ratios
from unlearn.benchmarks.tofu.evaluator import summarise_tofu as summarise
from unlearn.data.format import QAFormatter
from unlearn.errors import ConfigError, DataError
from unlearn.evals import EVALUATORS, build_evaluators
from unlearn.evals.metrics import model_utility, rouge_l_recall
from unlearn.evals.scoring import answer_nll, greedy_generate

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "eval" / "tofu.yaml"


# ----------------------------------------------------------------------------- summarise on a hand table
def hand_items() -> pd.DataFrame:
    rows: list[dict[str, Any]] = []

    def add(
        split: str, prob: list[float], prob_norm: list[float], rouge: list[float], tr: list[float]
    ) -> None:
        for i in range(len(prob)):
            rows.append(
                {
                    "split": split,
                    "idx": i,
                    "prob": prob[i],
                    "prob_normalised": prob_norm[i],
                    "rouge": rouge[i],
                    "truth_ratio": tr[i],
                }
            )

    # prob_normalised on forget/retain and prob on real_authors/world_facts are deliberately absurd (0.01,
    # 0.99): summarise must not read them.
    add("forget", [0.5, 0.3], [0.01, 0.01], [1.0, 0.5], [0.5, 2.0])
    add("retain", [0.8, 0.6], [0.01, 0.01], [0.6, 0.8], [0.3, 1.5])
    add("real_authors", [0.99, 0.99], [0.6, 0.4], [1.0, 0.0], [0.5, 0.5])
    add("world_facts", [0.99, 0.99], [0.25, 0.75], [0.5, 0.5], [0.75, 0.25])
    # Shuffle the rows: aggregation must not depend on row order.
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0).reset_index(drop=True)


def test_summarise_hand_table() -> None:
    s = summarise(hand_items())
    # forget: prob (0.5+0.3)/2 = 0.4; rouge (1+0.5)/2 = 0.75; TR [0.5, 2] -> min(TR,1/TR) = [0.5, 0.5] -> 0.5
    assert s["forget_prob"] == pytest.approx(0.4)
    assert s["forget_rouge"] == pytest.approx(0.75)
    assert s["forget_truth_ratio"] == pytest.approx(0.5)
    # retain: prob 0.7; rouge 0.7; TR [0.3, 1.5] -> max(0, 1-TR) = [0.7, 0] -> 0.35
    assert s["retain_prob"] == pytest.approx(0.7)
    assert s["retain_rouge"] == pytest.approx(0.7)
    assert s["retain_truth_ratio"] == pytest.approx(0.35)
    # real_authors: normalised prob (0.6+0.4)/2 = 0.5; rouge 0.5; TR [0.5, 0.5] -> [0.5, 0.5] -> 0.5
    # world_facts: normalised prob 0.5; rouge 0.5; TR [0.75, 0.25] -> [0.25, 0.75] -> 0.5
    for split in ("real_authors", "world_facts"):
        for stat in ("prob", "rouge", "truth_ratio"):
            assert s[f"{split}_{stat}"] == pytest.approx(0.5), f"{split}_{stat}"
    # model utility = hmean(0.7, 0.7, 0.35, six x 0.5) = 9 / (10/7 + 10/7 + 20/7 + 6*2) = 9 / (124/7) = 63/124
    assert s["model_utility"] == pytest.approx(63 / 124, rel=1e-12)
    assert "forget_quality" not in s
    # forget log TR: (log 0.5 + log 2) / 2 = 0 (signed: the two items miss on opposite sides and cancel)
    assert s["forget_log_truth_ratio"] == pytest.approx(0.0, abs=1e-15)
    assert "forget_log_truth_ratio_gap" not in s  # needs the retain model
    assert set(s) == {"forget_truth_ratio", "forget_log_truth_ratio", "model_utility"} | {
        f"{sp}_{st}" for sp in ("forget", "retain", "real_authors", "world_facts") for st in ("prob", "rouge")
    } | {f"{sp}_truth_ratio" for sp in ("retain", "real_authors", "world_facts")}


def test_summarise_forget_quality() -> None:
    # Same forget TRs as the reference -> KS statistic 0 -> p = 1.
    assert summarise(hand_items(), [2.0, 0.5])["forget_quality"] == pytest.approx(1.0)
    # [0.5, 2] vs [10, 20]: fully separated, n = m = 2 -> D = 1; of the C(4, 2) = 6 equally likely orders, 2
    # put one sample entirely first: p = 2/6 = 1/3.
    assert summarise(hand_items(), [10.0, 20.0])["forget_quality"] == pytest.approx(1 / 3, rel=1e-12)


def test_signed_log_truth_ratio_tells_over_from_under_forgetting() -> None:
    items = hand_items()
    forget = items["split"] == "forget"
    items.loc[forget & (items["idx"] == 0), "truth_ratio"] = math.e
    items.loc[forget & (items["idx"] == 1), "truth_ratio"] = math.e ** 3
    retain_model = [math.exp(-1.0), math.exp(0.5)]  # mean log TR = -0.25
    s = summarise(items, retain_model)
    # ours: (1 + 3) / 2 = 2; retain model's: (-1 + 0.5) / 2 = -0.25; gap 2.25 > 0: prefers wrong answers more
    # than a model that never saw the forget set, i.e. over-forgetting.
    assert s["forget_log_truth_ratio"] == pytest.approx(2.0, rel=1e-12)
    assert s["forget_log_truth_ratio_retain"] == pytest.approx(-0.25, rel=1e-12)
    assert s["forget_log_truth_ratio_gap"] == pytest.approx(2.25, rel=1e-12)
    # The same folded statistic min(TR, 1/TR) for TR and 1/TR, but the opposite sign: under-forgetting.
    items.loc[forget, "truth_ratio"] = 1.0 / items.loc[forget, "truth_ratio"]
    flipped = summarise(items, retain_model)
    assert flipped["forget_truth_ratio"] == pytest.approx(s["forget_truth_ratio"], rel=1e-12)
    assert flipped["forget_log_truth_ratio_gap"] == pytest.approx(-2.0 + 0.25, rel=1e-12)
    # A model against itself: gap exactly 0.
    assert summarise(items, items.loc[forget].sort_values("idx")["truth_ratio"])["forget_log_truth_ratio_gap"] == 0


def test_summarise_forget_only_gives_the_full_summarys_forget_keys() -> None:
    items = hand_items()
    full = summarise(items, [10.0, 20.0])
    forget = summarise(items[items["split"] == "forget"], [10.0, 20.0], splits=("forget",))
    # The forget split's keys, with exactly the full summary's values; no utility (it needs the other splits).
    assert forget == {k: full[k] for k in ("forget_quality", "forget_prob", "forget_rouge", "forget_truth_ratio",
                                           "forget_log_truth_ratio", "forget_log_truth_ratio_retain",
                                           "forget_log_truth_ratio_gap")}
    assert forget["forget_quality"] == pytest.approx(1 / 3, rel=1e-12)
    with pytest.raises(ValueError, match="splits must include forget"):
        summarise(items, splits=("retain",))


def test_summarise_survives_csv_round_trip(tmp_path: Path) -> None:
    items = hand_items()
    items["nll_perturbed"] = [[1.0, 2.0]] * len(items)  # a list column, as evaluate() writes
    path = tmp_path / "items.csv"
    items.to_csv(path, index=False)
    assert summarise(pd.read_csv(path), [1.0, 3.0]) == summarise(items, [1.0, 3.0])


def test_summarise_errors() -> None:
    items = hand_items()
    with pytest.raises(ValueError, match="world_facts"):
        summarise(items[items["split"] != "world_facts"])
    with pytest.raises(ValueError, match="rouge"):
        summarise(items.drop(columns=["rouge"]))


# ----------------------------------------------------------------------------- evaluate on a tiny model
SENTENCES = [
    "Question: Where was the author born?\nAnswer: The author was born in Paris.",
    "Question: What does she write?\nAnswer: She writes crime novels and short stories.",
    "Question: Who is his father?\nAnswer: His father is a baker from Rome.",
    "the cat sat on the mat. a dog ran to the park. Which river flows through Rome?",
]


def qa(question: str, answer: str, para: str | None, perturbed: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"question": question, "answer": answer, "perturbed_answer": perturbed}
    if para is not None:
        row["paraphrased_answer"] = para
    return row


def make_data() -> TofuData:
    return TofuData(
        name="forget_test",
        retain=[],
        forget=[
            qa(
                "Where was the author born?",
                "The author was born in Paris.",
                "She was born in Paris.",
                ["The author was born in Rome.", "He was born on a mat.", "In the park."],
            ),
            qa(
                "What does she write?",
                "She writes crime novels.",
                "Crime novels.",
                [
                    "She writes short stories.",
                    "Her father is a baker.",
                    "A dog.",
                ],
            ),
            qa(
                "Who is his father?",
                "His father is a baker.",
                "A baker from Rome.",
                ["His father is a writer.", "A cat.", "The author."],
            ),
        ],
        retain_eval=[
            qa(
                "Where did the dog run?",
                "The dog ran to the park.",
                "To the park.",
                ["To Rome.", "To the mat."],
            ),
            qa(
                "Where did the cat sit?",
                "the cat sat on the mat",
                "On the mat.",
                ["On the dog.", "In Paris.", "In the park."],
            ),  # ragged: 3 perturbed vs 2 above
        ],
        real_authors=[
            qa("Who wrote crime novels?", "She wrote them.", None, ["A baker.", "The cat."]),
            qa("Where was she born?", "Paris.", None, ["Rome.", "The park."]),
        ],
        world_facts=[
            qa("Which river flows through Rome?", "The river of Rome.", None, ["The mat.", "A dog."]),
        ],
    )


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(
        SENTENCES,
        trainer=trainers.BpeTrainer(vocab_size=64, special_tokens=["<pad>", "<bos>", "<eos>", "<unk>"]),
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def formatter(tokenizer: PreTrainedTokenizerFast) -> QAFormatter:
    return QAFormatter(tokenizer, max_length=128)


@pytest.fixture(scope="module")
def model(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    return make_model(tokenizer, seed=0)


def task_of(data: TofuData, tokenizer: PreTrainedTokenizerFast, formatter: QAFormatter) -> Task:
    return tofu_task("tofu", data, tokenizer, formatter, {"target": "unused"})


@pytest.fixture(scope="module")
def task(tokenizer: PreTrainedTokenizerFast, formatter: QAFormatter) -> Task:
    return task_of(make_data(), tokenizer, formatter)


@pytest.fixture(scope="module")
def result(model: LlamaForCausalLM, task: Task) -> Any:
    evaluator = TofuEvaluator(batch_size=4, max_new_tokens=6)
    items = evaluator.evaluate(model, task)
    return SimpleNamespace(items=items, summary=evaluator.summarise(items, {}), forget_tr=forget_truth_ratios(items))


def test_evaluate_items_match_direct_scoring(
    result: Any, model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, formatter: QAFormatter
) -> None:
    data = make_data()
    items = result.items
    assert list(items["split"].value_counts().sort_index().items()) == [
        ("forget", 3),
        ("real_authors", 2),
        ("retain", 2),
        ("world_facts", 1),
    ]
    for split, rows in [
        ("forget", data.forget),
        ("retain", data.retain_eval),
        ("real_authors", data.real_authors),
        ("world_facts", data.world_facts),
    ]:
        sub = items[items["split"] == split].sort_values("idx")
        qs = [r["question"] for r in rows]
        answers = [r["answer"] for r in rows]
        assert sub["question"].tolist() == qs
        nll = answer_nll(model, formatter, qs, answers, batch_size=1)
        np.testing.assert_allclose(sub["nll"], nll, rtol=1e-5)
        np.testing.assert_allclose(sub["prob"], np.exp(-nll), rtol=1e-5)
        # Truth-ratio base: the paraphrase on forget/retain, the answer itself on real_authors/world_facts.
        base_key = "paraphrased_answer" if split in ("forget", "retain") else "answer"
        base = answer_nll(model, formatter, qs, [r[base_key] for r in rows], batch_size=1)
        np.testing.assert_allclose(sub["nll_paraphrased"], base, rtol=1e-5)
        for (_, item), row, b, t in zip(sub.iterrows(), rows, base, nll, strict=True):
            pert = answer_nll(
                model,
                formatter,
                [row["question"]] * len(row["perturbed_answer"]),
                row["perturbed_answer"],
                batch_size=1,
            )
            np.testing.assert_allclose(item["nll_perturbed"], pert, rtol=1e-5)
            assert item["nll_perturbed_mean"] == pytest.approx(pert.mean(), rel=1e-5)
            assert item["truth_ratio"] == pytest.approx(math.exp(b - pert.mean()), rel=1e-5)
            p = np.exp(-np.concatenate([[t], pert]))
            assert item["prob_normalised"] == pytest.approx(p[0] / p.sum(), rel=1e-5)
        gens = greedy_generate(model, tokenizer, formatter, qs, max_new_tokens=6, batch_size=1)
        assert sub["generation"].tolist() == gens
        np.testing.assert_allclose(sub["rouge"], rouge_l_recall(gens, answers), rtol=1e-12)


def test_evaluate_summary_is_summarise_of_items(result: Any) -> None:
    assert result.summary == summarise(result.items)
    assert "forget_quality" not in result.summary
    forget = result.items[result.items["split"] == "forget"].sort_values("idx")
    np.testing.assert_array_equal(result.forget_tr, forget["truth_ratio"].to_numpy())
    # A random model's greedy text shares no word with the answers: a ROUGE of 0 makes the utility 0.
    assert result.summary["model_utility"] == model_utility(result.summary)
    assert 0.0 <= result.summary["model_utility"] <= 1.0


def test_evaluate_forget_quality_and_batch_size_independence(result: Any, model: LlamaForCausalLM, task: Task) -> None:
    evaluator = TofuEvaluator(batch_size=1, max_new_tokens=6)
    items = evaluator.evaluate(model, task)
    summary = evaluator.summarise(items, {"retain": result.items})
    # Same model as the reference: identical TR samples up to float noise -> KS p-value 1.
    assert summary["forget_quality"] == pytest.approx(1.0)
    for key, value in result.summary.items():
        assert summary[key] == pytest.approx(value, rel=1e-5), key
    assert items["generation"].tolist() == result.items["generation"].tolist()


def test_evaluate_forget_is_the_forget_rows_of_evaluate(result: Any, model: LlamaForCausalLM, task: Task) -> None:
    evaluator = TofuEvaluator(batch_size=4, max_new_tokens=6)
    items = evaluator.evaluate_forget(model, task)
    assert set(items["split"]) == {"forget"}
    full = result.items[result.items["split"] == "forget"].reset_index(drop=True)
    pd.testing.assert_frame_equal(items.reset_index(drop=True), full)
    forget = evaluator.summarise_forget(items, {"retain": result.items})
    whole = evaluator.summarise(result.items, {"retain": result.items})
    assert forget == {k: whole[k] for k in forget} and "model_utility" not in forget
    assert forget["forget_quality"] == pytest.approx(1.0)


def test_max_items_per_split_takes_first_rows(model: LlamaForCausalLM, task: Task, result: Any) -> None:
    small = SimpleNamespace(items=TofuEvaluator(batch_size=4, max_new_tokens=6, max_items_per_split=1).evaluate(
        model, task))
    assert small.items.groupby("split").size().to_dict() == {
        "forget": 1,
        "real_authors": 1,
        "retain": 1,
        "world_facts": 1,
    }
    first = result.items[result.items["idx"] == 0].set_index("split")
    for _, row in small.items.iterrows():
        assert row["question"] == first.loc[row["split"], "question"]
        assert row["nll"] == pytest.approx(first.loc[row["split"], "nll"], rel=1e-5)


def test_evaluate_data_errors(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, formatter: QAFormatter
) -> None:
    evaluator = TofuEvaluator(max_new_tokens=2)
    data = make_data()
    del data.forget[1]["paraphrased_answer"]
    with pytest.raises(DataError, match=r"forget\[1\]: missing key 'paraphrased_answer'"):
        evaluator.evaluate(model, task_of(data, tokenizer, formatter))
    data = make_data()
    data.retain_eval[0]["perturbed_answer"] = "not a list"
    with pytest.raises(DataError, match=r"retain_eval\[0\]: 'perturbed_answer'"):
        evaluator.evaluate(model, task_of(data, tokenizer, formatter))
    data = make_data()
    data.world_facts = []
    with pytest.raises(DataError, match="world_facts: no rows"):
        evaluator.evaluate(model, task_of(data, tokenizer, formatter))


def test_forget_quality_needs_a_reference_sample(result: Any) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        summarise(result.items, [])


# ----------------------------------------------------------------------------- registry and config
def test_build_from_config_file() -> None:
    cfg = OmegaConf.load(CONFIG)
    (evaluator,) = build_evaluators({"tofu": cfg})
    assert isinstance(evaluator, TofuEvaluator)
    assert (evaluator.batch_size, evaluator.max_new_tokens) == (32, 200)
    assert evaluator.max_items_per_split is None and evaluator.rouge_stemmer is True
    assert "tofu" in EVALUATORS


def test_registry_errors() -> None:
    with pytest.raises(ConfigError, match=r"eval: unknown evaluator 'nope'; known: .*tofu"):
        build_evaluators({"nope": {}})
    with pytest.raises(ConfigError, match=r"eval: choose at least one evaluator"):
        build_evaluators({})
    with pytest.raises(ConfigError, match=r"eval\.tofu: bad settings"):
        build_evaluators({"tofu": {"batch_sz": 2}})
    with pytest.raises(ConfigError, match=r"eval\.tofu\.batch_size"):
        build_evaluators({"tofu": {"batch_size": 0}})
    with pytest.raises(ConfigError, match=r"eval\.tofu\.max_items_per_split"):
        TofuEvaluator(max_items_per_split=-1)
    with pytest.raises(ConfigError, match=r"eval\.tofu\.rouge_stemmer"):
        TofuEvaluator(rouge_stemmer="false")  # type: ignore[arg-type]
