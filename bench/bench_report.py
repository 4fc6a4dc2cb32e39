"""BENCHMARKS.md from bench/run.py's figures: what was measured, where, and how to rerun it."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

DESCRIPTIONS = {
    "frozen_speedup": "seed recipe ÷ engine, frozen, cold, 20 epochs",
    "rerun_ratio": "another head on the same photos ÷ the first run",
    "finetune_speedup": "`image_dataset_from_directory` recipe ÷ engine, top 2 blocks, 10 epochs",
    "pipeline_efficiency": "features from stored files ÷ bare `predict` on decoded tensors",
    "predict_p50_ratio": "one photo end to end ÷ bare model call (p50, warm)",
    "model_ready_seconds": "choosing a run → its first prediction, in seconds",
    "memory_ratio": "peak RSS training on all photos ÷ on 400",
}


def _cell(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def write_markdown(path: Path, figures: dict[str, Any], targets: dict[str, tuple]) -> None:
    today = datetime.date.today().isoformat()
    lines = [
        "# Benchmarks",
        "",
        f"Measured {today} on {figures['machine']}"
        f"{', device: ' + figures['device'] if figures.get('device') else ''}, "
        f"with `{figures['command']} --markdown "
        f"BENCHMARKS.md` ({figures['total_seconds']:.0f} s in all). {figures['photos']} "
        "flower photos (at 224 px, 80/20 split), MobileNetV2-0.35 with ImageNet weights; every "
        "measurement in its own process. Baselines and method: `bench/run.py`'s docstring.",
        "",
        "| figure | what | value | target | met |",
        "|---|---|---:|---|---|",
    ]
    for name, (sense, bound) in targets.items():
        met = figures["targets_met"][name]
        lines.append(f"| `{name}` | {DESCRIPTIONS[name]} | {_cell(figures[name])} | "
                     f"{sense} {bound:g} | {'yes' if met else '**no**'} |")
    lines += [
        "",
        "## Times",
        "",
        "| measurement | seconds | val accuracy |",
        "|---|---:|---:|",
        f"| seed recipe, frozen | {figures['seed_recipe_seconds']:.1f} | "
        f"{figures['seed_recipe_val_accuracy']:.3f} |",
        f"| engine, frozen (cold: new worker) | {figures['engine_frozen_seconds']:.1f} | "
        f"{figures['engine_frozen_val_accuracy']:.3f} |",
        f"| engine, another head (warm worker) | {figures['rerun_seconds']:.1f} | |",
        f"| engine, another head (new worker) | {figures['cold_rerun_seconds']:.1f} | |",
        f"| dataset recipe, top 2 blocks | {figures['dataset_recipe_seconds']:.1f} | "
        f"{figures['dataset_recipe_val_accuracy']:.3f} |",
        f"| engine, top 2 blocks | {figures['engine_finetune_seconds']:.1f} | "
        f"{figures['engine_finetune_val_accuracy']:.3f} |",
        "",
        f"Input pipeline: {figures['engine_images_per_s']:.0f} photos/s from stored files, "
        f"{figures['bare_images_per_s']:.0f}/s bare. Prediction: p50 "
        f"{figures['predict_p50_ms']:.1f} ms per photo end to end against "
        f"{figures['bare_p50_ms']:.1f} ms for the bare model call; a batch of 256 at "
        f"{figures['batch_images_per_s']:.0f} photos/s; TensorFlow's import "
        f"({figures['tf_import_seconds']:.1f} s) is not counted in the model's readiness, "
        "as the server has done it before anyone predicts.",
        "",
        "## Scaling and memory (frozen, 20 epochs, one process each)",
        "",
        "| photos | seconds | peak RSS (MB) |",
        "|---:|---:|---:|",
    ]
    for photos, peak in figures["peak_rss_mb"].items():
        seconds = figures["scaling"].get(photos)
        lines.append(f"| {photos} | {'' if seconds is None else f'{seconds:.1f}'} | "
                     f"{peak:.0f} |")
    lines += ["", f"Marginal seconds per photo, large ÷ small range: "
              f"{figures['scaling_marginal_ratio']:.2f} (1 = linear).", ""]
    lines += _demo_section(figures.get("demo_path"))
    if not figures.get("gpu"):
        lines += ["## Not measured here", "",
                  "The engine has not yet run on a GPU: the GPU machine lent to this "
                  "project has no TensorFlow and could not install it. What the networks "
                  "cost on an NVIDIA H200 (under Keras on JAX), and the GPU settings the "
                  "engine takes from it (mixed precision, the batch that fills the device, "
                  "uint8 pixels), are in BENCHMARKS-GPU.md. Run `python bench/run.py "
                  "--json` on a GPU host with TensorFlow to add the engine's figures.", ""]
    path.write_text("\n".join(lines))


DEMO_STEPS = {
    "server_start": "server start", "home_page": "Home", "create_project": "project",
    "dataset_page": "Dataset page", "sample_ingest": "sample ingest",
    "training_page": "Training page", "training": "training",
    "prediction_page": "Prediction page", "prediction": "the prediction",
}
TRAINING_PARTS = {
    "training_queued_s": "queued", "training_worker_start_s": "the prewarmed worker's start-up",
    "training_worker_training_s": "training",
    "training_completed_shown_s": "shown by the page's refresh",
}


def _demo_section(demo: dict[str, Any] | None) -> list[str]:
    """The live-demo path (bench/demo_path.py) in words, or why it has no figure."""
    if not demo:
        return []
    intro = ("`python bench/demo_path.py --json` (headless Chromium; the server started on an "
             "empty workspace, a project created, the ants-vs-bees sample taken, trained with "
             "the defaults, one photo predicted)")
    if not demo.get("ok"):
        return ["## Demo path", "", f"{intro} failed in step {demo.get('failed_step')}: "
                f"{demo.get('error')}", ""]
    parts = ", ".join(f"{label} {demo[key]:.1f} s" for key, label in TRAINING_PARTS.items()
                      if isinstance(demo.get(key), (int, float)))
    steps = ", ".join(f"{label} {demo[f'{key}_s']:.1f} s"
                      + (f" ({parts})" if key == "training" and parts else "")
                      for key, label in DEMO_STEPS.items()
                      if isinstance(demo.get(f"{key}_s"), (int, float)))
    return ["## Demo path", "", f"{intro}: **{demo['total_s']:.1f} s** from starting the "
            f"server to the label shown (target: under 30 s), of which {steps}.", ""]
