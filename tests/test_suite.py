"""The planted suite: one scored run against the exhaustive reference, the report and criteria."""

from __future__ import annotations

from pathlib import Path

import pytest

from dmtg_nas import SpecError
from dmtg_nas.suite import SHAPES, Shape, criteria, run_one, run_suite, shape_spec, write_suite_report

FAST = ("strategy.epochs=1", "strategy.finetune.epochs=0", "strategy.warmup.epochs=2", "strategy.warmup.min_steps=0")


def test_shape_specs_follow_the_shape() -> None:
    spec = shape_spec(SHAPES["mixed-k3"], "dmtg", seed=4)
    assert spec.groups == 3 and len(spec.tasks) == 6
    assert [t.type for t in spec.tasks[:2]] == ["regression", "binary"]
    assert spec.dataset.model_extra is not None and spec.dataset.model_extra["seed"] == 4
    assert spec.strategy.seed == 4
    image = shape_spec(SHAPES["image-k3"], "dmtg-plain", seed=0)
    assert image.backbone.name.startswith("timm:") and image.strategy.name == "dmtg-plain"


def test_one_run_is_scored_against_the_exhaustive_optimum() -> None:
    shape = Shape("tiny", (2, 1), 2, samples=300)
    record = run_one(shape, "dmtg", 0, overrides=FAST)
    assert record["reference"] == "exhaustive"
    assert sorted(t for g in record["found"] for t in g) == ["t1", "t2", "t3"]
    # the optimum is the best of all partitions into at most 2 groups on validation loss, so its
    # test loss is what the gap is measured against
    assert record["gap_percent"] == pytest.approx(
        100 * (record["found_test_loss"] - record["optimum_test_loss"]) / record["optimum_test_loss"]
    )
    assert record["exact"] == (sorted(map(sorted, record["found"])) == sorted(map(sorted, record["planted"])))
    assert -1.0 <= record["ari"] <= 1.0


def test_exhaustive_reference_is_reused_across_strategies(monkeypatch: pytest.MonkeyPatch) -> None:
    import dmtg_nas.suite as suite

    calls = []
    real = suite.subset_losses_seeded
    monkeypatch.setattr(suite, "subset_losses_seeded", lambda *a: calls.append(1) or real(*a))
    shape = Shape("tiny", (2, 1), 2, samples=300)
    refs: dict = {}
    a = run_one(shape, "dmtg", 0, overrides=FAST, references=refs)
    b = run_one(shape, "dmtg-plain", 0, overrides=FAST, references=refs)
    assert len(calls) == 1 and len(refs) == 1
    assert a["optimum"] == b["optimum"] and a["optimum_test_loss"] == b["optimum_test_loss"]
    # another budget is another reference
    run_one(shape, "dmtg", 0, overrides=(*FAST, "strategy.batch_size=32"), references=refs)
    assert len(calls) == 2 and len(refs) == 2


def test_report_and_criteria(tmp_path: Path) -> None:
    base = {"strategy": "s", "seed": 0, "search_seconds": 1.0, "planted": [["t1", "t2"], ["t3"]]}
    records = [
        {**base, "shape": "pairs-k3", "ari": 1.0, "exact": True, "merged": False, "gap_percent": 0.0,
         "reference": "exhaustive", "planted_is_optimum": True},
        {**base, "shape": "pairs-k3", "seed": 1, "ari": 0.2, "exact": False, "merged": True, "gap_percent": 9.0,
         "reference": "exhaustive", "planted_is_optimum": True},
        {**base, "shape": "pairs-k4", "ari": 1.0, "exact": True, "merged": False, "gap_percent": 1.0,
         "reference": "exhaustive", "planted_is_optimum": False},
    ]  # fmt: skip
    c = criteria(records, "s")
    assert c["within_2pct_of_optimum"] == pytest.approx(2 / 3)
    assert c["exact_when_planted_is_optimum"] == pytest.approx(1 / 2)
    assert c["no_merge_when_k_exceeds_groups"] == pytest.approx(2 / 3)  # every K here exceeds 2 planted groups
    write_suite_report(records, tmp_path)
    table = (tmp_path / "suite.md").read_text()
    assert "| s | pairs-k3 | 2 | 0.60 | 50% | 50% | 4.5 | 9.0 | 50% | exhaustive |" in table
    assert (tmp_path / "suite.png").is_file()


