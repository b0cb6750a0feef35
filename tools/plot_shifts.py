#!/usr/bin/env python
"""Draw the learned shift distributions of a RubiksNet checkpoint (like the paper's figure).

One row per network stage, one column per shift axis (T, H, W): a histogram of the
per-channel shifts of every block in the stage. For ``*_aq`` models the temporal column
shows the hard integer shift of each channel's strongest tap (-1, 0, +1) at the stored
temperature. A short per-stage summary is printed (and written next to the PNG as JSON).

    python tools/plot_shifts.py runs/train/final.safetensors -o shifts.png
    python tools/plot_shifts.py rubiksnet_large.ssv2 -o large.png   # released weights
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

import torch

AXES = ("T", "H", "W")


def _use_checkout_sources() -> None:
    root = Path(__file__).resolve().parents[1]
    for src in sorted((root / "packages").glob("*/src")):
        if str(src) not in sys.path:
            sys.path.append(str(src))


def collect_shifts(model: torch.nn.Module) -> dict[int, dict[str, torch.Tensor]]:
    """{stage: {axis: 1-D tensor of per-channel shifts}} of a RubiksNet.

    3-D shift layers give T, H and W; 2-D layers (AQ and 2-D variants) give H and W; AQ
    temporal attention gives T as the integer shift of the strongest tap (deployed AQ
    models store those integers).
    """
    from rubiks_models.rubiksnet import TemporalAttentionShift

    found: dict[int, dict[str, list[torch.Tensor]]] = defaultdict(lambda: defaultdict(list))
    for name, module in model.named_modules():
        match = re.match(r"stages\.(\d+)\.", name + ".")
        if match is None:
            continue
        stage = int(match.group(1))
        if isinstance(module, TemporalAttentionShift):
            with torch.no_grad():
                found[stage]["T"].append((module.attention().argmax(1) - 1).float())
    for name, p in model.state_dict().items():
        match = re.match(r"stages\.(\d+)\..*(rubiks|tshift)\.shift$", name)
        if match is None:
            continue
        stage = int(match.group(1))
        rows = p.detach().float()
        if match.group(2) == "tshift":  # deployed AQ: hard temporal shifts (rows T, 0, 0)
            found[stage]["T"].append(rows[0])
            continue
        axes = AXES if rows.shape[0] == 3 else AXES[1:]
        for axis, row in zip(axes, rows, strict=True):
            found[stage][axis].append(row)
    if not found:
        raise ValueError("no shift layers found: is this a RubiksNet checkpoint?")
    return {s: {a: torch.cat(v) for a, v in axes.items()} for s, axes in sorted(found.items())}


def summarise(shifts: dict[int, dict[str, torch.Tensor]]) -> dict[str, dict[str, dict]]:
    """Per stage and axis: channels, mean |shift|, fraction with |shift| >= 0.5, extremes."""
    out: dict[str, dict[str, dict]] = {}
    for stage, axes in shifts.items():
        out[str(stage)] = {
            axis: {
                "channels": int(v.numel()),
                "mean_abs": round(float(v.abs().mean()), 4),
                "frac_abs_ge_0.5": round(float((v.abs() >= 0.5).float().mean()), 4),
                "min": round(float(v.min()), 4),
                "max": round(float(v.max()), 4),
            }
            for axis, v in axes.items()
        }
    return out


def plot(shifts: dict[int, dict[str, torch.Tensor]], title: str, out: Path, limit: float) -> None:
    """Write the histogram grid as a PNG (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(shifts)
    fig, grid = plt.subplots(
        len(stages), 3, figsize=(9, 1.9 * len(stages) + 0.6), squeeze=False, sharex=True
    )
    bins = torch.linspace(-limit, limit, 49).tolist()
    for r, stage in enumerate(stages):
        for c, axis in enumerate(AXES):
            ax = grid[r][c]
            values = shifts[stage].get(axis)
            if values is None:
                ax.set_axis_off()
                continue
            ax.hist(values.clamp(-limit, limit).numpy(), bins=bins, color=f"C{c}")
            ax.axvline(0.0, color="0.6", linewidth=0.6)
            if r == 0:
                ax.set_title(f"{axis} shift")
            if c == 0:
                ax.set_ylabel(f"stage {stage}\nchannels")
    for ax in grid[-1]:
        ax.set_xlabel(f"shift (clamped to ±{limit:g})")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    from rubiks_eval.io import atomic_write

    def write(tmp: str) -> None:
        fig.savefig(tmp, dpi=120, format="png")

    try:
        atomic_write(out, write)
    finally:
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="plot_shifts.py", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="checkpoint file/dir, or a timm name.tag with local weights")
    p.add_argument("-o", "--output", default="shifts.png", help="PNG to write (+ .json summary)")
    p.add_argument("--limit", type=float, default=3.0, help="histogram range ±limit")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    args = p.parse_args(argv)
    if not args.limit > 0:
        p.error("--limit must be > 0")
    try:
        from rubiks_eval.builders import load_model
    except ImportError:
        _use_checkout_sources()
        from rubiks_eval.builders import load_model
    from rubiks_eval.argcheck import module_error, output_errors
    from rubiks_eval.io import atomic_write_json

    out = Path(args.output).expanduser()
    if out.suffix.lower() != ".png":
        p.error(f"--output {out}: name a .png file (the summary goes beside it as .json)")
    summary_path = out.with_suffix(".json")
    errors = output_errors(
        {"--output": out, "--output's summary": summary_path},
        inputs=[args.checkpoint],
        input_roots=[args.checkpoint],
        overwrite=args.overwrite,
    )
    error = errors[0] if errors else module_error("plotting", "matplotlib", "plot")
    if error:
        p.error(error)
    try:
        model, info = load_model(args.checkpoint)
    except (OSError, ValueError) as exc:
        print(f"plot_shifts.py: error: {exc}", file=sys.stderr)
        return 2
    shifts = collect_shifts(model)
    title = f"{info['arch']} — {Path(args.checkpoint).name}"
    plot(shifts, title, out, args.limit)
    summary = {"checkpoint": str(args.checkpoint), "arch": info["arch"], **summarise(shifts)}
    atomic_write_json(summary_path, summary)
    for stage, axes in summarise(shifts).items():
        line = "  ".join(
            f"{a}: mean|s| {v['mean_abs']:.3f}, |s|>=0.5 {100 * v['frac_abs_ge_0.5']:.0f}%"
            for a, v in axes.items()
        )
        print(f"stage {stage}: {line}")
    print(f"wrote {out} and {summary_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
