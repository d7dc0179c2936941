"""The findings table: the verdict rule on synthetic results (holds, does not hold, each not-resolved case)."""

from __future__ import annotations

import pytest

from saec.analysis import claims as C

ZERO = 81.52  # all-zero output's L_rec on the first 1,000 MNIST test images
L_REC = C.Claim("rec_loss", "SAE", "SAE-dense", (38.09, 8.98), (6.75, 0.26), "Table 1")


def run(seed: int, rec: float, *, anr: float | None = None, ratio: float | None = None,
        zero: float | None = ZERO) -> dict:
    """One seed's eval.json, with only the keys the claims read."""
    m: dict = {"seed": seed, "rec_loss": rec, "latent_layer": "latent", "s_intra_inter": {"euclidean": ratio}}
    if zero is not None:
        m["rec_loss_zero_output"] = zero
    if anr is not None:
        m["layers"] = {"latent": {"anr": anr}}
    return m


def seeds(*recs: float, **kw) -> list[dict]:
    return [run(i, r, **kw) for i, r in enumerate(recs)]


def test_separated_intervals_hold_in_the_claimed_direction():
    result = C.judge(L_REC, {"SAE": seeds(60.0, 62.0, 64.0), "SAE-dense": seeds(40.0, 41.0, 42.0)})
    assert result.verdict == C.HOLDS
    # mean ± population std: 62.00 ± 1.63 vs 41.00 ± 0.82
    assert result.reason == "SAE 62.00 ± 1.63 is above SAE-dense 41.00 ± 0.82 by more than both spreads"
    assert (result.higher.mean, result.lower.mean) == (62.0, 41.0)


def test_separated_intervals_in_the_other_direction_do_not_hold():
    result = C.judge(L_REC, {"SAE": seeds(40.0, 41.0, 42.0), "SAE-dense": seeds(60.0, 62.0, 64.0)})
    assert result.verdict == C.DOES_NOT_HOLD
    assert result.reason.startswith("SAE 41.00 ± 0.82 is below SAE-dense 62.00 ± 1.63")


def test_overlapping_spreads_are_not_resolved():
    # 50 ± 8.2 vs 45 ± 4.1: the means are in the claimed order but the spreads overlap.
    result = C.judge(L_REC, {"SAE": seeds(40.0, 50.0, 60.0), "SAE-dense": seeds(40.0, 45.0, 50.0)})
    assert result.verdict == C.NOT_RESOLVED
    assert result.reason.startswith("mean ± std overlap: SAE 50.00 ± 8.16, SAE-dense 45.00 ± 4.08")


def test_a_model_at_the_all_zero_output_leaves_the_claim_unresolved():
    # SAE at the all-zero output is "worse" than SAE-dense by far, but it has not learned anything.
    result = C.judge(L_REC, {"SAE": seeds(81.5, 81.52, 81.4), "SAE-dense": seeds(40.0, 41.0, 42.0)})
    assert result.verdict == C.NOT_RESOLVED
    assert result.reason == "SAE seed 0 has not left the all-zero output (L_rec 81.50, all-zero 81.52)"
    # 5 % below the all-zero value is the line: 77.44 is at it (not below), 77.0 has left.
    assert C.not_learned("SAE", [run(3, 0.95 * ZERO)]) == (
        "SAE seed 3 has not left the all-zero output (L_rec 77.44, all-zero 81.52)")
    assert C.not_learned("SAE", [run(3, 77.0)]) is None


def test_unequal_training_budgets_leave_the_claim_unresolved():
    # The paper trains every model 10 epochs; the claims sweep gives each family its own schedule.
    sae = [{**m, "train_steps": 9480} for m in seeds(60.0, 62.0, 64.0)]
    dense = [{**m, "train_steps": 316} for m in seeds(40.0, 41.0, 42.0)]
    result = C.judge(L_REC, {"SAE": sae, "SAE-dense": dense})
    assert result.verdict == C.NOT_RESOLVED
    assert result.reason == ("unequal training: SAE 9,480 optimizer steps, SAE-dense 316 "
                             "(the paper trains both 10 epochs)")
    # seeds of one model that differ among themselves are shown as a range
    mixed = [{**m, "train_steps": s} for m, s in zip(seeds(40.0, 41.0, 42.0), (316, 316, 632))]
    assert C.judge(L_REC, {"SAE": sae, "SAE-dense": mixed}).reason.startswith(
        "unequal training: SAE 9,480 optimizer steps, SAE-dense 316-632")
    # equal budgets are judged on the numbers; results without train_steps are not judged by this rule
    same = [{**m, "train_steps": 9480} for m in seeds(40.0, 41.0, 42.0)]
    assert C.judge(L_REC, {"SAE": sae, "SAE-dense": same}).verdict == C.HOLDS
    assert C.judge(L_REC, {"SAE": sae, "SAE-dense": seeds(40.0, 41.0, 42.0)}).verdict == C.HOLDS
    # the all-zero rule comes first: a model that has not learned is reported as such
    zero = [{**m, "train_steps": 316} for m in seeds(81.5, 81.5, 81.5)]
    assert C.judge(L_REC, {"SAE": sae, "SAE-dense": zero}).reason.startswith("SAE-dense seed 0 has not left")


def test_an_eval_json_without_the_all_zero_value_is_not_judged():
    result = C.judge(L_REC, {"SAE": seeds(60.0, 62.0, 64.0, zero=None), "SAE-dense": seeds(40.0, 41.0, 42.0)})
    assert result.verdict == C.NOT_RESOLVED
    assert "SAE seed 0: eval.json has no rec_loss_zero_output" in result.reason


