"""genretr: generative cross-modal retrieval (GRACE, SSID, CART, GENIUS) on Hydra + Lightning."""
import os

# Offline by default: no weights or data are ever fetched at run time (DESIGN.md, "Offline by default").
# W&B's mode is conf/logger/wandb.yaml's `offline` (the one switch), not WANDB_MODE.
for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "WANDB_SILENT": "true", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)

from genretr import resolvers  # noqa: E402,F401  (${run_id:} in Hydra's run dirs, registered before Hydra composes)

__version__ = "0.1.0"
