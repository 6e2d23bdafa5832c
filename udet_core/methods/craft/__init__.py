"""CRAFT (paper: contrastive reconstruction with class-guided latent perturbation), one file per concern:
`model` (the equations and the model), `train` (its fine-tuning, top to bottom), `detector` (the registry entry),
`analysis` (paper §4.2). The public names of all four are importable from here."""
from udet_core.methods.craft.analysis import (
    ddim_step_spectral_norm,
    latent_center_distance,
    trajectory_jacobian_norms,
    with_settings,
)
from udet_core.methods.craft.detector import CraftDetector
from udet_core.methods.craft.model import (
    DECODER_PARTS,
    FAST_MODE,
    Craft,
    CraftScores,
    DistanceClassifier,
    Suffix,
    mean_center,
    perturb_latent,
    split_tensors,
)
from udet_core.methods.craft.train import (
    TRAIN_PROBE_PER_CLASS,
    CraftFit,
    EarlyStopping,
    cache_dir,
    fit,
    prefix_cache,
    prefix_key,
    selection_info,
    signal_audit,
    signal_columns,
)

__all__ = ["Craft", "CraftDetector", "CraftFit", "CraftScores", "DECODER_PARTS", "DistanceClassifier", "EarlyStopping",
           "FAST_MODE", "Suffix", "TRAIN_PROBE_PER_CLASS", "cache_dir", "ddim_step_spectral_norm", "fit",
           "latent_center_distance", "mean_center", "perturb_latent", "prefix_cache", "prefix_key",
           "selection_info", "signal_audit", "signal_columns", "split_tensors", "trajectory_jacobian_norms",
           "with_settings"]
