"""explain's own options (the model, reading and output groups are cli/options.py's): defined once,
beside each other, so the command module reads as parse -> one library call -> one view."""

from __future__ import annotations

from typing import Annotated

import typer

HTML_ROWS = 200  # rows --html shows one by one (the global bars are over every row)

Method = Annotated[
    str,
    typer.Option(
        "--method",
        "-m",
        metavar="NAME",
        help=(
            "integrated-gradients, saliency, input-x-gradient, deeplift, gradient-shap, feature-ablation, "
            "each Captum's own class; or permutation: a global importance over DATA (FeaturePermutation, needs -t)."
        ),
    ),
]
ClassChoice = Annotated[
    str | None,
    typer.Option(
        "--class",
        metavar="LABEL|INDEX",
        help="The class or output to explain (default: each row's predicted class; a regression's output).",
    ),
]
Baseline = Annotated[
    str,
    typer.Option(
        "--baseline",
        metavar="zeros|mean|FILE",
        help=(
            "The reference input: zeros, the mean (the training rows' where the weights hold it: preprocess "
            "standardize; else DATA's rows'), or a file of one row (saliency and input-x-gradient take none)."
        ),
    ),
]
Steps = Annotated[
    int, typer.Option("--steps", metavar="N", help="integrated-gradients: the steps of the path integral.")
]
IgMethod = Annotated[
    str,
    typer.Option(
        "--ig-method",
        metavar="NAME",
        help=(
            "integrated-gradients: the rule, as Captum names it (gausslegendre, riemann_trapezoid, "
            "riemann_left, riemann_right, riemann_middle)."
        ),
    ),
]
Samples = Annotated[int, typer.Option("--samples", metavar="N", help="gradient-shap: samples per row.")]
Stdevs = Annotated[float, typer.Option("--stdevs", metavar="S", help="gradient-shap: the noise's standard deviation.")]
SummaryOnly = Annotated[
    bool, typer.Option("--summary", help="Only the mean |attribution| per column over DATA, ranked.")
]
Metric = Annotated[
    str | None,
    typer.Option(
        "--metric",
        metavar="NAME",
        help=(
            "permutation: accuracy, log-loss or mse (default: accuracy for a classifier, mse for a regression); "
            "importance is the drop in the score (accuracy, -log-loss, -mse) when a column is shuffled."
        ),
    ),
]
Repeats = Annotated[int, typer.Option("--repeats", metavar="N", help="permutation: shuffles per column (seeded).")]
Html = Annotated[
    str | None,
    typer.Option(
        "--html",
        metavar="FILE",
        help=(
            "Also write a self-contained HTML page (inline CSS and SVG, nothing fetched): the ranked global bars "
            f"and the first {HTML_ROWS} rows' signed attributions."
        ),
    ),
]


ExplainBatch = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        "-b",
        metavar="N",
        min=1,
        help=(
            "Rows per batch (default: 2048, fewer than forward's: integrated gradients and gradient SHAP run "
            "steps x rows at once; permutation: 1,000,000, and it shuffles within each batch). A float32 result's "
            "last digit can depend on the batch's shape, as in PyTorch."
        ),
    ),
]