def test_unknown_shape_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="unknown suite shape 'pairs-k9'"):
        run_suite("dmtg", ["pairs-k9"], 1, tmp_path)


def test_report_compares_search_times_run_by_run() -> None:
    from dmtg_nas.suite import _time_ratios

    def rec(strategy: str, shape: str, seed: int, seconds: float) -> dict[str, object]:
        return {"strategy": strategy, "shape": shape, "seed": seed, "search_seconds": seconds}

    records = [rec("a", "x", 0, 10.0), rec("a", "x", 1, 20.0), rec("a", "y", 0, 4.0)]
    records += [rec("b", "x", 0, 15.0), rec("b", "x", 1, 20.0), rec("b", "y", 0, 12.0), rec("b", "z", 0, 1.0)]
    (line,) = _time_ratios(records)  # ratios 1.5, 1.0 and 3.0; z has no counterpart
    assert "`b` / `a`" in line and "median 1.50" in line and "range 1.00 to 3.00, 3 runs" in line
    assert _time_ratios(records[:3]) == []  # one strategy: nothing to compare


def test_seed_lists() -> None:
    from dmtg_nas.suite import parse_seeds

    assert parse_seeds("3") == [0, 1, 2]
    assert parse_seeds("3-5") == [3, 4, 5]
    assert parse_seeds("0,4,7") == [0, 4, 7]
    for bad in ("0", "x", "5-3", "1,1", "-2"):
        with pytest.raises(SpecError, match="--seeds"):
            parse_seeds(bad)


def test_reference_is_trained_apart_and_averages_its_trainings() -> None:
    """The reference's networks use seeds no method uses (an exhaustive HOA run from the strategy's
    seed is another training), and R trainings are averaged per subset and task."""
    import dmtg_nas.suite as suite
    from dmtg_nas.components import load_data
    from dmtg_nas.engine.batched import subset_losses_joint

    shape = Shape("tiny", (2, 1), 2, samples=300)
    spec = shape_spec(shape, "dmtg", 0, FAST)
    data = load_data(spec)
    one = suite.exhaustive_reference(spec, data, 1)
    own = subset_losses_joint(spec, data, list(range(1, 8)))  # what a method trains from the spec's seed
    assert one[3]["val"]["t1"]["loss"] != pytest.approx(own[3]["val"]["t1"]["loss"], rel=1e-6)
    two = suite.exhaustive_reference(spec, data, 2)
    second = suite.exhaustive_reference(
        spec.model_copy(
            update={
                "strategy": spec.strategy.model_copy(update={"seed": spec.strategy.seed + suite.REFERENCE_SEED_OFFSET})
            }
        ),
        data,
        1,
    )  # the second training of `two` is the first of a reference whose seed is one offset further
    for m in (1, 3, 7):
        for t in ("t1", "t2"):
            if (m & 1 and t == "t1") or (m & 2 and t == "t2"):
                expect = (one[m]["test"][t]["loss"] + second[m]["test"][t]["loss"]) / 2
                assert two[m]["test"][t]["loss"] == pytest.approx(expect, rel=1e-9)


