"""Service settings from `QBERT_*` environment variables."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import ServiceSettings


def test_lists_come_from_comma_separated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QBERT_TASKS", "sst2, qa")
    monkeypatch.setenv("QBERT_PRECISIONS", "fp32,w8")
    monkeypatch.setenv("QBERT_WORKERS", "2")
    monkeypatch.setenv("QBERT_TORCH_THREADS", "3")
    settings = ServiceSettings()
    assert settings.tasks == ["sst2", "qa"]
    assert settings.precisions == ["fp32", "w8"]
    assert (settings.workers, settings.threads_per_worker) == (2, 3)


def test_threads_default_to_cores_over_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("service.settings.available_cores", lambda: 8)
    assert ServiceSettings(workers=3).threads_per_worker == 2
    assert ServiceSettings(workers=16).threads_per_worker == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tasks": ["sst2", "translation"]},
        {"tasks": []},
        {"precisions": ["fp32"], "default_precision": "w8"},
        {"workers": 0},
        {"max_batch_size": 0},
    ],
)
def test_invalid_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValidationError):
        ServiceSettings(**kwargs)


def test_api_key_is_kept_secret() -> None:
    settings = ServiceSettings(api_key="s3cret")
    assert "s3cret" not in repr(settings)
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == "s3cret"


def test_discovery_leaves_study_artifacts_out_unless_named(tmp_path: Path) -> None:
    from service.discovery import discover_artifacts

    for precision in ("w8", "mp23", "w2g128-qat"):
        (tmp_path / "sst2" / precision).mkdir(parents=True)
        (tmp_path / "sst2" / precision / "manifest.json").write_text("{}")
    study = frozenset({"mp23", "w2g128-qat"})
    assert [r.precision for r in discover_artifacts(tmp_path, ["sst2"], None, study)] == ["w8"]
    named = discover_artifacts(tmp_path, ["sst2"], ["w8", "mp23"], study)
    assert [r.precision for r in named] == ["w8", "mp23"]


def test_discovery_serves_a_stand_in_where_only_it_is_built(tmp_path: Path) -> None:
    from service.discovery import discover_artifacts

    for precision in ("w8", "mp23-ptq"):
        (tmp_path / "sst2" / precision).mkdir(parents=True)
        (tmp_path / "sst2" / precision / "manifest.json").write_text("{}")
    study, stand_ins = frozenset({"mp23-ptq"}), {"mp23": "mp23-ptq"}
    found = discover_artifacts(tmp_path, ["sst2"], None, study, stand_ins)
    assert [(r.precision, r.path.name) for r in found] == [("mp23", "mp23-ptq"), ("w8", "w8")]
    named = discover_artifacts(tmp_path, ["sst2"], ["mp23", "mp23-ptq"], study, stand_ins)
    assert [(r.precision, r.path.name) for r in named] == [("mp23", "mp23-ptq"), ("mp23-ptq", "mp23-ptq")]
    (tmp_path / "sst2" / "mp23").mkdir()
    (tmp_path / "sst2" / "mp23" / "manifest.json").write_text("{}")  # its own artifact, once built, wins
    found = discover_artifacts(tmp_path, ["sst2"], None, study, stand_ins)
    assert [(r.precision, r.path.name) for r in found] == [("mp23", "mp23"), ("w8", "w8")]
