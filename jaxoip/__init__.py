"""jaxoip: what the feature maps of a CNN react to, by batched optimal-input-pattern search in JAX."""

from jaxoip.checkpoint import load_model, load_reference_model, save_model
from jaxoip.data import MNIST, Standardization, load_mnist
from jaxoip.errors import CheckpointError, DataError, JaxoipError, LayerError
from jaxoip.model import CNN, ModelConfig, TrainedModel, init_model, layer_names, layer_output, layer_shapes
from jaxoip.noise import RECIPES, Recipe, initial_images
from jaxoip.oip import OIPConfig, OIPResult, search_oips
from jaxoip.precursor import PrecursorResult, precursor_scan
from jaxoip.scan import ScanResult, scan_maps, write_scan
from jaxoip.train import TrainConfig, evaluate_model
from jaxoip.train import train as train_model  # The module `jaxoip.train` keeps its name.

__version__ = "0.1.0"
