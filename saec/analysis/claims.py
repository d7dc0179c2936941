"""The paper's findings as testable claims, and the verdict saec's results give on each.

Each :class:`Claim` compares one metric between two models, in the direction
the paper reports (Table 1, Table 8 and the text of section 3.2; 10 epochs of
full MNIST, T = 100, 5 seeds). :func:`judge` applies one explicit rule to the
per-seed results of a sweep (the ``eval.json`` of every finished run, keyed by
the sweep's configuration names) and :func:`render_findings` writes the
README's findings table.

The verdict rule, in order (the first that applies decides):

1. **not resolved** when a model has fewer than :data:`MIN_SEEDS` finished
   seeds, or the metric is undefined for some of them (e.g. s_intra/s_inter of
   an all-silent latent layer);
2. **not resolved** when a seed of either model has not left the all-zero
   output: its L_rec is not at least :data:`LEFT_ZERO_MARGIN` (5 %) below the
   L_rec an all-zero output scores on the same images (``eval.json``
   ``rec_loss_zero_output``). An untrained network says nothing about the
   paper's trained ones;
3. **not resolved** when the two models trained different numbers of
   optimizer steps (``train_steps``, which the sweep adds from each run's
   checkpoint): the paper trains every model for the same 10 epochs, so a
   comparison at unequal budgets neither confirms nor refutes it (the claims
   sweep gives each model family the shortest schedule at which it leaves the
   all-zero output, which differ);
4. **holds** when the two models' mean ± std intervals (population std over
   seeds) are apart in the claimed direction;
5. **does not hold** when they are apart in the opposite direction;
6. **not resolved** otherwise: the intervals overlap.

The same rule, applied to the paper's own mean ± std, is shown beside it: a
claim the paper's numbers do not separate either (AE 7.89 ± 4.83 vs beta-VAE
5.94 ± 0.21) cannot be expected to resolve here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

#: Seeds each model needs before a claim about it is judged (the claims sweep runs 3).
MIN_SEEDS = 3
#: A run has left the all-zero output when L_rec < (1 - margin) * all-zero L_rec on the same images.
LEFT_ZERO_MARGIN = 0.05

HOLDS = "holds"
DOES_NOT_HOLD = "does not hold"
NOT_RESOLVED = "not resolved"


def _latent(metrics: Mapping[str, Any], key: str) -> Any:
    layers = metrics.get("layers") or {}
    return (layers.get(metrics.get("latent_layer") or "") or {}).get(key)


#: The metrics claims are made about: name -> (label in the table, reader of one eval.json, decimals).
METRICS: dict[str, tuple[str, Callable[[Mapping[str, Any]], Any], int]] = {
    "rec_loss": ("L_rec", lambda m: m.get("rec_loss"), 2),
    "latent_anr": ("latent ANR", lambda m: _latent(m, "anr"), 2),
    "s_intra_inter": ("s_intra/s_inter (euclidean)", lambda m: (m.get("s_intra_inter") or {}).get("euclidean"), 2),
}


@dataclass(frozen=True)
class Claim:
    """``metric`` of model ``higher`` is above that of model ``lower`` (the paper's finding)."""

    metric: str  # a key of METRICS
    higher: str  # sweep configuration name expected to score higher
    lower: str  # ... and lower
    paper_higher: tuple[float, float]  # the paper's mean, std of `higher`
    paper_lower: tuple[float, float]  # ... of `lower`
    source: str  # where the paper says it

    @property
    def text(self) -> str:
        return f"{METRICS[self.metric][0]}: {self.higher} > {self.lower}"


#: The paper's findings (full MNIST, T = 100, 10 epochs, 5 seeds; mean ± std as printed).
PAPER_CLAIMS: tuple[Claim, ...] = (
    Claim("rec_loss", "SAE", "SAE-sparse", (38.09, 8.98), (11.58, 0.89), "Table 1; 3.2: p < 0.01"),
    Claim("rec_loss", "SAE-sparse", "SAE-dense", (11.58, 0.89), (6.75, 0.26), "Table 1; 3.2: p < 0.001"),
    Claim("rec_loss", "VAE", "AE", (19.09, 0.66), (7.89, 4.83), "Table 1"),
    Claim("rec_loss", "AE", "beta-VAE", (7.89, 4.83), (5.94, 0.21), "Table 1"),
    Claim("rec_loss", "beta-VAE", "AE-l2", (5.94, 0.21), (4.67, 0.98), "Table 1"),
    Claim("rec_loss", "AE", "AE-l2", (7.89, 4.83), (4.67, 0.98), "Table 1; 3.2"),
    Claim("rec_loss", "VAE", "beta-VAE", (19.09, 0.66), (5.94, 0.21), "Table 1; 3.2"),
    Claim("latent_anr", "SAE-dense", "SAE", (1.0, 0.0), (0.17, 0.20), "3.2; Table 7: INP 0.83"),
    Claim("latent_anr", "SAE-sparse", "SAE", (0.93, 0.04), (0.17, 0.20), "3.2: p < 0.01"),
    Claim("s_intra_inter", "VAE", "SAE-dense", (0.97, 0.00), (0.78, 0.00), "Table 1, Table 8"),
)


@dataclass(frozen=True)
class Summary:
    """One model's values of one metric over its finished seeds."""

    values: tuple[float, ...]
    seeds: int  # finished seeds (values may be fewer: the metric was undefined for some)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        """Population std (ddof 0), as the sweep's table."""
        return float(np.std(self.values))

    def cell(self, decimals: int) -> str:
        if not self.values:
            return "–"
        partial = f" ({len(self.values)} of {self.seeds} seeds)" if len(self.values) < self.seeds else ""
        return f"{self.mean:.{decimals}f} ± {self.std:.{decimals}f}{partial}"


def summarize(runs: Sequence[Mapping[str, Any]], metric: str) -> Summary:
    """The finite values of ``metric`` over ``runs`` (the eval.json of each finished seed)."""
    read = METRICS[metric][1]
    values = [float(v) for v in (read(m) for m in runs)
              if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)]
    return Summary(tuple(values), len(runs))


