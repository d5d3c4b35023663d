"""Quantizers that turn item vectors into discrete codes (DESIGN.md, "identify" stage).

`ResidualQuantizer` is the shared core; `RQVAE` (CART Sec. 3.2.2) and
`ModalityDecoupledQuantizer` (GENIUS Sec. 4.2) are the LightningModules built on it.
"""
from genretr.quantizers.modality_decoupled import ModalityDecoupledQuantizer, modality_accuracy, modality_agreement
from genretr.quantizers.residual import ResidualQuantizer, kmeans
from genretr.quantizers.rqvae import RQVAE, fit_rqvae

__all__ = ["ResidualQuantizer", "kmeans", "RQVAE", "fit_rqvae", "ModalityDecoupledQuantizer", "modality_accuracy",
           "modality_agreement"]