def test_too_few_seeds_or_a_missing_model_are_not_resolved():
    two = C.judge(L_REC, {"SAE": seeds(60.0, 62.0), "SAE-dense": seeds(40.0, 41.0, 42.0)})
    assert two.verdict == C.NOT_RESOLVED and two.reason == "SAE: 2 finished seed(s), 3 needed"
    missing = C.judge(L_REC, {"SAE": seeds(60.0, 62.0, 64.0)})
    assert missing.verdict == C.NOT_RESOLVED and missing.reason == "SAE-dense: 0 finished seed(s), 3 needed"


def test_a_metric_undefined_for_some_seeds_is_not_resolved():
    claim = next(c for c in C.PAPER_CLAIMS if c.metric == "s_intra_inter")
    vae = [run(0, 40.0, ratio=0.97), run(1, 41.0, ratio=0.96), run(2, 42.0, ratio=0.98)]
    dense = [run(0, 40.0, ratio=0.78), run(1, 41.0, ratio=None), run(2, 42.0, ratio=0.77)]
    result = C.judge(claim, {"VAE": vae, "SAE-dense": dense})
    assert result.verdict == C.NOT_RESOLVED
    assert result.reason == "SAE-dense: s_intra/s_inter (euclidean) undefined for 1 of 3 seeds"
    dense[1]["s_intra_inter"]["euclidean"] = 0.79
    assert C.judge(claim, {"VAE": vae, "SAE-dense": dense}).verdict == C.HOLDS


def test_anr_claim_reads_the_latent_layer():
    claim = next(c for c in C.PAPER_CLAIMS if (c.metric, c.higher, c.lower) == ("latent_anr", "SAE-dense", "SAE"))
    dense = seeds(40.0, 41.0, 42.0, anr=0.6)
    sae = seeds(60.0, 62.0, 64.0, anr=0.1)
    assert C.judge(claim, {"SAE-dense": dense, "SAE": sae}).verdict == C.HOLDS
    assert C.judge(claim, {"SAE-dense": sae, "SAE": dense}).verdict == C.DOES_NOT_HOLD


@pytest.mark.parametrize("higher,lower,expected", [
    ((38.09, 8.98), (11.58, 0.89), C.HOLDS),  # SAE > SAE-sparse in the paper
    ((7.89, 4.83), (5.94, 0.21), C.NOT_RESOLVED),  # AE > beta-VAE: the paper's own spreads overlap
    ((1.0, 0.5), (3.0, 0.5), C.DOES_NOT_HOLD),
    ((2.0, 0.5), (1.0, 0.5), C.NOT_RESOLVED),  # touching intervals are not apart
])
def test_separation_rule_on_mean_and_std(higher, lower, expected):
    assert C.separated(higher, lower) == expected


def test_the_paper_claims_cover_the_issue_and_the_paper_resolves_most_of_its_own():
    texts = [c.text for c in C.PAPER_CLAIMS]
    for needed in ("L_rec: SAE > SAE-sparse", "L_rec: SAE-sparse > SAE-dense", "L_rec: AE > AE-l2",
                   "L_rec: VAE > beta-VAE", "latent ANR: SAE-dense > SAE",
                   "s_intra/s_inter (euclidean): VAE > SAE-dense"):
        assert needed in texts
    paper = {c.text: C.separated(c.paper_higher, c.paper_lower) for c in C.PAPER_CLAIMS}
    assert paper["L_rec: AE > beta-VAE"] == paper["L_rec: AE > AE-l2"] == C.NOT_RESOLVED
    assert sum(v == C.HOLDS for v in paper.values()) == len(paper) - 2


def test_rendered_table_has_one_row_per_claim_with_both_verdicts():
    results = {"SAE": seeds(60.0, 62.0, 64.0, anr=0.1), "SAE-dense": seeds(40.0, 41.0, 42.0, anr=0.6)}
    text = C.render_findings(C.findings(results), source="sweep `claims_cpu`")
    lines = text.splitlines()
    assert lines[0] == "Results: sweep `claims_cpu`"
    rows = [line for line in lines if line.startswith("| ") and "claim (paper)" not in line]
    assert len(rows) == len(C.PAPER_CLAIMS)
    dense_vs_sae = next(r for r in rows if r.startswith("| latent ANR: SAE-dense > SAE"))
    cells = [c.strip() for c in dense_vs_sae.strip("|").split("|")]
    assert cells[1] == "SAE-dense 1.00 ± 0.00 vs SAE 0.17 ± 0.20"
    assert cells[2] == "SAE-dense 0.60 ± 0.00 (n=3) vs SAE 0.10 ± 0.00 (n=3)"
    assert cells[3:] == ["**holds**", cells[4], "holds"]
    ae = next(r for r in rows if r.startswith("| L_rec: AE > AE-l2"))
    assert "– (n=0)" in ae and "**not resolved**" in ae and "AE: 0 finished seed(s), 3 needed" in ae
    assert "Rule (`saec.analysis.claims`)" in text


def test_readme_table_lists_every_claim_with_the_papers_numbers():
    from tests.conftest import REPO

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## The paper's claims at CPU scale"):]
    table = C.render_findings(C.findings({}))
    for line in table.splitlines():
        if line.startswith("| ") and "claim (paper)" not in line:
            cells = [c.strip() for c in line.strip("|").split("|")]
            # claim and paper columns as the generator writes them, the paper's own verdict last
            assert f"| {cells[0]} | {cells[1]} |" in section, cells[0]
            row = next(r for r in section.splitlines() if r.startswith(f"| {cells[0]} |"))
            assert row.rstrip().endswith(f"| {cells[5]} |"), row
