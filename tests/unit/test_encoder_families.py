"""Which encoder families and heads are served, and how each is called alike."""

import pytest
import torch
import transformers

from quantization.architectures import UnsupportedArchitectureError, check_architecture, model_class


def test_supported_families_and_heads_are_named_in_every_refusal() -> None:
    assert check_architecture({"model_type": "roberta", "architectures": ["RobertaForTokenClassification"]}) == (
        "RobertaForTokenClassification"
    )
    config = transformers.DistilBertConfig(architectures=["DistilBertForQuestionAnswering"])
    assert check_architecture(config, "ForQuestionAnswering") == "DistilBertForQuestionAnswering"
    with pytest.raises(UnsupportedArchitectureError, match="model_type 'gpt2' is not supported; supported: BERT, "):
        check_architecture({"model_type": "gpt2", "architectures": ["GPT2ForSequenceClassification"]})
    with pytest.raises(UnsupportedArchitectureError, match=r"\['BertForMaskedLM'\] has no SequenceClassification head"):
        check_architecture({"model_type": "bert", "architectures": ["BertForMaskedLM"]}, "ForSequenceClassification")
    with pytest.raises(UnsupportedArchitectureError, match="has no SequenceClassification or TokenClassification"):
        check_architecture({"model_type": "electra", "architectures": []})


def test_a_family_without_token_types_takes_and_ignores_them() -> None:
    assert model_class("BertForSequenceClassification") is transformers.BertForSequenceClassification
    cls = model_class("DistilBertForSequenceClassification")
    assert issubclass(cls, transformers.DistilBertForSequenceClassification)
    assert cls.__name__ == "DistilBertForSequenceClassification"  # what save_pretrained records
    torch.manual_seed(0)
    config = transformers.DistilBertConfig(vocab_size=30, dim=16, n_layers=1, n_heads=2, hidden_dim=32)
    model = cls(config).eval()
    ids = torch.tensor([[2, 7, 9, 3]])
    with torch.inference_mode():
        plain = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        typed = model(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids)).logits
    assert torch.equal(plain, typed)
