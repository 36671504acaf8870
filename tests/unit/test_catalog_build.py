"""Building the catalog in serving order, with every step reported (`quantization.catalog_build`)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from quantization.catalog import load_catalog
from quantization.catalog_build import BuildEvent, BuildJob, build_catalog, catalog_jobs, serving_order
from quantization.progress import BuildProgress


def test_serving_order_puts_each_tasks_default_first_and_keeps_the_rest_in_order() -> None:
    jobs = [BuildJob(t, p) for t in ("sst2", "ner", "qa") for p in ("fp32", "w8", "w2g128")]
    ordered = serving_order(jobs, "w8")
    assert ordered[:3] == [BuildJob("sst2", "w8"), BuildJob("ner", "w8"), BuildJob("qa", "w8")]
    assert ordered[3:] == [j for j in jobs if j.precision != "w8"]
    assert sorted(ordered, key=jobs.index) == jobs


def test_serving_order_puts_slow_recipes_after_every_quick_artifact() -> None:
    jobs = [BuildJob(t, p) for t in ("sst2", "ner") for p in ("w8", "mp23-ptq", "mp23", "w2g128")]
    ordered = serving_order(jobs, "w8", slow_precisions={"mp23"})
    assert [j.key for j in ordered] == [
        ("sst2", "w8"),
        ("ner", "w8"),
        ("sst2", "mp23-ptq"),
        ("sst2", "w2g128"),
        ("ner", "mp23-ptq"),
        ("ner", "w2g128"),
        ("sst2", "mp23"),
        ("ner", "mp23"),
    ]


def test_a_served_precision_with_a_stand_in_is_built_after_it() -> None:
    catalog = load_catalog()
    served = catalog_jobs(catalog, ["sst2"])
    stand_in = BuildJob("sst2", "mp23-ptq", stands_in_for="mp23", served=False)
    assert served[served.index(stand_in) + 1] == BuildJob("sst2", "mp23")
    assert [j.precision for j in served if j.served] == list(catalog.task("sst2").precisions)
    # Named itself (the study names it), the stand-in is a model of its own too, built once
    with_study = catalog_jobs(catalog, ["sst2"], study=True)
    assert BuildJob("sst2", "mp23-ptq", stands_in_for="mp23") in with_study
    assert sum(j.precision == "mp23-ptq" for j in with_study) == 1


def test_catalog_jobs_are_the_served_precisions_and_the_study_only_when_asked() -> None:
    catalog = load_catalog()
    served = catalog_jobs(catalog, ["sst2"])
    assert [j.precision for j in served if j.served] == list(catalog.task("sst2").precisions)
    with_study = catalog_jobs(catalog, ["sst2"], study=True)
    assert BuildJob("sst2", "direct-w2") in with_study
    assert BuildJob("sst2", "direct-w2") not in served
    assert catalog_jobs(catalog, ["sst2", "ner"], ["w8"]) == [BuildJob("sst2", "w8"), BuildJob("ner", "w8")]


@pytest.fixture
def tiny_catalog(tiny_checkpoints: dict, tiny_data: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    monkeypatch.setenv("QBERT_CHECKPOINTS", str(tiny_checkpoints["sst2"].parent))
    monkeypatch.setenv("QBERT_DATA", str(tiny_data))
    return load_catalog()


def test_each_artifact_is_built_then_evaluated_then_found_up_to_date(tiny_catalog, tmp_path: Path) -> None:
    events: list[BuildEvent] = []
    jobs = [BuildJob("sst2", "w8"), BuildJob("ner", "w2g128")]
    outcomes = build_catalog(tiny_catalog, jobs, tmp_path, events.append)
    assert [(o.key, o.state, o.detail) for o in outcomes] == [(j.key, "built", "") for j in jobs]
    for job in jobs:
        states = [e.state for e in events if e.key == job.key]
        assert states[0] == "building"
        assert states[-1] == "built"
        assert "evaluating" in states
        assert states.index("evaluating") > states.index("building")
    evaluating = [e for e in events if e.state == "evaluating" and e.total]
    assert evaluating
    assert all(0 < e.done <= e.total for e in evaluating)
    assert evaluating[-1].done == evaluating[-1].total  # the count runs up to the whole evaluation set
    assert outcomes[0].accuracy[0]["metric"] == "accuracy"
    assert [e.jobs_done for e in events if e.state == "built"] == [0, 1]

    again: list[BuildEvent] = []
    outcomes = build_catalog(tiny_catalog, jobs, tmp_path, again.append)
    assert [(e.state, e.detail) for e in again] == [("built", "up to date")] * 2
    assert outcomes[1].accuracy[0]["metric"] == "entity_f1"  # read back from the manifest


def test_a_stand_in_is_skipped_where_the_precision_it_stands_in_for_is_built(tiny_catalog, tmp_path: Path) -> None:
    stand_in = BuildJob("sst2", "fp32", stands_in_for="w8", served=False)
    first = build_catalog(tiny_catalog, [stand_in, BuildJob("sst2", "w8")], tmp_path, lambda event: None)
    assert [(o.state, o.detail) for o in first] == [("built", ""), ("built", "")]  # w8 was not built yet
    again = build_catalog(tiny_catalog, [stand_in, BuildJob("sst2", "w8")], tmp_path, lambda event: None)
    assert [(o.state, o.detail) for o in again] == [("skipped", "w8 is up to date"), ("built", "up to date")]
    named = BuildJob("sst2", "fp32", stands_in_for="w8")  # a model of its own too: never skipped
    assert build_catalog(tiny_catalog, [named], tmp_path, lambda event: None)[0].state == "built"


def test_a_failing_artifact_fails_alone(tiny_catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QBERT_PLANS", str(tmp_path / "no-plans"))  # mp23-ptq's plan is not there
    jobs = [BuildJob("sst2", "mp23-ptq"), BuildJob("sst2", "fp32")]
    outcomes = build_catalog(tiny_catalog, jobs, tmp_path / "artifacts", lambda event: None)
    assert [o.state for o in outcomes] == ["failed", "built"]
    assert "no such plan" in outcomes[0].detail


def _event(state: str, jobs_done: int, detail: str = "", **fields) -> BuildEvent:  # noqa: ANN003
    return BuildEvent("sst2", "w8", state, jobs_done, 3, detail=detail, **fields)


def test_the_progress_display_logs_each_step_once_and_estimates_from_real_work(
    caplog: pytest.LogCaptureFixture,
) -> None:
    progress = BuildProgress(stream=io.StringIO())  # not a terminal: log lines
    with caplog.at_level(logging.INFO, logger="qbert.build"):
        progress(_event("built", 0, "up to date"))
        assert progress.eta_s(_event("building", 1)) is None  # an artifact found built says nothing of the rest
        for done in (1, 5, 9):
            progress(BuildEvent("ner", "w8", "evaluating", 1, 3, done, 9, "sequences"))
        progress(BuildEvent("ner", "w8", "built", 1, 3, accuracy=({"metric": "entity_f1", "value": 0.5},)))
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("build 1/3: sst2/w8 up to date")
    assert sum("evaluating" in line for line in lines) == 1  # a new step, not every advance within it
    assert lines[-1].startswith("build 2/3: ner/w8 built (entity_f1=0.5000)")
    assert progress.eta_s(BuildEvent("qa", "w8", "building", 2, 3)) is not None