def separated(higher: tuple[float, float], lower: tuple[float, float]) -> str:
    """Rules 3-5 on two (mean, std) pairs: HOLDS, DOES_NOT_HOLD or NOT_RESOLVED (the intervals overlap)."""
    (mh, sh), (ml, sl) = higher, lower
    if mh - sh > ml + sl:
        return HOLDS
    if mh + sh < ml - sl:
        return DOES_NOT_HOLD
    return NOT_RESOLVED


def not_learned(name: str, runs: Sequence[Mapping[str, Any]]) -> str | None:
    """Why ``name`` has not left the all-zero output on some seed (rule 2), or None.

    A seed whose ``eval.json`` lacks ``rec_loss_zero_output`` (written since this rule exists; ``saec eval
    RUN`` rewrites it) cannot be judged and counts as not left.
    """
    for m in runs:
        seed = m.get("seed", "?")
        rec, zero = m.get("rec_loss"), m.get("rec_loss_zero_output")
        if not isinstance(zero, (int, float)) or not isinstance(rec, (int, float)):
            return f"{name} seed {seed}: eval.json has no rec_loss_zero_output (rerun `saec eval` on the run)"
        if not rec < (1.0 - LEFT_ZERO_MARGIN) * zero:
            return f"{name} seed {seed} has not left the all-zero output (L_rec {rec:.2f}, all-zero {zero:.2f})"
    return None


@dataclass(frozen=True)
class Finding:
    """One row of the findings table."""

    claim: Claim
    higher: Summary
    lower: Summary
    verdict: str
    reason: str
    paper_verdict: str


def _steps_text(runs: Sequence[Mapping[str, Any]]) -> str | None:
    """The runs' optimizer steps as one text ("9,480", or "316-632" when they differ); None when a run lacks them."""
    steps = [m.get("train_steps") for m in runs]
    if not steps or not all(isinstance(s, int) and not isinstance(s, bool) for s in steps):
        return None
    lo, hi = min(steps), max(steps)
    return f"{lo:,}" if lo == hi else f"{lo:,}-{hi:,}"


def unequal_training(higher: str, higher_runs: Sequence[Mapping[str, Any]],
                     lower: str, lower_runs: Sequence[Mapping[str, Any]]) -> str | None:
    """Why two models' results are not comparable because they trained unequal step counts (rule 3), or None.

    Runs without ``train_steps`` (results from before the sweep recorded them) are not judged by this rule.
    """
    a, b = _steps_text(higher_runs), _steps_text(lower_runs)
    if a is None or b is None or a == b:
        return None
    return f"unequal training: {higher} {a} optimizer steps, {lower} {b} (the paper trains both 10 epochs)"


