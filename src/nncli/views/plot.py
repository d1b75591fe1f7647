"""A loss curve drawn with text, for the terminal: train (●) and validation (○) loss per epoch."""

from __future__ import annotations


def loss_curve(history: list[dict], width: int = 60, height: int = 10):
    from rich.text import Text

    series = [("train_loss", "●", "cyan"), ("val_loss", "○", "magenta")]
    values = [h[key] for h in history for key, _, _ in series if h.get(key) is not None]
    if not values:
        return Text("")
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    epochs = len(history)
    columns = min(width, max(epochs, 2))
    grid = [[(" ", "")] * columns for _ in range(height)]
    for i, h in enumerate(history):
        x = round(i * (columns - 1) / max(epochs - 1, 1))
        for key, mark, style in series:
            if h.get(key) is not None:
                y = round((h[key] - low) / span * (height - 1))
                grid[height - 1 - y][x] = (mark, style)
    text = Text()
    label_width = max(len(f"{high:.4f}"), len(f"{low:.4f}"))
    for r, row in enumerate(grid):
        label = f"{high:.4f}" if r == 0 else (f"{low:.4f}" if r == height - 1 else "")
        text.append(label.rjust(label_width) + " ┤", style="dim")
        for mark, style in row:
            text.append(mark, style=style)
        text.append("\n")
    text.append(" " * label_width + " └" + "─" * columns + "\n", style="dim")
    text.append(" " * label_width + f"  epoch 1{' ' * max(columns - 8 - len(str(epochs)), 1)}{epochs}\n", style="dim")
    text.append(" " * label_width + "  ● train loss", style="cyan")
    if any(h.get("val_loss") is not None for h in history):
        text.append("   ○ validation loss", style="magenta")
    return text


def reliability_diagram(records: list[dict], binary: bool, height: int = 10, width: int = 60):
    """Guo et al.'s reliability diagram drawn with text: a bar per bin up to its accuracy (█, out of
    `height` rows: round(accuracy × height) cells) and its mean confidence marked (○; ● where it is
    inside the bar); a calibrated model's marks sit on its bars' tops. An empty bin is blank."""
    from rich.text import Text

    bins = len(records)
    cell = max(1, min(4, width // max(bins, 1)))  # each bin's columns
    text = Text()
    for level in range(height, 0, -1):  # the top row first; row `level` spans ((level-1)/h, level/h]
        label = "1.0" if level == height else ("0.0" if level == 1 else "")
        text.append(label.rjust(3) + " ┤", style="dim")
        for r in records:
            filled = r["accuracy"] is not None and round(r["accuracy"] * height) >= level
            mark = r["confidence"] is not None and max(1, round(r["confidence"] * height)) == level
            if mark:
                text.append(("●" if filled else "○").ljust(cell, "█" if filled else " "), style="magenta")
            else:
                text.append(("█" if filled else " ") * cell, style="cyan")
        text.append("\n")
    text.append("    └" + "─" * (cell * bins) + "\n", style="dim")
    on = "P(class 1)" if binary else "confidence"
    text.append(f"     0{' ' * max(cell * bins - 2, 1)}1  ({on}, {bins} bins)\n", style="dim")
    truth = "fraction of class 1" if binary else "accuracy"
    text.append(f"     █ {truth}", style="cyan")
    text.append(f"   ○ mean {on}", style="magenta")
    return text
