"""Hessian sensitivity: hand-computable quadratics, and a tiny BERT block against its dense Hessian."""

from __future__ import annotations

import math

import pytest
import torch
import transformers

from quantization.hessian import (
    HutchinsonConfig,
    PowerIterationConfig,
    block_sensitivities,
    block_weights,
    hutchinson_trace,
    top_eigenvalue,
)
from quantization.structure import encoder_blocks


def _quadratic(matrix: torch.Tensor, split: int) -> tuple:
    """0.5·xᵀAx over x = (a, b), two parameters: its Hessian is A."""
    x = torch.randn(matrix.shape[0], dtype=torch.float64)
    a, b = x[:split].clone().requires_grad_(), x[split:].clone().requires_grad_()

    def loss() -> torch.Tensor:
        full = torch.cat([a, b])
        return 0.5 * full @ matrix @ full

    return loss, [a, b]


def _rotated(eigenvalues: list[float], seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T


def test_power_iteration_finds_the_largest_eigenvalue_of_a_known_matrix() -> None:
    torch.manual_seed(0)
    loss, params = _quadratic(_rotated([5.0, 2.0, -1.0, 0.5]), split=2)
    result = top_eigenvalue(loss, params, PowerIterationConfig(tolerance=1e-6, max_iterations=500))
    assert result.converged
    assert result.value == pytest.approx(5.0, rel=1e-4)


def test_a_dominant_negative_eigenvalue_is_reported_as_negative() -> None:
    torch.manual_seed(1)
    loss, params = _quadratic(_rotated([-7.0, 3.0, 1.0]), split=1)
    result = top_eigenvalue(loss, params, PowerIterationConfig(tolerance=1e-6, max_iterations=500))
    assert result.value == pytest.approx(-7.0, rel=1e-4)


def test_hutchinson_is_exact_on_a_diagonal_hessian_and_splits_by_parameter() -> None:
    loss, params = _quadratic(torch.diag(torch.tensor([4.0, -1.0, 2.5, 3.0], dtype=torch.float64)), split=1)
    result = hutchinson_trace(loss, params, HutchinsonConfig(min_samples=3))
    assert result.value == pytest.approx(8.5)
    assert result.standard_error == pytest.approx(0.0, abs=1e-12)
    assert result.samples == 3  # converged at once: every Rademacher sample is exact here
    assert result.per_parameter == pytest.approx((4.0, 4.5))


def test_hutchinson_estimates_a_dense_trace_within_its_error() -> None:
    torch.manual_seed(2)
    matrix = _rotated([3.0, 1.0, 2.0, -0.5, 4.0, 0.25])
    loss, params = _quadratic(matrix, split=3)
    result = hutchinson_trace(loss, params, HutchinsonConfig(max_samples=4000, min_samples=50, tolerance=0.01))
    assert abs(result.value - float(matrix.trace())) < 4 * result.standard_error + 1e-9
    assert sum(result.per_parameter) == pytest.approx(result.value)


def test_configs_are_validated() -> None:
    with pytest.raises(ValueError, match="tolerance"):
        PowerIterationConfig(tolerance=0)
    with pytest.raises(ValueError, match="min_samples"):
        HutchinsonConfig(min_samples=1)


def _tiny_bert(layers: int, hidden: int = 8, init: float = 0.5) -> transformers.BertForSequenceClassification:
    """Weights wider than BERT's 0.02 init: its Hessian at init has near-equal top magnitudes (±6.4e-4),
    where no power iteration can single one out; at 0.5 the top two are 12.5 and 7.9."""
    torch.manual_seed(3)
    config = transformers.BertConfig(
        vocab_size=30,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="eager",  # SDPA's CPU flash kernel has no double backward
        initializer_range=init,
    )
    return transformers.BertForSequenceClassification(config).double().eval()


def _loss_on(model: torch.nn.Module, seed: int):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 30, (4, 7), generator=generator)
    labels = torch.randint(0, 2, (4,), generator=generator)
    return lambda: model(input_ids=ids, labels=labels).loss


def test_a_tiny_bert_block_matches_its_dense_hessian() -> None:
    model = _tiny_bert(layers=1)
    block = encoder_blocks(model)[0]
    weights = block_weights(block.module)
    loss_fn = _loss_on(model, seed=0)
    names = [f"{block.name}.{name}" for name in weights]
    shapes = [w.shape for w in weights.values()]
    flat = torch.cat([w.detach().reshape(-1) for w in weights.values()])

    def loss_of(vector: torch.Tensor) -> torch.Tensor:
        tensors, start = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            tensors[name] = vector[start : start + shape.numel()].reshape(shape)
            start += shape.numel()
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(5, 30, (4, 7), generator=generator)
        labels = torch.randint(0, 2, (4,), generator=generator)
        return torch.func.functional_call(model, tensors, kwargs={"input_ids": ids, "labels": labels}).loss

    dense = torch.autograd.functional.hessian(loss_of, flat)
    eigenvalues = torch.linalg.eigvalsh((dense + dense.T) / 2)
    largest = eigenvalues[eigenvalues.abs().argmax()].item()
    found = top_eigenvalue(loss_fn, list(weights.values()), PowerIterationConfig(tolerance=1e-7, max_iterations=2000))
    assert found.value == pytest.approx(largest, rel=1e-3)
    trace = hutchinson_trace(loss_fn, list(weights.values()), HutchinsonConfig(max_samples=3000, tolerance=0.01))
    assert abs(trace.value - dense.trace().item()) < 4 * trace.standard_error + 1e-9


@pytest.mark.parametrize("layers", [2, 3])
def test_block_sensitivities_discover_every_block_and_summarize_batches(layers: int) -> None:
    model = _tiny_bert(layers=layers)
    loss_fns = [_loss_on(model, seed) for seed in range(3)]
    power = PowerIterationConfig(tolerance=1e-4, max_iterations=300)
    results = block_sensitivities(model, loss_fns, power, HutchinsonConfig(max_samples=50, tolerance=0.05))
    assert [r.block for r in results] == [f"bert.encoder.layer.{i}" for i in range(layers)]
    for result in results:
        assert len(result.eigenvalues) == len(result.traces) == 3
        assert result.omega == pytest.approx(abs(result.mean) + result.std)
        assert set(result.weight_traces) == set(block_weights(encoder_blocks(model)[0].module))
        assert all(math.isfinite(v) for v in result.eigenvalues)
    again = block_sensitivities(model, loss_fns, power, HutchinsonConfig(max_samples=50, tolerance=0.05))
    assert [r.eigenvalues for r in again] == [r.eigenvalues for r in results]  # seeded


def test_a_kernel_without_double_backward_is_named_with_the_fix() -> None:
    model = _tiny_bert(layers=1)
    model.config._attn_implementation = "sdpa"
    params = list(block_weights(encoder_blocks(model)[0].module).values())
    with pytest.raises(RuntimeError, match="attn_implementation='eager'"):
        top_eigenvalue(_loss_on(model, 0), params, PowerIterationConfig())
