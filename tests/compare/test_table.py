"""The comparison table against hand-computed values on fixture trajectories (issue 19)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protege.compare.spec import SpecError, load_exclusions, load_spec, standard_variants
from protege.compare.stats import bootstrap_interval, mcnemar_exact, paired
from protege.compare.table import Prices, build_table, episode_cost, write_report
from protege.config import CompareConfig, ExpertPrices, LoopConfig, load_config
from protege.trajectory import Action, ExpertCall, Trajectory

IDS = [f"demo__r-{i}" for i in range(1, 7)]
PRICES = Prices(ExpertPrices(input_per_mtok=3.0, output_per_mtok=15.0), ExpertPrices(), price_oracle=True)
LOOP = LoopConfig(metric_lengths=[2])


def episode(
    instance: str,
    resolved: bool,
    steps: int = 4,
    calls: int = 0,
    forced: int = 0,
    cost: float = 0.0,
    policy: str = "transformers",
    loop: int = 1,
) -> Trajectory:
    """An episode: `steps` actions (the first `loop` of them the same command), `calls` expert calls
    (`forced` of them forced) costing `cost` dollars each, 100 policy tokens in, 20 out."""
    actions = [
        Action(step=s, tool="bash", arguments={}, base_command="ls" if s <= loop else f"cmd{s}")
        for s in range(1, steps + 1)
    ]
    expert = [
        ExpertCall(
            step=1,
            question="q",
            backend="anthropic",
            input_tokens=30,
            output_tokens=10,
            cost_usd=cost,
            forced=i < forced,
        )
        for i in range(calls)
    ]
    return Trajectory(
        instance_id=instance,
        phase="eval",
        status="submitted",
        resolved=resolved,
        actions=actions,
        expert_calls=expert,
        policy_backend=policy,
        policy_input_tokens=100,
        policy_output_tokens=20,
        patch="x",
    )


def fixture_variants() -> dict[str, list[Trajectory]]:
    """ref resolves 1,2 of 6; full resolves 1,2,3,4,5 (b=3 only-full, c=0); alone resolves 1..6 at $0.10 a task."""
    ref = [episode(i, i in IDS[:2]) for i in IDS]
    full = [episode(i, i != IDS[5], steps=6, calls=2, forced=1, cost=0.01, loop=3) for i in IDS]
    alone = [episode(i, True, steps=2, policy="anthropic") for i in IDS]
    for trajectory in alone:
        trajectory.policy_cost_usd = 0.10
    return {"ref": ref, "full": full, "expert-alone": alone}


def test_mcnemar_exact_matches_the_binomial_by_hand() -> None:
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 0) == pytest.approx(2 * 1 / 8)  # P(X<=0 | n=3) = 1/8
    assert mcnemar_exact(5, 1) == pytest.approx(2 * 7 / 64)  # (C(6,0)+C(6,1)) / 2^6
    assert mcnemar_exact(10, 0) == pytest.approx(2 / 1024)
    assert mcnemar_exact(2, 2) == 1.0  # capped
    assert mcnemar_exact(1, 5) == mcnemar_exact(5, 1)


def test_bootstrap_interval_brackets_the_mean_and_is_seeded() -> None:
    diffs = [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    low, high = bootstrap_interval(diffs, 0.95, 2000, seed=0)
    assert 0.0 <= low < 0.5 < high <= 1.0
    assert (low, high) == bootstrap_interval(diffs, 0.95, 2000, seed=0)
    assert bootstrap_interval([0.25] * 5, 0.95, 500, seed=3) == (0.25, 0.25)


def test_paired_counts_discordant_instances_on_common_ones_only() -> None:
    test = paired({"a": 1, "b": 1, "c": 0, "x": 1}, {"a": 0, "b": 1, "c": 1, "y": 0}, 0.95, 500, 0)
    assert (test.instances, test.only_variant, test.only_reference) == (3, 1, 1)
    assert test.difference == pytest.approx(0.0)
    assert test.mcnemar_p == 1.0


def test_table_rows_match_hand_computed_figures() -> None:
    rows = {
        r["variant"]: r
        for r in build_table(fixture_variants(), "ref", "expert-alone", CompareConfig(), 0.95, LOOP, PRICES)
    }
    ref, full, alone = rows["ref"], rows["full"], rows["expert-alone"]
    assert (ref["pass_at_1"], full["pass_at_1"], alone["pass_at_1"]) == pytest.approx((2 / 6, 5 / 6, 1.0))
    # Wilson 95% for 2/6 by hand: z = 1.959964, centre = (1/3 + z²/12) / (1 + z²/6), half as usual.
    z = 1.959963984540054
    centre = (2 / 6 + z * z / 12) / (1 + z * z / 6)
    half = z * ((2 / 6 * 4 / 6) / 6 + z * z / 144) ** 0.5 / (1 + z * z / 6)
    assert (ref["pass_at_1_ci_low"], ref["pass_at_1_ci_high"]) == pytest.approx(
        (centre - half, centre + half)
    )
    # Paired against ref: full resolves 3,4,5 that ref does not, ref nothing full does not: b=3, c=0.
    assert (full["only_variant"], full["only_reference"], full["paired_instances"]) == (3, 0, 6)
    assert full["difference"] == pytest.approx(3 / 6)
    assert full["mcnemar_p"] == pytest.approx(0.25)
    assert full["difference_ci_low"] <= 0.5 <= full["difference_ci_high"]
    assert ref["mcnemar_p"] is None and ref["difference"] == 0.0
    # Expert use: 2 calls a task, 1 forced; tokens: expert 2*(30+10)=80 of 80+120=200 per task.
    assert (full["expert_calls_per_task"], full["forced_calls_per_task"]) == (2.0, 1.0)
    assert full["expert_token_share"] == pytest.approx(80 / 200)
    assert (full["steps_per_task"], ref["steps_per_task"], alone["steps_per_task"]) == (6.0, 4.0, 2.0)
    # Loops: full's first 3 actions repeat (run of 3 > 2) on every task; ref's longest run is 1.
    assert (full["loop_rates"], ref["loop_rates"]) == ({"2": 1.0}, {"2": 0.0})
    # Costs: full $0.02 a task, 6 tasks, 5 resolved -> $0.12 / 5; alone $0.10 a task -> ratio 5x.
    assert full["cost_per_task"] == pytest.approx(0.02)
    assert full["cost_per_resolved_task"] == pytest.approx(0.12 / 5)
    assert full["cost_ratio"] == pytest.approx(0.10 / 0.02)
    assert alone["cost_ratio"] == pytest.approx(1.0)
    assert ref["cost_ratio"] is None and ref["cost_per_resolved_task"] == 0.0  # ref costs nothing


def test_exclusions_remove_instances_from_every_row() -> None:
    rows = {
        r["variant"]: r
        for r in build_table(
            fixture_variants(),
            "ref",
            "expert-alone",
            CompareConfig(),
            0.95,
            LOOP,
            PRICES,
            excluded=frozenset({IDS[5], IDS[4]}),
        )
    }
    # Without 5 and 6: ref 2/4, full 4/4 (b = 2: instances 3, 4), alone 4/4.
    assert (rows["ref"]["pass_at_1"], rows["full"]["pass_at_1"]) == (0.5, 1.0)
    assert (rows["full"]["only_variant"], rows["full"]["paired_instances"]) == (2, 4)
    assert rows["full"]["mcnemar_p"] == pytest.approx(0.5)


def test_oracle_tokens_are_priced_at_list_prices() -> None:
    oracle = episode(IDS[0], True, calls=1, policy="oracle-teacher")
    oracle.expert_calls[0].backend = "oracle"
    # Expert: 30 in, 10 out at $3/$15 per Mtok; policy: 100 in, 20 out at the default $3/$15.
    expected = (30 * 3 + 10 * 15) / 1e6 + (100 * 3 + 20 * 15) / 1e6
    assert episode_cost(oracle, PRICES) == pytest.approx(expected)
    assert episode_cost(oracle, Prices(PRICES.expert, PRICES.policy, price_oracle=False)) == 0.0


def test_report_names_task_set_digest_and_exclusions(tmp_path: Path) -> None:
    variants = fixture_variants()
    args = ("ref", "expert-alone", CompareConfig(), 0.95, LOOP, PRICES)
    report = {
        "task_set": {"source": "demo:eval", "digest": "ab" * 32, "instances": 6},
        "exclusions": [{"instance_id": IDS[5], "reason": "test asserts a typo"}],
        "reference": "ref",
        "expert_alone": "expert-alone",
        "confidence": 0.95,
        "bootstrap_samples": 2000,
        "oracle_priced": True,
        "variants": [],
        "tables": {
            "all": build_table(variants, *args),
            "without_exclusions": build_table(variants, *args, excluded=frozenset({IDS[5]})),
        },
    }
    paths = write_report(report, tmp_path)
    markdown = paths["md"].read_text()
    for text in (
        "demo:eval",
        "ab" * 32,
        f"`{IDS[5]}`: test asserts a typo",
        "## All instances",
        "## Without the excluded instances",
        "| full | 0.833 (5/6)",
        "0.25 (b=3, c=0)",
        "5.00x",
    ):
        assert text in markdown, text
    page = paths["html"].read_text()
    assert "<table>" in page and "plots/pass_at_1.png" in page and "test asserts a typo" in page
    assert paths["pass_at_1"].stat().st_size > 1000
    assert json.loads(paths["json"].read_text())["exclusions"][0]["instance_id"] == IDS[5]


def test_exclusion_list_needs_a_reason_and_a_known_instance(tmp_path: Path) -> None:
    good = tmp_path / "ok.yaml"
    good.write_text(f"{IDS[0]}: its test pins a wrong message\n")
    assert load_exclusions(good, set(IDS)) == {IDS[0]: "its test pins a wrong message"}
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([{"instance_id": IDS[1], "reason": "flaky"}]))
    assert load_exclusions(listed) == {IDS[1]: "flaky"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"- instance_id: {IDS[0]}\n")
    with pytest.raises(SpecError, match=f"{IDS[0]}: no reason given"):
        load_exclusions(bad)
    bad.write_text("demo__nope-1: reason\n")
    with pytest.raises(SpecError, match="demo__nope-1: not an instance of the task set"):
        load_exclusions(bad, set(IDS))


def test_standard_set_has_every_variant_of_the_issue(tmp_path: Path) -> None:
    cfg = load_config("local")
    spec_file = tmp_path / "v.yaml"
    spec_file.write_text("reference: full\nmodels: {base: tiny, sft: s, rl1: r1, rl2: r2}\n")
    spec = load_spec(spec_file, cfg)
    names = [v.name for v in spec.variants]
    assert names == [
        "base",
        "base-no-ask",
        "sft",
        "sft-no-ask",
        "sft+rl1",
        "sft+rl1-no-ask",
        "full",
        "full-no-ask",
        "expert-alone",
        "full-forced-k5",
        "full-random-p0.2",
    ]
    alone = next(v for v in spec.variants if v.name == "expert-alone")
    assert "agent.policy.backend=oracle" in alone.overrides and "agent.ask_expert=false" in alone.overrides
    cluster = standard_variants(load_config("cluster"), {"rl2": "m"})
    assert "agent.policy.backend=anthropic" in next(v for v in cluster if v.name == "expert-alone").overrides
    spec_file.write_text("reference: nope\nmodels: {base: tiny}\n")
    with pytest.raises(SpecError, match="reference 'nope' is not a variant"):
        load_spec(spec_file, cfg)
