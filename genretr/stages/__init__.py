"""The stages (DESIGN.md): dataset → encode → identify → train → index → evaluate, one module each with one
entry function `run(ctx, ...)` from typed artifacts to a typed artifact.  No stage imports another stage or
`genretr.pipeline`, which alone sequences them.  Beside them: `context` (what every stage reads) and
`captions` (the captioner-written texts that identify and train add on request)."""

STAGES = ["dataset", "encode", "identify", "train", "index", "evaluate"]
