"""Transfer Learning Studio engine: datasets, backbones, freeze strategies, training jobs,
evaluation, prediction and export over a persistent workspace. No UI code lives here.

Importing this package does not import TensorFlow; the functions that need it do.
"""

from .datasets import (
    Dataset,
    ImageRecord,
    Upload,
    check_data,
    delete_dataset,
    ingest_folder,
    ingest_tree,
    ingest_uploads,
    ingest_zip,
    list_datasets,
    load_dataset,
    split_records,
)
from .device import DeviceInfo
from .device import describe as describe_device
from .errors import DatasetError, NotFound, RunNotReady, SpecError, TLError, WeightsUnavailable
from .export import FORMATS as EXPORT_FORMATS
from .export import export_bytes, export_run, model_card
from .freeze import STRATEGY_HELP, FreezePlan, describe_freeze
from .hints import Hint, run_hints, spec_hints
from .jobs import (
    Submission,
    cancel_run,
    ensure_worker,
    recover_interrupted,
    resume_run,
    submit_run,
    wait_for_run,
)
from .phase_weights import use_head_phase_weights
from .predict import Prediction, load_predictor, predict_images
from .registry import BACKBONES, Backbone, get_backbone, list_backbones
from .runs import (
    RunRecord,
    delete_run,
    evaluation,
    get_run,
    list_runs,
    queue_position,
    run_metrics,
    running_run,
)
from .samples import synthetic_shapes
from .spec import AUGMENTATIONS, KEEP_WEIGHTS, STRATEGIES, RunSpec
from .store import Workspace
from .weights import weights_status

__all__ = [
    "AUGMENTATIONS", "BACKBONES", "EXPORT_FORMATS", "KEEP_WEIGHTS", "STRATEGIES",
    "STRATEGY_HELP", "Backbone", "Dataset", "DatasetError", "DeviceInfo", "FreezePlan", "Hint",
    "ImageRecord",
    "NotFound", "Prediction", "RunNotReady", "RunRecord", "RunSpec", "SpecError",
    "Submission", "TLError", "Upload", "WeightsUnavailable", "Workspace",
    "cancel_run", "check_data", "delete_dataset", "delete_run", "describe_device",
    "describe_freeze", "ensure_worker", "evaluation", "export_bytes", "export_run",
    "get_backbone", "get_run", "ingest_folder", "ingest_tree", "ingest_uploads", "ingest_zip",
    "list_backbones", "list_datasets", "list_runs", "load_dataset", "load_predictor",
    "model_card", "predict_images", "queue_position", "recover_interrupted",
    "resume_run", "run_hints", "run_metrics", "running_run", "spec_hints", "split_records",
    "submit_run", "synthetic_shapes", "use_head_phase_weights", "wait_for_run", "weights_status",
]
