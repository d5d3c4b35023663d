"""Data: every source (shapes, Karpathy-split Flickr30K / COCO, M-BEIR, precomputed features) read into one schema
(`schema`), the encoder's vectors (`embeddings`), the datamodules, tokenizers and vocabularies the models read."""
