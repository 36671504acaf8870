"""The aot backend on tiny random BERTs: the packed model compiled ahead of time computes the formula, models of one
structure share one package and each runs its own weights, inputs the package was not compiled for run eager, and
where a package cannot be built or disagrees with its model, the packed backend serves."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from quantization.runtime import ahead_of_time, load_model, random_inputs, warm_up
from quantization.runtime import packed_kernels as kernels
from quantization.runtime.ahead_of_time import AheadOfTimeModel, AheadOfTimeOptions, compile_ahead
from quantization.runtime.loaded import BackendMismatchError
from quantization.runtime.packed_linear import PackedLinear
from quantization.runtime.torch_internals import InternalsChangedError
from service.protocol import ArtifactRef, RunBatch, WorkerSpec
from service.worker import InferenceWorker
from tests.conftest import make_tiny_checkpoint
from tests.integration.backends import MIXED, against_float64, build_tiny

UNAVAILABLE = kernels.unavailable_reason()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"packed kernels unavailable: {UNAVAILABLE}")


@pytest.fixture(scope="module")
def package_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One package cache for the module's tests: a structure compiled by one test is loaded by the next."""
    return tmp_path_factory.mktemp("aot-packages")


@pytest.fixture(autouse=True)
def _packages_in(package_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ahead_of_time.CACHE_ENV, str(package_cache))


def _aot(artifact: Path) -> object:
    return warm_up(load_model(artifact, backend="aot"))


@pytest.mark.parametrize(
    ("task", "precision", "layer_bits"),
    [("sst2", "w8", None), ("sst2", "w4g128", MIXED), ("ner", "w3g128", None), ("qa", "w2g128", MIXED)],
)
def test_the_aot_backend_computes_the_formula(
    tmp_path: Path, tiny_checkpoints: dict, task: str, precision: str, layer_bits: dict | None
) -> None:
    """Against s_t·x_q·(s·(c − z))ᵀ + b in float64 from the artifact's own codes: 8 bits, a plan mixing 2, 3, 4 and 8
    bits, 3 bits alone, and the token and span heads; with a padded row. The codes stay packed."""
    artifact = build_tiny(tmp_path, tiny_checkpoints[task], task, precision, layer_bits)
    loaded = _aot(artifact)
    assert loaded.backend == "aot"
    assert isinstance(loaded.model, AheadOfTimeModel)
    assert all(layer.packed for layer in loaded.model.eager.modules() if isinstance(layer, PackedLinear))
    ours, exact = against_float64(loaded, tiny_checkpoints[task], task, artifact)
    for got, want in zip(ours, exact, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-5)


SHARED = ("sst2", "w4g128")


def _two_models_of_one_structure(tmp_path: Path) -> list[Path]:
    return [
        build_tiny(
            tmp_path / f"seed{seed}", make_tiny_checkpoint(tmp_path / f"c{seed}", "sst2", seed=seed), "sst2", "w4g128"
        )
        for seed in (1, 2)
    ]


