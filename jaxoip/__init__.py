"""jaxoip: what the feature maps of a CNN react to, by batched optimal-input-pattern search in JAX.

The public API is re-exported here and imported lazily, so `import jaxoip` is quick and
the commands (`python -m jaxoip <command>`, in `jaxoip.cli`) start fast.
"""

import importlib

from jaxoip.display import register_html

__version__ = "0.2.0"

# Jupyter's view of a scan: the site's table with thumbnails, imported when a notebook first shows a scan.
register_html("jaxoip.oip.scan_result.ScanResult", "jaxoip.site.notebook:scan_html")

_EXPORTS = {
    "jaxoip.errors": (
        "JaxoipError",
        "DataError",
        "LayerError",
        "CheckpointError",
        "DivergenceError",
        "OutOfMemoryError",
        "OutputError",
    ),
    "jaxoip.data.mnist": ("MNIST", "Standardization", "load_mnist"),
    "jaxoip.data.images": ("load_images",),
    "jaxoip.numerics": ("PRECISIONS", "precision_scope"),
    "jaxoip.compiles": ("count_compiles",),
    "jaxoip.progress": ("Progress",),
    "jaxoip.models.cnn": (
        "CNN",
        "LayerSpec",
        "ModelConfig",
        "Network",
        "TrainedModel",
        "init_model",
        "layer_names",
        "layer_output",
        "layer_shapes",
        "batched_layer_map",
        "receptive_field",
    ),
    "jaxoip.models.network": ("Layer",),
    "jaxoip.models.adapter": ("from_nnx",),
    "jaxoip.models.keras_net": ("from_keras",),
    "jaxoip.models.torch_net": ("from_torch",),
    "jaxoip.models.train": ("TrainConfig", "train", "evaluate_model"),
    "jaxoip.models.multiseed": ("train_seeds",),
    "jaxoip.models.checkpoint": ("load_model", "load_reference_model", "save_model", "upgrade_checkpoint"),
    "jaxoip.oip.noise": ("RECIPES", "Recipe", "initial_images", "start_keys"),
    "jaxoip.oip.config": ("OIPConfig", "ObjectiveConfig"),
    "jaxoip.oip.objectives": ("Objective", "objective", "channel"),
    "jaxoip.oip.search": ("OIPResult", "SearchSetup", "search_oips"),
    "jaxoip.oip.targets": ("Target", "parse_terms", "search_arguments"),
    "jaxoip.oip.transforms": ("STYLES", "style_config"),
    "jaxoip.oip.facets": ("MapFacets", "map_facets"),
    "jaxoip.oip.precursor": ("PrecursorResult", "precursor_scan", "data_activation"),
    "jaxoip.oip.plan": ("ScanPlan", "plan_scan"),
    "jaxoip.oip.scan": ("scan_layer", "scan_maps", "write_scan"),
    "jaxoip.jobs": ("ScanRun", "run_scan", "run_microscope", "microscope_layers"),
    "jaxoip.oip.scan_result": ("ScanResult", "facet_images"),
    "jaxoip.analysis.activations": ("dataset_activations",),
    "jaxoip.data.inputs": ("get_image",),
    "jaxoip.analysis.grids": ("layer_grid", "LayerGrid"),
    "jaxoip.analysis.grid_comparison": ("compare_images", "Comparison", "map_summary"),
    "jaxoip.analysis.predictions": (
        "predict_split",
        "Predictions",
        "misclassified",
        "least_confident",
        "confusion_matrix",
        "most_confused",
    ),
    "jaxoip.analysis.exemplars": ("find_exemplars", "Exemplars"),
    "jaxoip.seeds.compare": ("CompareConfig", "compare_models"),
    "jaxoip.seeds.result": ("SeedComparison",),
    "jaxoip.seeds.report": ("write_report",),
    "jaxoip.seeds.similarity": ("linear_cka", "correlation_matrix", "match_channels", "semi_match"),
    "jaxoip.oip.similarity": ("shift_similarity_matrix", "cross_activation"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'jaxoip' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
