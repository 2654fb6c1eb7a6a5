"""Two implementations of the H-DNN 2-D experiments compared case by case over their seeds: the
mean and median test accuracy of each, and two-sided tests of the difference, Mann-Whitney U and
Welch's t (scipy.stats). Reads any number of CSVs written by hdnn_2d_reproduction.py (for example
seeds 1-3 in one and seeds 4-10 in another); a row repeated across files counts once.

``--paired``: the two implementations' runs of one seed start from the same draws (a code and its
copy with nudged initial weights, ``hdnn_2d_reproduction.py --nudge``), so the script also sums up
the change of each run from one to the other.

    python analysis/hdnn_2d_statistics.py docs/results/hdnn_2d.csv docs/results/hdnn_2d_seeds_4_to_10.csv
        [--first contham] [--second reference] [--level 0.05] [--paired] [--seeds 1 2 3]
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

from scipy.stats import mannwhitneyu, ttest_ind

Case = tuple[str, int, str]  # dataset, layers, function


def accuracies(paths: list[Path], only: set[int] | None = None) -> dict[Case, dict[str, dict[int, float]]]:
    """Test accuracy (%) per case, implementation and seed (only the seeds in ``only``, if given);
    rows without an accuracy are skipped."""
    cases: dict[Case, dict[str, dict[int, float]]] = {}
    for path in paths:
        with path.open() as file:
            for row in csv.DictReader(file):
                if row["test_accuracy"] != "" and (only is None or int(row["seed"]) in only):
                    case = (row["dataset"], int(row["layers"]), row["function"])
                    seeds = cases.setdefault(case, {}).setdefault(row["implementation"], {})
                    seeds[int(row["seed"])] = 100 * float(row["test_accuracy"])
    return cases


def compare(cases: dict[Case, dict[str, dict[int, float]]], first: str, second: str, level: float) -> str:
    """Markdown: one line per case both implementations ran on at least two seeds, then a count."""
    lines = [
        f"| dataset | layers | function | seeds | {first} mean | {second} mean | {first} median | {second} median "
        "| Mann-Whitney p | Welch p |",
        "|---" * 10 + "|",
    ]
    compared = above = significant_above = significant_below = 0
    for (dataset, layers, function), runs in sorted(cases.items()):
        a, b = list(runs.get(first, {}).values()), list(runs.get(second, {}).values())
        if len(a) < 2 or len(b) < 2:
            continue
        u = mannwhitneyu(a, b, alternative="two-sided").pvalue
        t = ttest_ind(a, b, equal_var=False).pvalue
        mean_a, mean_b = statistics.mean(a), statistics.mean(b)
        compared, above = compared + 1, above + (mean_a >= mean_b)
        significant_above += mean_a > mean_b and u < level
        significant_below += mean_a < mean_b and u < level
        seeds = f"{len(a)}" if len(a) == len(b) else f"{len(a)} / {len(b)}"
        lines.append(
            f"| {dataset} | {layers} | {function} | {seeds} | {mean_a:.1f} | {mean_b:.1f} "
            f"| {statistics.median(a):.1f} | {statistics.median(b):.1f} | {u:.2g} | {t:.2g} |"
        )
    lines.append(
        f"\n{first}'s mean >= {second}'s in {above} of {compared} cases; "
        f"Mann-Whitney p < {level}: {significant_above} above, {significant_below} below."
    )
    return "\n".join(lines)


def paired_changes(cases: dict[Case, dict[str, dict[int, float]]], first: str, second: str) -> str:
    """One line on the runs of the same case and seed in both implementations: how many changed
    accuracy from ``second`` to ``first``, and by how many points."""
    changes = [
        runs[first][seed] - runs[second][seed]
        for runs in cases.values()
        for seed in sorted(set(runs.get(first, {})) & set(runs.get(second, {})))
    ]
    if not changes:
        return "No case and seed ran in both."
    sizes = [abs(change) for change in changes]
    return (
        f"Same case and seed in both: {len(changes)} runs; the accuracy changed in "
        f"{sum(size > 0 for size in sizes)} ({sum(c > 0 for c in changes)} up, {sum(c < 0 for c in changes)} down); "
        f"|change| median {statistics.median(sizes):.2f}, mean {statistics.mean(sizes):.2f}, "
        f"largest {max(sizes):.2f} points."
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="+", type=Path, help="hdnn_2d.csv files of hdnn_2d_reproduction.py")
    parser.add_argument("--first", default="contham", help="implementation label (default contham)")
    parser.add_argument("--second", default="reference", help="implementation label (default reference)")
    parser.add_argument("--level", type=float, default=0.05, help="significance level of the count")
    parser.add_argument("--paired", action="store_true", help="the runs of a seed share their draws (--nudge)")
    parser.add_argument("--seeds", nargs="+", type=int, help="only these seeds (default: all in the files)")
    args = parser.parse_args(argv)
    cases = accuracies(args.csv, None if args.seeds is None else set(args.seeds))
    labels = sorted({label for runs in cases.values() for label in runs})
    for name in ("first", "second"):
        if getattr(args, name) not in labels:
            parser.error(f"--{name} must be one of {labels}; got {getattr(args, name)!r}")
    print(compare(cases, args.first, args.second, args.level))
    if args.paired:
        print(paired_changes(cases, args.first, args.second))


if __name__ == "__main__":
    main()