def test_models_of_one_structure_share_a_package_each_with_its_own_weights(tmp_path: Path, package_cache: Path) -> None:
    """Two checkpoints of one shape, one package; each model's outputs are its own eager model's (the folded
    constants too), not the other's. The package holds no weights: it is far smaller than the model's codes."""
    before = set(package_cache.glob("*.pt2"))
    first, second = (_aot(artifact) for artifact in _two_models_of_one_structure(tmp_path))
    added = set(package_cache.glob("*.pt2")) - before
    assert len(added) == 1
    inputs = random_inputs(3, 19, first.config.vocab_size, torch.Generator().manual_seed(3))
    inputs["attention_mask"][2, 9:] = 0
    with torch.inference_mode():
        outputs = [(m.model(**inputs).logits, m.model.eager(**inputs).logits) for m in (first, second)]
    for ahead, eager in outputs:
        torch.testing.assert_close(ahead, eager, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(outputs[0][0], outputs[1][0], rtol=1e-2, atol=1e-4)
    assert next(iter(added)).stat().st_size < 2 * first.runtime_bytes + 5_000_000  # code, not codes


def test_inputs_the_package_was_not_compiled_for_run_eager(tmp_path: Path, tiny_checkpoints: dict) -> None:
    """Compiled kernels do not check indices (one past a table stops the process): a sequence longer than the
    position table or a token id past the vocabulary is refused as eager refuses it, and a 1-token input runs."""
    loaded = _aot(build_tiny(tmp_path, tiny_checkpoints["sst2"], "sst2", "w8"))
    model, vocab = loaded.model, loaded.config.vocab_size
    too_long = random_inputs(1, model.longest_sequence + 1, vocab)
    past_vocab = random_inputs(2, 8, vocab)
    past_vocab["input_ids"][1, 3] = vocab
    for inputs in (too_long, past_vocab):
        assert not model.compiled_for(inputs["input_ids"], inputs["token_type_ids"])
        with pytest.raises((IndexError, RuntimeError)), torch.inference_mode():  # eager's errors
            model(**inputs)
    one_token = random_inputs(1, 1, vocab)
    with torch.inference_mode():
        torch.testing.assert_close(model(**one_token).logits, model.eager(**one_token).logits)
    assert model.compiled_for(**{k: random_inputs(4, 128, vocab)[k] for k in ("input_ids", "token_type_ids")})


def test_where_a_package_cannot_be_built_the_packed_backend_serves(
    tmp_path: Path, tiny_checkpoints: dict, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def unavailable() -> None:
        raise InternalsChangedError("no AOTInductor here (forced)")

    monkeypatch.setattr(ahead_of_time, "aot_inductor", unavailable)
    artifact = build_tiny(tmp_path, tiny_checkpoints["sst2"], "sst2", "w4g128")
    with caplog.at_level(logging.ERROR):
        loaded = _aot(artifact)
    assert loaded.backend == "packed"
    assert "cannot run ahead of time (no AOTInductor here (forced)); it runs on the packed backend" in caplog.text
    ours, exact = against_float64(loaded, tiny_checkpoints["sst2"], "sst2", artifact)
    torch.testing.assert_close(ours[0], exact[0], rtol=1e-3, atol=1e-5)


def test_a_package_running_other_weights_is_refused_and_the_packed_backend_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A binding bug that hands the package another model's tensors (same names and shapes): the load-time check
    against the model's own eager outputs sees it, though float reordering is allowed for."""
    mine, other = (load_model(artifact, backend="aot") for artifact in _two_models_of_one_structure(tmp_path))
    exported_constants = ahead_of_time._constants

    def others(exported: object) -> dict[str, torch.Tensor]:
        names = exported_constants(exported).keys()  # type: ignore[arg-type]
        theirs = dict(ahead_of_time.OutputTuple(other.model).named_parameters())
        theirs.update(ahead_of_time.OutputTuple(other.model).named_buffers())
        return {name: theirs[name] for name in names}

    monkeypatch.setattr(ahead_of_time, "_constants", others)
    with pytest.raises(BackendMismatchError, match="differs from its eager packed model by"):
        compile_ahead(mine.model, AheadOfTimeOptions.from_environment())
    with caplog.at_level(logging.ERROR):
        served = warm_up(mine)
    assert served.backend == "packed"
    assert "cannot run ahead of time (the ahead-of-time compiled model differs" in caplog.text


def test_a_worker_serves_its_models_on_the_aot_backend(tmp_path: Path, tiny_checkpoints: dict) -> None:
    """`/models` names the backend the worker's model runs on."""
    artifact = build_tiny(tmp_path, tiny_checkpoints["sst2"], "sst2", "w8")
    spec = WorkerSpec(0, 1, (ArtifactRef("sst2", "w8", artifact),), max_tokens=64, max_batch_tokens=256, backend="aot")
    worker = InferenceWorker(spec)
    ready = worker.setup()
    assert [m.backend for m in ready.models] == ["aot"]
    assert isinstance(worker.models[("sst2", "w8")].model, AheadOfTimeModel)
    done = worker.run(RunBatch(0, "sst2", "w8", ("a good movie", "a terrible film")))
    assert [r.error for r in done.results] == [None, None]


def test_rounding_sensitivity_measures_the_model_as_it_runs(tmp_path: Path, tiny_checkpoints: dict) -> None:
    """Without noise the embeddings passed in give the model's own outputs exactly (so what it measures is the noise's
    effect), with it they move by less than the outputs' size, and the model's modules are left as they were."""
    model = load_model(build_tiny(tmp_path, tiny_checkpoints["ner"], "ner", "w4g128"), backend="aot").model
    inputs = ahead_of_time.check_inputs(model.config.vocab_size)
    with torch.inference_mode():
        reference = model(**inputs)
    options = AheadOfTimeOptions(tmp_path)
    assert ahead_of_time.rounding_sensitivity(model, inputs, reference, AheadOfTimeOptions(tmp_path, noise=0.0)) == 0
    exact = ahead_of_time.rounding_sensitivity(model, inputs, reference, AheadOfTimeOptions(tmp_path, noise=1e-30))
    assert exact == 0  # the embeddings passed in are the lookup's own
    moved = ahead_of_time.rounding_sensitivity(model, inputs, reference, options)
    assert 0 <= moved < float(reference.logits.abs().max())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_the_bench_compiles_packages_two_at_a_time_before_its_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`qbert bench` compiles its aot candidates' packages in two worker processes before it loads them: each
    structure once, into the cache its loads then read; a candidate that cannot be built is left for the run's
    own load to report, not raised."""
    from quantization.bench import Candidate, compile_aot_packages

    checkpoint = make_tiny_checkpoint(tmp_path / "checkpoint", "sst2", seed=5)
    artifacts = {
        precision: build_tiny(tmp_path / precision, checkpoint, "sst2", precision) for precision in ("w8", "w3g128")
    }
    vocab = load_model(artifacts["w8"]).config.vocab_size

    def candidate(precision: str, path: Path) -> Candidate:
        return Candidate("tiny", "sst2", "qbert", precision, path, 1, vocab, backend="aot")

    candidates = [candidate(p, path) for p, path in artifacts.items()] + [candidate("w8", tmp_path / "missing")]
    package_cache = tmp_path / "packages"  # its own: the module's cache holds these structures already
    monkeypatch.setenv(ahead_of_time.CACHE_ENV, str(package_cache))  # the workers inherit it
    compile_aot_packages(candidates, threads=2, attention_precision="float32")
    added = set(package_cache.glob("*.pt2"))
    assert len(added) == 2  # w8 and w3g128 differ in structure; the missing artifact compiled nothing
    for path in artifacts.values():
        assert _aot(path).backend == "aot"
    assert set(package_cache.glob("*.pt2")) == added  # the loads read what the workers compiled
