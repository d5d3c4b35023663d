"""The stages (DESIGN.md): dataset → encode → identify → train → index → evaluate, one module each with one
entry function `run(ctx, ...)` from typed artifacts to a typed artifact.  No stage imports another stage or
`genretr.pipeline`, which alone sequences them.  Beside them: `context` (what every stage reads), `keys` (every
stage's cache key), `addons` (the papers' add-ons, called through hooks), `decoders` (one adapter per kind of
decoder) and `captions` (the captioner-written texts that identify and train add on request)."""

STAGES = ["dataset", "encode", "identify", "train", "index", "evaluate"]
