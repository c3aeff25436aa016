"""Sequential gate vs the fixed-sample gate, on the same simulated rollouts.

    python -m bench.gates [--runs 1000] [--report-samples 50] [--reports 400] [--seed 7]
    python -m bench.gates --example     # the worked example of docs/rollouts.md

For each true agreement rate, ``runs`` seeded rollouts stream reports of
``report-samples`` shadow samples; both gates see the same reports. The sequential gate
(halt below 0.97, promote above 0.99, alpha = beta = 0.05; and the single line 0.97/0.97)
looks after every report; the fixed gate is today's: after ``min_samples`` (200) it compares
the point estimate with 0.97 once. Printed: promote / halt / undecided-at-deadline rates and
the median samples to decide, with the ratio to the fixed gate's samples.
"""

from __future__ import annotations

import argparse

from fleet_server.rollouts.gate_sim import fixed_gate, report_counts, sequential_gate
from fleet_server.rollouts.sequential import interval

RATES = (0.95, 0.96, 0.969, 0.98, 0.99, 0.995, 0.999)
LINES = ((0.97, 0.99), (0.97, 0.97))


def worked_example() -> None:
    """A candidate agreeing 96%: halt below 0.98, promote above 0.995, alpha = beta = 0.05."""
    print("| samples | agreeing | interval | decision |\n|---|---|---|---|")
    for n in (25, 100, 300, 600, 750):
        iv = interval(0.96 * n, n, higher_is_better=True, promote=0.995, halt=0.98,
                      alpha=0.05, beta=0.05, prior_strength=100)
        print(f"| {n} | {0.96 * n:g} | [{iv.lower:.3f}, {iv.upper:.4f}] | {iv.decision} |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--report-samples", type=int, default=50)
    ap.add_argument("--reports", type=int, default=400)
    ap.add_argument("--min-samples", type=int, default=200)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--example", action="store_true",
                    help="print the worked example of docs/rollouts.md instead")
    args = ap.parse_args(argv)
    if args.example:
        worked_example()
        return
    cap = args.reports * args.report_samples
    print(f"{args.runs} rollouts per row, reports of {args.report_samples} samples, "
          f"deadline after {cap} samples, alpha = beta = 0.05\n")
    print("| true agreement | gate | promoted | halted | undecided at deadline "
          "| median samples to decide | vs fixed gate |")
    print("|---|---|---|---|---|---|---|")
    for p in RATES:
        counts = report_counts(p, rollouts=args.runs, reports=args.reports,
                               report_samples=args.report_samples, seed=args.seed)
        fixed = fixed_gate(counts, report_samples=args.report_samples,
                           min_samples=args.min_samples, threshold=0.97)
        print(f"| {p:g} | fixed: mean >= 0.97 after {fixed.median_samples:g} "
              f"| {fixed.pass_rate:.1%} | {fixed.halt_rate:.1%} | - "
              f"| {fixed.median_samples:g} | 1.0 |")
        for halt, promote in LINES:
            seq = sequential_gate(counts, report_samples=args.report_samples, halt=halt,
                                  promote=promote, alpha=0.05, beta=0.05)
            ratio = seq.median_samples / fixed.median_samples
            print(f"| {p:g} | sequential halt < {halt:g}, promote > {promote:g} "
                  f"| {seq.pass_rate:.1%} | {seq.halt_rate:.1%} | {seq.undecided_rate:.1%} "
                  f"| {seq.median_samples:g}{'+' if seq.undecided_rate >= 0.5 else ''} "
                  f"| {ratio:.1f} |")


if __name__ == "__main__":
    main()
