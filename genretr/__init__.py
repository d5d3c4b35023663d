"""genretr: generative cross-modal retrieval (GRACE, SSID, CART, GENIUS) on Hydra + Lightning."""
import os

# Offline by default: no weights or data are ever fetched at run time (DESIGN.md, "Offline by default").
for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "WANDB_MODE": "offline", "WANDB_SILENT": "true", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)

__version__ = "0.1.0"
