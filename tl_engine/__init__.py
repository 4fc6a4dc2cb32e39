"""Transfer Learning Studio engine: datasets, backbones, freeze strategies, training jobs,
evaluation, prediction and export over a persistent workspace. No UI code lives here.

Importing this package imports none of its modules: each name is imported from its
module when it is first used, so `python -m tl_engine` starts without the modules its
command does not need, and nothing here imports TensorFlow.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

# A name that is also a submodule's is bound now: importing the submodule later would
# otherwise set the package's attribute to the module.
from .phases import phases as phases

# Public name -> (module, name in that module).
_EXPORTS: dict[str, tuple[str, str]] = {
    "AccessDenied": ("access", "AccessDenied"),
    "active_runs": ("runs", "active_runs"),
    "apply_temperature": ("calibration", "apply_temperature"),
    "AUGMENTATIONS": ("spec", "AUGMENTATIONS"),
    "Backbone": ("registry", "Backbone"),
    "BACKBONES": ("registry", "BACKBONES"),
    "BatchItem": ("predict", "BatchItem"),
    "calibration_report": ("calibration", "calibration_report"),
    "cancel_run": ("jobs", "cancel_run"),
    "cell_images": ("scoring", "cell_images"),
    "check_data": ("datasets", "check_data"),
    "check_health": ("datasets", "check_health"),
    "configure_device": ("device", "configure"),
    "confused_pairs": ("scoring", "confused_pairs"),
    "Dataset": ("datasets", "Dataset"),
    "DatasetError": ("errors", "DatasetError"),
    "default_choices": ("probe", "default_choices"),
    "DEFAULT_NOT_SURE_BELOW": ("spec", "DEFAULT_NOT_SURE_BELOW"),
    "delete_dataset": ("datasets", "delete_dataset"),
    "delete_run": ("runs", "delete_run"),
    "describe": ("spec", "describe"),
    "describe_device": ("device", "describe"),
    "describe_freeze": ("freeze", "describe_freeze"),
    "DeviceInfo": ("device", "DeviceInfo"),
    "ensure_worker": ("jobs", "ensure_worker"),
    "evaluation": ("runs", "evaluation"),
    "expected_calibration_error": ("calibration", "expected_calibration_error"),
    "explain_image": ("explain", "explain_image"),
    "Explanation": ("explain", "Explanation"),
    "export_bytes": ("export", "export_bytes"),
    "EXPORT_FORMATS": ("export", "FORMATS"),
    "export_run": ("export", "export_run"),
    "extract_features": ("features", "extract_features"),
    "FamiliarityProfile": ("familiarity", "FamiliarityProfile"),
    "feature_extractor": ("features", "feature_extractor"),
    "FeatureExtractor": ("features", "FeatureExtractor"),
    "FeatureSet": ("features", "FeatureSet"),
    "find_label_issues": ("label_issues", "find_label_issues"),
    "find_weight_file": ("weights", "find_weight_file"),
    "fit_temperature": ("calibration", "fit_temperature"),
    "FreezePlan": ("freeze", "FreezePlan"),
    "get_backbone": ("registry", "get_backbone"),
    "get_run": ("runs", "get_run"),
    "GradCam": ("explain", "GradCam"),
    "HealthReport": ("datasets", "HealthReport"),
    "Hint": ("hints", "Hint"),
    "Identity": ("access", "Identity"),
    "ImageRecord": ("datasets", "ImageRecord"),
    "images_in_zip": ("predict", "images_in_zip"),
    "ingest_folder": ("datasets", "ingest_folder"),
    "ingest_tree": ("datasets", "ingest_tree"),
    "ingest_uploads": ("datasets", "ingest_uploads"),
    "ingest_zip": ("datasets", "ingest_zip"),
    "KEEP_WEIGHTS": ("spec", "KEEP_WEIGHTS"),
    "latest_label_issues": ("label_issues", "latest_label_issues"),
    "latest_lr_find": ("lr_find", "latest_lr_find"),
    "list_backbones": ("registry", "list_backbones"),
    "list_datasets": ("datasets", "list_datasets"),
    "list_job_kinds": ("job_kinds", "list_job_kinds"),
    "list_runs": ("runs", "list_runs"),
    "list_sweeps": ("sweep", "list_sweeps"),
    "list_weight_files": ("weights", "list_weight_files"),
    "load_dataset": ("datasets", "load_dataset"),
    "load_draft": ("drafts", "load_draft"),
    "load_predictor": ("predict", "load_predictor"),
    "load_profile": ("familiarity", "load_profile"),
    "map_of": ("label_issues", "map_of"),
    "MIXED_PRECISION_MIN_BATCH": ("device", "MIXED_PRECISION_MIN_BATCH"),
    "model_card": ("export", "model_card"),
    "ModelDamaged": ("errors", "ModelDamaged"),
    "NotFound": ("errors", "NotFound"),
    "Overfitting": ("hints", "Overfitting"),
    "overfitting": ("hints", "overfitting"),
    "Phase": ("phases", "Phase"),
    "predict_images": ("predict", "predict_images"),
    "Prediction": ("predict", "Prediction"),
    "prediction_batch": ("predict", "prediction_batch"),
    "prewarm_worker": ("jobs", "prewarm_worker"),
    "probe_jobs": ("probe", "probe_jobs"),
    "probe_table": ("probe", "probe_table"),
    "ProbeChoice": ("probe", "ProbeChoice"),
    "ProbeRow": ("probe", "ProbeRow"),
    "Progress": ("progress", "Progress"),
    "queue_position": ("runs", "queue_position"),
    "recover_interrupted": ("jobs", "recover_interrupted"),
    "Refused": ("predict", "Refused"),
    "register_job_kind": ("job_kinds", "register_job_kind"),
    "reliability": ("calibration", "reliability"),
    "resume_run": ("jobs", "resume_run"),
    "revise_dataset": ("datasets", "revise_dataset"),
    "Role": ("access", "Role"),
    "run_hints": ("hints", "run_hints"),
    "run_metrics": ("runs", "run_metrics"),
    "running_run": ("runs", "running_run"),
    "RunNotReady": ("errors", "RunNotReady"),
    "RunRecord": ("runs", "RunRecord"),
    "RunSpec": ("spec", "RunSpec"),
    "RunStalled": ("jobs", "RunStalled"),
    "RunStatus": ("runs", "RunStatus"),
    "RunSummary": ("summary", "RunSummary"),
    "save_draft": ("drafts", "save_draft"),
    "Setting": ("spec", "Setting"),
    "setting": ("spec", "setting"),
    "settings": ("spec", "settings"),
    "SignInRefused": ("accounts", "SignInRefused"),
    "spec_hints": ("hints", "spec_hints"),
    "SpecError": ("errors", "SpecError"),
    "split_records": ("datasets", "split_records"),
    "STRATEGIES": ("spec", "STRATEGIES"),
    "STRATEGY_HELP": ("spec", "STRATEGY_HELP"),
    "STRATEGY_NAMES": ("spec", "STRATEGY_NAMES"),
    "Submission": ("jobs", "Submission"),
    "submit_job": ("jobs", "submit_job"),
    "submit_label_issues": ("label_issues", "submit_label_issues"),
    "submit_lr_find": ("lr_find", "submit_lr_find"),
    "submit_probes": ("probe", "submit_probes"),
    "submit_run": ("jobs", "submit_run"),
    "submit_sweep": ("sweep", "submit_sweep"),
    "Suspect": ("label_issues", "Suspect"),
    "suspects_of": ("label_issues", "suspects_of"),
    "sweep_entries": ("sweep", "sweep_entries"),
    "sweep_result": ("sweep", "sweep_result"),
    "SweepResult": ("sweep", "SweepResult"),
    "SweepRow": ("sweep", "SweepRow"),
    "synthetic_shapes": ("samples", "synthetic_shapes"),
    "TLError": ("errors", "TLError"),
    "top_k_for": ("scoring", "top_k_for"),
    "trained_so_far": ("runs", "trained_so_far"),
    "Upload": ("datasets", "Upload"),
    "use_head_phase_weights": ("phase_weights", "use_head_phase_weights"),
    "wait_for_run": ("jobs", "wait_for_run"),
    "warm_predictor": ("predict", "warm_predictor"),
    "weights_dir": ("weights", "weights_dir"),
    "weights_status": ("weights", "weights_status"),
    "WeightsFile": ("weights", "WeightsFile"),
    "WeightsUnavailable": ("errors", "WeightsUnavailable"),
    "Workspace": ("store", "Workspace"),
    "WorkspaceDamaged": ("errors", "WorkspaceDamaged"),
    "WorkspaceReadOnly": ("errors", "WorkspaceReadOnly"),
    "write_explanation": ("explain", "write_explanation"),
}
_SUBMODULES = ('access', 'accounts')

__all__ = sorted([*_EXPORTS, *_SUBMODULES, "phases"])


def __getattr__(name: str) -> Any:
    if (name not in _EXPORTS and not name.startswith("_")
            and importlib.util.find_spec(f"{__name__}.{name}")):
        # A submodule asked for as an attribute (`tle.runs`): imported now, not only when
        # something else happened to import it first.
        return importlib.import_module(f"{__name__}.{name}")
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
