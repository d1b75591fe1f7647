"""gradcheck: autograd's gradients beside finite differences (nncli.lib.inside.gradcheck, views/inside.py)."""

from __future__ import annotations

import math
from typing import Annotated

import typer

from nncli.cli.commands.common import emit
from nncli.cli.options import (
    OUTPUT,
    READ,
    RUNTIME,
    TARGETS,
    Data,
    FloatType,
    Full,
    InspectMode,
    Loss,
    ModelGroup,
    OutputGroup,
    ReadGroup,
    RunMode,
    RuntimeGroup,
    Seed,
    Spec,
    TargetsGroup,
    Weights,
    choice,
    finite_non_negative,
    load_model,
    output_target,
    read_options,
    with_options,
)
from nncli.lib.inside import ATOL, EPS, RTOL  # the library's defaults (no torch at import)

Eps = Annotated[
    float,
    typer.Option(
        "--eps", metavar="EPS", help="The finite-difference step: (f(p + eps) - f(p - eps)) / (2 eps), in float64."
    ),
]
Atol = Annotated[
    float,
    typer.Option(
        "--atol",
        metavar="X",
        help="Absolute tolerance (torch.autograd.gradcheck's default).",
        callback=finite_non_negative,
    ),
]
Rtol = Annotated[
    float,
    typer.Option(
        "--rtol",
        metavar="X",
        help="Relative tolerance (torch.autograd.gradcheck's default).",
        callback=finite_non_negative,
    ),
]
MaxChecks = Annotated[
    int | None,
    typer.Option(
        "--max-checks",
        metavar="N",
        min=1,
        help=(
            "Check N parameter values drawn at random with the seed (needed above 10,000 parameters; each check "
            "runs the model twice)."
        ),
    ),
]
CheckLayer = Annotated[
    int | None,
    typer.Option("--layer", metavar="I", help="Show only layer I's parameters (all are checked; 0-based)."),
]


@with_options(TARGETS, READ, OUTPUT, RUNTIME)
def gradcheck(
    spec: Spec,
    data: Data,
    eps: Eps = EPS,
    atol: Atol = ATOL,
    rtol: Rtol = RTOL,
    max_checks: MaxChecks = None,
    mode: InspectMode = "eval",
    loss: Loss = None,
    layer: CheckLayer = None,
    full: Full = False,
    seed: Seed = None,
    weights: Weights = None,
    targets: TargetsGroup = None,
    read: ReadGroup = None,
    output: OutputGroup = None,
    runtime: RuntimeGroup = None,
) -> None:
    """Autograd's gradient of the loss beside central finite differences, in float64, parameter by parameter.

    A value passes where |autograd - numerical| <= atol + rtol * |numerical|, torch.autograd.gradcheck's
    rule and defaults (eps 1e-6, atol 1e-5, rtol 1e-3). The model is built in float64 (as --dtype
    float64 builds it) and DATA held in memory. Exit status 1 when any value fails."""
    from nncli.errors import UsageError
    from nncli.lib import inside
    from nncli.views.inside import gradcheck_report, layer_index
    from nncli.views.render import rows_text

    mode = choice(mode, RunMode, "--mode")
    if not (math.isfinite(eps) and eps > 0):
        raise UsageError(f"--eps must be a finite number above 0, got {eps}")
    m = load_model(spec, ModelGroup(seed, weights, FloatType.float64), runtime)
    target = output_target(output, inputs=[spec, data, targets.targets, weights])
    result = inside.gradcheck(
        m,
        data,
        loss=loss,
        eps=eps,
        atol=atol,
        rtol=rtol,
        max_checks=max_checks,
        mode=mode,
        read=read_options(read, targets),
    )
    checks = result.params
    if layer is not None:
        index = layer_index(layer, len(m.built.layers))
        checks = [c for c in checks if c.layer == index]
        if not checks:
            kind = m.built.layers[index].type
            raise UsageError(f"--layer {layer}: layers[{index}] ({kind}) has no parameters checked")
    verdict = "passed" if result.passed else "FAILED"
    sample = (
        f"{result.checked:,} of {result.total:,} values drawn at random (seed {m.built.seed})"
        if result.sampled
        else f"all {result.total:,} values"
    )
    text = (
        f"gradcheck {verdict}: {sample}, {result.failures:,} outside atol {atol:g} + rtol {rtol:g} × |numerical|; "
        "central differences with "
        f"eps {eps:g}; {m.caption}; {mode} mode; {result.loss_fn} over {rows_text(result.rows)}"
    )
    emit(target, gradcheck_report(result, checks, text, target.precision, full))
    if not result.passed:
        raise typer.Exit(1)