def judge(claim: Claim, results: Mapping[str, Sequence[Mapping[str, Any]]]) -> Finding:
    """Apply the module's verdict rule to ``claim``.

    Args:
        claim: the paper's finding.
        results: configuration name -> the ``eval.json`` dicts of its finished seeds (each may carry
            ``seed``, used in reasons).

    Returns:
        The :class:`Finding`, with the verdict, its reason, and the same rule's verdict on the paper's numbers.
    """
    decimals = METRICS[claim.metric][2]
    paper = separated(claim.paper_higher, claim.paper_lower)
    runs = {name: list(results.get(name) or []) for name in (claim.higher, claim.lower)}
    stats = {name: summarize(runs[name], claim.metric) for name in runs}
    hi, lo = stats[claim.higher], stats[claim.lower]

    def finding(verdict: str, reason: str) -> Finding:
        return Finding(claim, hi, lo, verdict, reason, paper)

    for name, s in stats.items():
        if s.seeds < MIN_SEEDS:
            return finding(NOT_RESOLVED, f"{name}: {s.seeds} finished seed(s), {MIN_SEEDS} needed")
        if len(s.values) < s.seeds:
            return finding(NOT_RESOLVED, f"{name}: {METRICS[claim.metric][0]} undefined for "
                                         f"{s.seeds - len(s.values)} of {s.seeds} seeds")
    for name in (claim.higher, claim.lower):
        why = not_learned(name, runs[name])
        if why is not None:
            return finding(NOT_RESOLVED, why)
    why = unequal_training(claim.higher, runs[claim.higher], claim.lower, runs[claim.lower])
    if why is not None:
        return finding(NOT_RESOLVED, why)
    verdict = separated((hi.mean, hi.std), (lo.mean, lo.std))
    a, b = hi.cell(decimals), lo.cell(decimals)
    reason = {
        HOLDS: f"{claim.higher} {a} is above {claim.lower} {b} by more than both spreads",
        DOES_NOT_HOLD: f"{claim.higher} {a} is below {claim.lower} {b} by more than both spreads",
        NOT_RESOLVED: f"mean ± std overlap: {claim.higher} {a}, {claim.lower} {b}",
    }[verdict]
    return finding(verdict, reason)


def findings(results: Mapping[str, Sequence[Mapping[str, Any]]],
             claims: Sequence[Claim] = PAPER_CLAIMS) -> list[Finding]:
    """:func:`judge` for every claim."""
    return [judge(c, results) for c in claims]


def render_findings(rows: Sequence[Finding], *, source: str | None = None) -> str:
    """The README's findings table (markdown): claim, paper, saec, verdict and why, the paper's own verdict.

    Args:
        rows: from :func:`findings`.
        source: a sentence naming where the results come from (the sweep), printed above the table.
    """
    lines = [f"Results: {source}", ""] if source else []
    lines += [
        "| claim (paper) | paper (mean ± std, 5 seeds) | saec (mean ± std over seeds) | here | why | "
        "paper's numbers, same rule |",
        "|---|---|---|---|---|---|",
    ]
    for f in rows:
        c, dec = f.claim, METRICS[f.claim.metric][2]
        paper = (f"{c.higher} {c.paper_higher[0]:.{dec}f} ± {c.paper_higher[1]:.{dec}f} vs {c.lower} "
                 f"{c.paper_lower[0]:.{dec}f} ± {c.paper_lower[1]:.{dec}f}")
        ours = (f"{c.higher} {f.higher.cell(dec)} (n={f.higher.seeds}) vs {c.lower} {f.lower.cell(dec)} "
                f"(n={f.lower.seeds})")
        lines.append(f"| {c.text} ({c.source}) | {paper} | {ours} | **{f.verdict}** | {f.reason} | "
                     f"{f.paper_verdict} |")
    lines += ["", f"Rule (`saec.analysis.claims`): a claim holds when the two models' mean ± std (population std "
              f"over seeds) are apart in the paper's direction, does not hold when they are apart in the other "
              f"direction, and is not resolved when they overlap, when a model has fewer than {MIN_SEEDS} "
              f"finished seeds, when a seed's L_rec is not {LEFT_ZERO_MARGIN:.0%} below the all-zero "
              f"output's on the same images, or when the two models trained different numbers of optimizer "
              f"steps."]
    return "\n".join(lines) + "\n"