def test_baseline_methods_are_scored_like_strategies_and_rescored_on_resume(tmp_path: Path) -> None:
    shape = "tiny"
    import dmtg_nas.suite as suite

    suite.SHAPES[shape] = Shape(shape, (2, 1), 2, samples=300)
    try:
        records = run_suite("dmtg", [shape], [0], tmp_path, overrides=FAST, method="hoa")
        (hoa,) = records
        assert hoa["strategy"] == "hoa" and hoa["kind"] == "method" and hoa["budget_of"] == "dmtg"
        assert hoa["reference"] == "exhaustive" and hoa["reference_key"].endswith("/reference-x1")
        tag = run_suite("dmtg", [shape], [0], tmp_path, overrides=FAST, method="tag", resume=True)[-1]
        assert tag["strategy"] == "tag" and tag["optimum"] == hoa["optimum"]  # one reference for both
        assert sorted(t for g in tag["found"] for t in g) == ["t1", "t2", "t3"]
        # another reference: the earlier runs of that method are scored again, not rerun
        again = run_suite(
            "dmtg", [shape], [0], tmp_path, overrides=FAST, method="hoa", resume=True, reference_trainings=2
        )
        rescored = [r for r in again if r["strategy"] == "hoa"]
        assert len(rescored) == 1 and rescored[0]["found"] == hoa["found"]
        assert rescored[0]["reference_key"].endswith("/reference-x2")
        assert rescored[0]["optimum_test_loss"] != pytest.approx(hoa["optimum_test_loss"], rel=1e-9)
        with pytest.raises(SpecError, match=r"unknown suite method 'tagg'.*did you mean 'tag'"):
            run_suite("dmtg", [shape], [0], tmp_path, method="tagg")
    finally:
        del suite.SHAPES[shape]


def test_report_puts_the_bar_side_by_side_and_compares_with_tag(tmp_path: Path) -> None:
    def rec(label: str, seed: int, gap: float, loss: float, exact: bool) -> dict[str, object]:
        return {"strategy": label, "shape": "pairs-k4", "seed": seed, "search_seconds": 2.0 + seed, "ari": 1.0,
                "exact": exact, "merged": not exact, "gap_percent": gap, "found_test_loss": loss,
                "reference": "exhaustive", "planted_is_optimum": True, "planted": [["t1", "t2"], ["t3"]]}  # fmt: skip

    records = [rec("dmtg", 0, 0.0, 1.0, True), rec("dmtg", 1, 3.0, 1.03, False), rec("dmtg", 2, 1.0, 1.2, True)]
    records += [rec("tag", 0, 5.0, 1.05, False), rec("tag", 1, 3.0, 1.03, False), rec("tag", 2, 0.0, 1.1, True)]
    other = {**rec("paper", 0, 9.0, 1.5, False), "reference_key": "pairs-k4/0/100/256/x/x/reference-x1"}
    records.append(other)  # another budget, another reference: not compared with tag's
    write_suite_report(records, tmp_path)
    text = (tmp_path / "suite.md").read_text()
    assert "| dmtg | 3 | 67% (2) | 67% (3) | 67% (3) | 1.3 | 1.00 | 3.0 |" in text
    assert "| tag | 3 | 33% (1) | 33% (3) | 33% (3) | 2.7 | 1.00 | 3.0 |" in text
    assert "| within 2% of optimum | dmtg | tag |" in text and "| pairs-k4 | 67% | 33% |" in text
    assert "`dmtg` against `tag`'s grouping on the same shape and seed: mean gap 1.3% against 2.7%; lower test " \
        "loss in 1, the same grouping's in 1, higher in 1 of 3 runs." in text  # fmt: skip
    assert "`paper` against" not in text
    assert "- `dmtg`: within 2% of the exhaustive optimum in 67% of 3 exhaustive runs; planted partition " \
        "recovered exactly in 67% of 3 runs where it is the optimum; no merge in 67% of 3 runs with K > " \
        "planted groups (3 runs)." in text  # fmt: skip
    trained = [{**r, "reference": "trained", "shape": "five-k5"} for r in records[:2]]
    write_suite_report(trained, tmp_path)
    text = (tmp_path / "suite.md").read_text()
    assert "- `dmtg`: no exhaustive runs; no merge in 50% of 2 runs with K > planted groups (2 runs)." in text
