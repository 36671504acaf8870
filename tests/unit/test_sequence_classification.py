"""The sequence-classification kind: TSV columns, pairs, label names or indices, multi-label and regression."""

from pathlib import Path

import pytest
import torch
import transformers

from quantization.feature_tensors import collate_training
from quantization.tasks.base import Example
from quantization.tasks.sequence_classification import Columns, SequenceClassificationTask, label_index, pearson
from tests.conftest import VOCAB


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> transformers.PreTrainedTokenizerBase:
    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    return transformers.BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)


class _Outputs:
    def __init__(self, logits: list[list[float]]) -> None:
        self.logits = torch.tensor(logits)


def test_pairs_are_read_from_named_columns_and_encoded_as_two_segments(
    tmp_path: Path, tokenizer: transformers.PreTrainedTokenizerBase
) -> None:
    data = tmp_path / "dev.tsv"
    data.write_text("premise\thypothesis\tgold\njohn lives in paris\tjohn works\tentailment\na film\tthe movie\t2\n")
    task = SequenceClassificationTask("nli", Columns(text="premise", pair="hypothesis", label="gold"))
    examples = task.read_examples(data)
    assert [ex.input for ex in examples] == [("john lives in paris", "john works"), ("a film", "the movie")]
    assert [ex.gold for ex in examples] == ["entailment", 2]
    (feature,) = task.preprocess(tokenizer, examples[0].input, 64)
    assert feature.input_ids.count(tokenizer.sep_token_id) == 2
    assert set(feature.token_type_ids) == {0, 1}
    task.check_labels(examples, ["entailment", "neutral", "contradiction"])
    with pytest.raises(ValueError, match="example 1: 'entailment' is neither one of the model's labels"):
        task.check_labels(examples, ["yes", "no", "maybe"])


def test_missing_columns_are_named(tmp_path: Path) -> None:
    data = tmp_path / "dev.tsv"
    data.write_text("sentence\tlabel\nx\t1\n")
    with pytest.raises(ValueError, match="`premise` and `label` and `hypothesis` columns; it has"):
        SequenceClassificationTask("nli", Columns(text="premise", pair="hypothesis")).read_examples(data)


def test_single_label_accuracy_accepts_names_and_indices() -> None:
    task = SequenceClassificationTask("intent")
    labels = [f"intent_{i}" for i in range(40)]
    logits = torch.full((40,), -1.0)
    logits[17] = 3.0
    prediction = task.postprocess("x", [], [logits], labels)
    assert prediction.label == "intent_17"
    assert len(prediction.scores) == 40
    assert prediction.score == pytest.approx(float(torch.softmax(logits, -1)[17]))
    examples = [Example("x", "intent_17"), Example("y", 17), Example("z", 3)]
    assert task.score(examples, [prediction] * 3) == {"accuracy": pytest.approx(2 / 3)}


def test_multi_label_applies_every_label_over_the_threshold_and_scores_micro_f1() -> None:
    task = SequenceClassificationTask("topics", problem_type="multi_label_classification")
    labels = ["sports", "politics", "science"]
    prediction = task.postprocess("x", [], [torch.tensor([2.0, -3.0, 1.0])], labels)
    assert prediction.labels == ("sports", "science")
    assert prediction.scores["politics"] == pytest.approx(float(torch.sigmoid(torch.tensor(-3.0))))
    scores = task.score([Example("x", ("sports", "politics"))], [prediction])
    # one true positive, one false positive (science), one false negative (politics)
    assert scores == {"micro_f1": pytest.approx(0.5), "subset_accuracy": 0.0}
    assert task.primary_metric == "micro_f1"


def test_regression_returns_the_output_and_scores_pearson() -> None:
    task = SequenceClassificationTask("similarity", problem_type="regression")
    prediction = task.postprocess("x", [], [torch.tensor([3.25])], ["LABEL_0"])
    assert prediction.label is None
    assert prediction.score == pytest.approx(3.25)
    assert prediction.scores == {}
    # covariance 4.5, variances 2 and 10.1667
    assert pearson([1.0, 2.0, 3.0], [2.0, 4.0, 6.5]) == pytest.approx(4.5 / (2 * 10.1667) ** 0.5, abs=1e-5)
    examples = [Example("a", 1.0), Example("b", 2.0), Example("c", 3.0)]
    predictions = [task.postprocess("x", [], [torch.tensor([v])], ["LABEL_0"]) for v in (0.5, 0.7, 0.9)]
    assert task.score(examples, predictions) == {"pearson": pytest.approx(1.0), "spearman": pytest.approx(1.0)}


def test_training_targets_by_problem_type(tokenizer: transformers.PreTrainedTokenizerBase) -> None:
    label2id = {"sports": 0, "politics": 1, "science": 2}
    multi = SequenceClassificationTask("topics", problem_type="multi_label_classification")
    regression = SequenceClassificationTask("similarity", problem_type="regression")
    single = SequenceClassificationTask("topic")
    features = [
        *multi.training_features(tokenizer, Example("a good film", ("science", 0)), 32, label2id),
        *multi.training_features(tokenizer, Example("a bad film .", ("politics",)), 32, label2id),
    ]
    batch = collate_training(features)
    assert batch["labels"].dtype == torch.float32
    assert batch["labels"].tolist() == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    (target,) = regression.training_features(tokenizer, Example("a film", 2.5), 32, {"LABEL_0": 0})
    assert collate_training([target])["labels"].tolist() == [2.5]
    (target,) = single.training_features(tokenizer, Example("a film", "politics"), 32, label2id)
    assert collate_training([target])["labels"].tolist() == [1]


def test_truncation_is_reported(tokenizer: transformers.PreTrainedTokenizerBase) -> None:
    task = SequenceClassificationTask("sst")
    (short,) = task.preprocess(tokenizer, "a good film", 16)
    (long,) = task.preprocess(tokenizer, " ".join(["film"] * 40), 16)
    assert len(long) == 16
    assert long.meta["truncated"]
    assert not short.meta.get("truncated", False)
    prediction = task.postprocess("x", [long], [torch.tensor([0.0, 1.0])], ["a", "b"])
    assert prediction.truncated


def test_labels_and_columns_are_validated() -> None:
    with pytest.raises(ValueError, match="neither one of the model's labels"):
        label_index("7", ["a", "b"])
    with pytest.raises(ValueError, match="distinct non-empty"):
        Columns(text="x", label="x")
    with pytest.raises(ValueError, match="problem_type must be one of"):
        SequenceClassificationTask("x", problem_type="ranking")
