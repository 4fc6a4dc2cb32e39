"""Transfer Learning Studio engine: datasets, backbones, freeze strategies, training jobs,
evaluation, prediction and export over a persistent workspace. No UI code lives here.

Importing this package imports none of its modules: each name below loads its module on
first use (PEP 562), so a command or a starting worker pays only for what it uses, and
nothing imports TensorFlow but the functions that need it.
"""

from __future__ import annotations

import importlib
from typing import Any

# module -> the names it gives this package
_EXPORTS: dict[str, tuple[str, ...]] = {
    "access": ("AccessDenied", "Identity", "Role",),
    "accounts": ("SignInRefused",),
    "calibration": (
        "DEFAULT_NOT_SURE_BELOW", "apply_temperature", "calibration_report",
        "expected_calibration_error", "fit_temperature", "reliability",
    ),
    "datasets": (
        "Dataset", "HealthReport", "ImageRecord", "Upload", "check_data", "check_health",
        "delete_dataset", "ingest_folder", "ingest_tree", "ingest_uploads", "ingest_zip",
        "list_datasets", "load_dataset", "revise_dataset", "split_records",
    ),
    "device": ("MIXED_PRECISION_MIN_BATCH", "DeviceInfo",),
    "drafts": ("load_draft", "save_draft",),
    "errors": (
        "DatasetError", "ModelDamaged", "NotFound", "RunNotReady", "SpecError", "TLError",
        "WeightsUnavailable", "WorkspaceDamaged", "WorkspaceReadOnly",
    ),
    "explain": ("Explanation", "GradCam", "explain_image", "write_explanation",),
    "export": ("export_bytes", "export_run", "model_card",),
    "familiarity": ("FamiliarityProfile", "load_profile",),
    "features": ("FeatureExtractor", "FeatureSet", "extract_features", "feature_extractor",),
    "freeze": ("FreezePlan", "describe_freeze",),
    "hints": ("Hint", "Overfitting", "overfitting", "run_hints", "spec_hints",),
    "job_kinds": ("list_job_kinds", "register_job_kind",),
    "jobs": (
        "RunStalled", "Submission", "cancel_run", "ensure_worker", "prewarm_worker",
        "recover_interrupted", "resume_run", "submit_job", "submit_run", "wait_for_run",
    ),
    "label_issues": (
        "Suspect", "find_label_issues", "latest_label_issues", "map_of", "submit_label_issues",
        "suspects_of",
    ),
    "lr_find": ("latest_lr_find", "submit_lr_find",),
    "phase_weights": ("use_head_phase_weights",),
    "phases": ("Phase", "phases",),
    "predict": (
        "BatchItem", "Prediction", "Refused", "images_in_zip", "load_predictor", "predict_images",
        "prediction_batch", "warm_predictor",
    ),
    "probe": (
        "ProbeChoice", "ProbeRow", "default_choices", "probe_jobs", "probe_table", "submit_probes",
    ),
    "progress": ("Progress",),
    "registry": ("BACKBONES", "Backbone", "get_backbone", "list_backbones",),
    "runs": (
        "RunRecord", "RunStatus", "active_runs", "delete_run", "evaluation", "get_run",
        "list_runs", "queue_position", "run_metrics", "running_run", "trained_so_far",
    ),
    "samples": ("synthetic_shapes",),
    "scoring": ("cell_images", "confused_pairs", "top_k_for",),
    "spec": (
        "AUGMENTATIONS", "KEEP_WEIGHTS", "STRATEGIES", "STRATEGY_HELP", "STRATEGY_NAMES",
        "RunSpec", "Setting", "describe", "setting", "settings",
    ),
    "store": ("Workspace",),
    "summary": ("RunSummary",),
    "sweep": (
        "SweepResult", "SweepRow", "list_sweeps", "submit_sweep", "sweep_entries", "sweep_result",
    ),
    "weights": (
        "WeightsFile", "find_weight_file", "list_weight_files", "weights_dir", "weights_status",
    ),
}
# name here -> (module, its name there)
_RENAMED: dict[str, tuple[str, str]] = {
    "configure_device": ("device", "configure"),
    "describe_device": ("device", "describe"),
    "EXPORT_FORMATS": ("export", "FORMATS"),
}
_SOURCE = {name: (module, name) for module, names in _EXPORTS.items() for name in names}
_SOURCE.update(_RENAMED)


