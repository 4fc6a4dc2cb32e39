"""Transfer Learning Studio engine: datasets, backbones, freeze strategies, training jobs,
evaluation, prediction and export over a persistent workspace. No UI code lives here.

Importing this package does not import TensorFlow; the functions that need it do.
"""

from . import access, accounts
from .access import AccessDenied, Identity, Role
from .accounts import SignInRefused
from .datasets import (
    Dataset,
    HealthReport,
    ImageRecord,
    Upload,
    check_data,
    check_health,
    delete_dataset,
    ingest_folder,
    ingest_tree,
    ingest_uploads,
    ingest_zip,
    list_datasets,
    load_dataset,
    revise_dataset,
    split_records,
)
from .device import DeviceInfo
from .device import configure as configure_device
from .device import describe as describe_device
from .drafts import load_draft, save_draft
from .errors import (
    DatasetError,
    ModelDamaged,
    NotFound,
    RunNotReady,
    SpecError,
    TLError,
    WeightsUnavailable,
    WorkspaceDamaged,
    WorkspaceReadOnly,
)
from .explain import Explanation, GradCam, explain_image, write_explanation
from .export import FORMATS as EXPORT_FORMATS
from .export import export_bytes, export_run, model_card
from .familiarity import FamiliarityProfile, load_profile
from .features import FeatureExtractor, FeatureSet, extract_features, feature_extractor
from .freeze import FreezePlan, describe_freeze
from .hints import Hint, run_hints, spec_hints
from .job_kinds import list_job_kinds, register_job_kind
from .jobs import (
    Submission,
    cancel_run,
    ensure_worker,
    recover_interrupted,
    resume_run,
    submit_job,
    submit_run,
    wait_for_run,
)
from .label_issues import (
    Suspect,
    find_label_issues,
    latest_label_issues,
    map_of,
    submit_label_issues,
    suspects_of,
)
from .phase_weights import use_head_phase_weights
from .phases import Phase, phases
from .predict import (
    BatchItem,
    Prediction,
    Refused,
    images_in_zip,
    load_predictor,
    predict_images,
    prediction_batch,
)
from .probe import (
    ProbeChoice,
    ProbeRow,
    default_choices,
    probe_jobs,
    probe_table,
    submit_probes,
)
from .progress import Progress
from .registry import BACKBONES, Backbone, get_backbone, list_backbones
from .runs import (
    RunRecord,
    RunStatus,
    active_runs,
    delete_run,
    evaluation,
    get_run,
    list_runs,
    queue_position,
    run_metrics,
    running_run,
)
from .samples import synthetic_shapes
from .scoring import cell_images, confused_pairs, top_k_for
from .spec import (
    AUGMENTATIONS,
    KEEP_WEIGHTS,
    STRATEGIES,
    STRATEGY_HELP,
    STRATEGY_NAMES,
    RunSpec,
    Setting,
    describe,
    setting,
    settings,
)
from .store import Workspace
from .summary import RunSummary
from .weights import (
    WeightsFile,
    find_weight_file,
    list_weight_files,
    weights_dir,
    weights_status,
)

__all__ = [
    "AUGMENTATIONS",
    "AccessDenied",
    "BACKBONES",
    "Backbone",
    "BatchItem",
    "Dataset",
    "DatasetError",
    "DeviceInfo",
    "EXPORT_FORMATS",
    "Explanation",
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
    "explain_image",
    "export_bytes",
    "export_run",
    "extract_features",
    "FamiliarityProfile",
    "load_profile",
    "feature_extractor",
    "find_label_issues",
    "find_weight_file",
    "get_backbone",
    "get_run",
    "images_in_zip",
    "ingest_folder",
    "ingest_tree",
    "ingest_uploads",
    "ingest_zip",
    "latest_label_issues",
    "list_backbones",
    "list_datasets",
    "list_job_kinds",
    "list_runs",
    "list_weight_files",
    "load_dataset",
    "load_draft",
    "load_predictor",
    "map_of",
    "model_card",
    "phases",
    "predict_images",
    "prediction_batch",
    "probe_jobs",
    "probe_table",
    "queue_position",
    "recover_interrupted",
    "register_job_kind",
    "resume_run",
    "revise_dataset",
    "run_hints",
    "run_metrics",
    "running_run",
    "save_draft",
    "setting",
    "settings",
    "spec_hints",
    "split_records",
    "submit_job",
    "submit_label_issues",
    "submit_probes",
    "submit_run",
    "suspects_of",
    "synthetic_shapes",
    "top_k_for",
    "use_head_phase_weights",
    "wait_for_run",
    "weights_dir",
    "weights_status",
    "write_explanation",
]
