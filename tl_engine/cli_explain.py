"""`python -m tl_engine explain --run RUN IMAGE --out heatmap.png`: Grad-CAM of a run's
model over one image, written at the image's own size."""

from __future__ import annotations

import argparse
from typing import Any

from .store import Workspace


def cmd_explain(args: argparse.Namespace) -> int:
    from .cli import _import_tensorflow_quietly
    from .explain import write_explanation
    from .runs import model_path

    ws = Workspace(args.workspace)
    model_path(ws, args.run)  # an unknown or unfinished run is named before TF loads
    _import_tensorflow_quietly()
    path, explanation = write_explanation(ws, args.run, args.image, args.out, args.class_name,
                                          overwrite=args.force)
    rows, columns, _ = explanation.feature_map
    print(f"Grad-CAM of {explanation.class_name!r} (probability "
          f"{explanation.probability:.3f}; predicted {explanation.predicted!r}) on the "
          f"{rows}x{columns} feature map, {explanation.overlay.shape[1]}x"
          f"{explanation.overlay.shape[0]} px")
    print(path)
    return 0


def add_explain_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "explain", parents=[common],
        help="Grad-CAM: where in an image a run's model finds a class, as a PNG")
    p.add_argument("--run", required=True)
    p.add_argument("image", help="the image to explain")
    p.add_argument("--out", required=True,
                   help="the PNG to write (the heat map over the image, at its size), "
                        "outside the workspace")
    p.add_argument("--class", dest="class_name", default=None,
                   help="the class to explain (default: the predicted one)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.set_defaults(func=cmd_explain, needs_workspace=True)