def __getattr__(name: str) -> Any:
    """A public name, or a submodule (`tl_engine.runs`), loaded on first use and kept."""
    module, attribute = _SOURCE.get(name, (name, None))
    try:
        loaded = importlib.import_module(f".{module}", __name__)
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{module}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = loaded if attribute is None else getattr(loaded, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "AUGMENTATIONS",
    "AccessDenied",
    "BACKBONES",
    "Backbone",
    "BatchItem",
    "DEFAULT_NOT_SURE_BELOW",
    "Dataset",
    "DatasetError",
    "DeviceInfo",
    "MIXED_PRECISION_MIN_BATCH",
    "EXPORT_FORMATS",
    "Explanation",
    "FamiliarityProfile",
    "FeatureExtractor",
    "FeatureSet",
    "FreezePlan",
    "GradCam",
    "HealthReport",
    "Hint",
    "Identity",
    "ImageRecord",
    "KEEP_WEIGHTS",
    "ModelDamaged",
    "NotFound",
    "Overfitting",
    "Phase",
    "Prediction",
    "ProbeChoice",
    "ProbeRow",
    "Progress",
    "Refused",
    "Role",
    "RunNotReady",
    "RunRecord",
    "RunSpec",
    "RunStalled",
    "RunStatus",
    "RunSummary",
    "STRATEGIES",
    "STRATEGY_HELP",
    "STRATEGY_NAMES",
    "Setting",
    "SignInRefused",
    "SpecError",
    "Submission",
    "Suspect",
    "SweepResult",
    "SweepRow",
    "TLError",
    "Upload",
    "WeightsFile",
    "WeightsUnavailable",
    "Workspace",
    "WorkspaceDamaged",
    "WorkspaceReadOnly",
    "access",
    "accounts",
    "active_runs",
    "apply_temperature",
    "calibration_report",
    "cancel_run",
    "cell_images",
    "check_data",
    "check_health",
    "configure_device",
    "confused_pairs",
    "default_choices",
    "delete_dataset",
    "delete_run",
    "describe",
    "describe_device",
    "describe_freeze",
    "ensure_worker",
    "evaluation",
    "expected_calibration_error",
    "explain_image",
    "export_bytes",
    "export_run",
    "extract_features",
    "feature_extractor",
    "find_label_issues",
    "find_weight_file",
    "fit_temperature",
    "get_backbone",
    "get_run",
    "images_in_zip",
    "ingest_folder",
    "ingest_tree",
    "ingest_uploads",
    "ingest_zip",
    "latest_label_issues",
    "latest_lr_find",
    "list_backbones",
    "list_datasets",
    "list_job_kinds",
    "list_runs",
    "list_sweeps",
    "list_weight_files",
    "load_dataset",
    "load_draft",
    "load_predictor",
    "load_profile",
    "map_of",
    "model_card",
    "overfitting",
    "phases",
    "predict_images",
    "prediction_batch",
    "prewarm_worker",
    "probe_jobs",
    "probe_table",
    "queue_position",
    "recover_interrupted",
    "register_job_kind",
    "reliability",
    "resume_run",
    "revise_dataset",
    "run_hints",
    "run_metrics",
    "trained_so_far",
    "running_run",
    "save_draft",
    "setting",
    "settings",
    "spec_hints",
    "split_records",
    "submit_job",
    "submit_label_issues",
    "submit_lr_find",
    "submit_probes",
    "submit_run",
    "submit_sweep",
    "suspects_of",
    "sweep_entries",
    "sweep_result",
    "synthetic_shapes",
    "top_k_for",
    "use_head_phase_weights",
    "wait_for_run",
    "warm_predictor",
    "weights_dir",
    "weights_status",
    "write_explanation",
]
