"""Training throughput (issue 18): `python -m genretr.bench training [--models t5_string,t5_genius,cart,encoder]
[--threads 1,2] [--dtypes fp32,bf16] [--steps 20] [--warmup 3] [--repeats 3] [--batch N] [--gemm 256,512,1024]
[--quick] [--out DIR]`.

Trains each default model for a few steps through a real `lightning.Trainer` (CPU, ``32-true`` vs ``bf16-mixed``:
Lightning's autocast path, as the pipeline runs it) on synthetic in-memory batches of the pipeline's format, and
measures samples/s from the end of the warm-up steps, and achieved GFLOP/s: the FLOPs of one fp32 forward +
backward of ``training_step`` (`torch.utils.flop_counter.FlopCounterMode`: matmuls, convolutions, attention) per
sample, times samples/s.  Both are printed beside the matmul peak of each dtype at the same thread count, measured
in the same run: the fastest of square matmuls of the `--gemm` sides (one size is not enough: fp32 GEMMs run ~30%
slower past 768² on a 2-core EPYC, bf16 ones past 1024²).  The models are built from conf/ as the pipeline builds them
(`hydra.compose` + `instantiate` with the train / encode stage's constructor extras):

* ``t5_string``: the default T5PrefixDecoder (identifier=string, backbone=t5), batch 256, labels the string
  identifiers of the default shapes items (2,500 items: vocab 1,002, up to 2 tokens + EOS);
* ``t5_genius``: experiment=genius_base (30 prefix vectors, Eq. 11 query mix), random GENIUS codes 3 x 64^3 + EOS;
* ``cart``: experiment=cart_base (CartSeq2Seq d 128, R-Drop), batch 32, random CART codes (coarse, 2 fine, u0)
  + EOS, src the words of the real t2i training queries (~24 ids, the WordVocab of the cart_base shapes split);
* ``encoder``: encoder=minilm_cnn, batch 128, (image, text) pairs as the step receives them: 64² uint8 shapes
  images and the cached frozen-MiniLM features (random unit 384-d rows here: the same compute).

Query vectors are random unit vectors of the encoder's width.  Every (model, dtype, threads) cell runs in this
process; the fp32 and bf16 cells of a model run back to back (their order alternating by repeat), each `--repeats`
times; medians are reported, the bf16/fp32 ratio as the median of the paired ratios.  Prints the table, the
matmul peaks and the issue's budget (each default decoder ≥ 1.8x samples/s in bf16 over fp32 at one thread) as
PASS/MISS.  bf16 is timed only where the CPU multiplies it natively, or when `--dtypes fp32,bf16` asks; where it
is not timed, the budget reads n/a.  Writes `training.csv` and `training.json` under `--out`.
"""
from __future__ import annotations

import csv
import json
import logging
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset

CONF = Path(__file__).resolve().parents[2] / "conf"
MODELS = {"t5_string": [], "t5_genius": ["experiment=genius_base"], "cart": ["experiment=cart_base"],
          "encoder": []}
DECODERS = ("t5_string", "t5_genius", "cart")
DTYPES = {"fp32": ("32-true", torch.float32), "bf16": ("bf16-mixed", torch.bfloat16)}
BUDGET = 1.8  # each default decoder's bf16 / fp32 samples/s at one thread
FULL = dict(steps=20, warmup=3, repeats=3, gemm="256,512,1024")
QUICK = dict(steps=2, warmup=1, repeats=1, gemm="256,512")
COLUMNS = ["model", "threads", "dtype", "batch", "steps", "warmup", "repeats", "samples_per_s", "samples_per_s_runs",
           "flops_per_sample", "gflops", "matmul_peak_gflops", "pct_of_peak", "bf16_over_fp32"]


def add_arguments(p):
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    p.add_argument("--threads", default="1,2", help="comma list of torch thread counts")
    p.add_argument("--dtypes", default=None, help="comma list of fp32, bf16 (default: bf16 where the CPU has it)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps per cell (default 20)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps before them (default 3, at least 1)")
    p.add_argument("--repeats", type=int, default=None, help="runs of each cell, the median reported (default 3)")
    p.add_argument("--batch", type=int, default=None, help="batch size of every model (default: each config's)")
    p.add_argument("--gemm", default=None, help="sides of the square matmuls, the peak the fastest (256,512,1024)")
    p.add_argument("--quick", action="store_true", help="defaults of 2 steps after 1, 1 repeat, matmuls to 512² (CI)")
    p.add_argument("--out", default="bench_out/training")


# ---------------------------------------------------------------------------------------------------- models


@dataclass
class Spec:
    """A model to time: its builder, a pool of samples (a dict or tuple of tensors sharing dim 0), its batch."""

    name: str
    build: Callable
    pool: dict | tuple
    batch: int
    notes: str


def compose(overrides):
    """conf/config.yaml composed with `overrides` (no Hydra run)."""
    import genretr  # noqa: F401  (registers the resolvers; offline environment)
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def unit_rows(n: int, d: int, g: torch.Generator) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)


def code_labels(sizes, counter: bool, n: int, g: torch.Generator) -> tuple[torch.Tensor, int]:
    """Random codes of level sizes `sizes` as identifier tokens (level-specific tokens after PAD, EOS; a counter
    token u0 when `counter`), EOS-terminated: (labels (n, M + counter + 1), vocabulary size)."""
    from genretr.identifiers.base import EOS

    cols, offset = [], 2
    for k in sizes:
        cols.append(offset + torch.randint(int(k), (n,), generator=g))
        offset += int(k)
    if counter:
        cols.append(torch.full((n,), offset))
        offset += 1
    return torch.stack([*cols, torch.full((n,), EOS)], 1), offset


def decoder_spec(name: str, batch: int | None, pool_batches: int) -> Spec:
    """A default decoder as `genretr.stages.train` builds it (vocab_size, input_dim, src_vocab_size)."""
    from hydra.utils import instantiate

    from genretr.data.schema import pool_items

    cfg = compose(MODELS[name])
    bb, ic = cfg.backbone, cfg.identifier
    B = int(batch or bb.fit.batch_size)
    n = B * pool_batches
    g = torch.Generator().manual_seed(0)
    ds = instantiate(cfg.dataset)
    input_dim = int(cfg.encoder.model.image_tower.out_dim)
    target = ic._target_.rsplit(".", 1)[-1]
    if target == "StringIdentifier":
        items = pool_items(ds, list(dict.fromkeys(["train", cfg.eval.split])), [*cfg.eval.tasks, "universal"])
        table = instantiate(ic).build([ds.items[i] for i in items], None, None)
        labels = torch.from_numpy(table.sequences[torch.randint(len(table), (n,), generator=g).numpy()]).long()
        vocab_size, notes = table.vocab_size, f"{len(items)} string IDs, vocab {table.vocab_size}"
    elif target == "GeniusIdentifier":
        sizes = instantiate(ic).sizes  # the identifier's own level sizes (no modality level under modality_code=none)
        labels, vocab_size = code_labels(sizes, bool(ic.unique_suffix), n, g)
        notes = f"GENIUS codes {'x'.join(map(str, sizes))}, vocab {vocab_size}"
    elif target == "CartIdentifier":
        sizes = ([ic.k] if ic.use_kmeans else []) + [ic.codebook_size] * int(ic.num_codebooks)
        labels, vocab_size = code_labels(sizes, True, n, g)
        notes = f"CART codes {'x'.join(map(str, sizes))} + u0, vocab {vocab_size}"
    else:
        raise SystemExit(f"genretr.bench training: no labels for identifier {ic._target_}")
    pool = {"z": unit_rows(n, input_dim, g), "target_z": unit_rows(n, input_dim, g), "labels": labels}
    extra = {}
    if str(bb.get("input", "prefix")) == "tokens":  # Pipeline._query_vocab; the training queries' words
        from genretr.data.vocab import WordVocab, words

        vocab = WordVocab.build([q.text for q in ds.splits["train"].queries if q.text]
                                + [x.text for x in ds.items.values() if x.text])
        texts = [q.text for q in ds.splits["train"].queries if q.text and q.task in cfg.eval.tasks]
        picked = [texts[i] for i in torch.randint(len(texts), (n,), generator=g).tolist()]
        pool["src"] = vocab.encode(picked, int(bb.get("max_src_len", 32)))
        extra["src_vocab_size"] = len(vocab)
        mean_words = statistics.mean(min(len(words(t)), int(bb.get("max_src_len", 32))) for t in picked)
        notes += f", src vocab {len(vocab)}, {mean_words:.0f} query words"

    def build():
        return instantiate(bb.model, vocab_size=vocab_size, input_dim=input_dim, **extra)

    return Spec(name, build, pool, B, notes)


def encoder_spec(batch: int | None, pool_batches: int) -> Spec:
    """The default dual encoder as `genretr.stages.encode` builds it, on (image, prepared text) caption pairs."""
    from hydra.utils import instantiate

    cfg = compose(MODELS["encoder"])
    if str(cfg.encoder.fit.get("tasks", "captions")) != "captions":
        raise SystemExit("genretr.bench training: the encoder is timed on caption pairs (encoder.fit.tasks=captions)")
    B = int(batch or cfg.encoder.fit.batch_size)
    n = B * pool_batches
    g = torch.Generator().manual_seed(0)
    ds = instantiate(cfg.dataset)
    images = torch.from_numpy(ds.images[torch.randint(len(ds.images), (n,), generator=g).numpy()])
    dim = int(instantiate(cfg.encoder.model).text_tower.feature_dim)
    side = images.shape[1]
    return Spec("encoder", lambda: instantiate(cfg.encoder.model), (images, unit_rows(n, dim, g)), B,
                f"{side}x{side} uint8 images + {dim}-d text features")


def build_spec(name: str, batch: int | None = None, pool_batches: int = 4) -> Spec:
    if name not in MODELS:
        raise SystemExit(f"genretr.bench training: unknown model {name} (one of {', '.join(MODELS)})")
    return encoder_spec(batch, pool_batches) if name == "encoder" else decoder_spec(name, batch, pool_batches)


# ---------------------------------------------------------------------------------------------------- measuring


class Cycle(Dataset):
    """`length` samples cycling over an in-memory pool (dict rows, as `TensorDict`; tuple rows, as `CaptionPairs`)."""

    def __init__(self, pool, length: int):
        self.pool, self.length = pool, length
        self.n = len(next(iter(pool.values())) if isinstance(pool, dict) else pool[0])

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        i %= self.n
        if isinstance(self.pool, dict):
            return {k: v[i] for k, v in self.pool.items()}
        return tuple(v[i] for v in self.pool)


def first_batch(spec: Spec):
    return next(iter(DataLoader(Cycle(spec.pool, spec.batch), batch_size=spec.batch)))


def _cpu_attention_formulas() -> dict:
    """FLOP formulas for the CPU flash-attention kernels `F.scaled_dot_product_attention` runs on a CPU (torch's
    counter knows only the GPU ones and would count CART's attention as zero): as torch's SDPA formulas."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    fwd, bwd = (getattr(aten, f"_scaled_dot_product_flash_attention_for_cpu{s}", None) for s in ("", "_backward"))
    out = {}
    if fwd is not None:
        out[fwd] = lambda q, k, v, *args, out_shape=None, **kw: fc.sdpa_flop_count(q, k, v)
    if bwd is not None:
        out[bwd] = lambda g, q, k, v, *args, out_shape=None, **kw: fc.sdpa_backward_flop_count(g, q, k, v)
    return out


def flops_per_sample(module, batch) -> float:
    """FLOPs of one fp32 forward + backward of ``module.training_step(batch, 0)``, divided by the batch size
    (matmuls, convolutions, attention; 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    module.train()
    counting = FlopCounterMode(display=False, custom_mapping=_cpu_attention_formulas())
    with warnings.catch_warnings(), counting as counter:
        warnings.simplefilter("ignore")  # self.log without a trainer
        module.training_step(batch, 0).backward()
    n = len(next(iter(batch.values())) if isinstance(batch, dict) else batch[0])
    return counter.get_total_flops() / n


def _step_timer(warmup: int, steps: int):
    from lightning.pytorch.callbacks import Callback

    class StepTimer(Callback):
        """Seconds from the end of step `warmup` to the end of step `warmup + steps`."""

        def __init__(self):
            self.done, self.t0, self.seconds, self.threads = 0, None, None, None

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.done += 1
            if self.done == warmup:
                self.threads, self.t0 = torch.get_num_threads(), time.perf_counter()
            elif self.done == warmup + steps:
                self.seconds = time.perf_counter() - self.t0

    return StepTimer()


def time_cell(spec: Spec, dtype: str, threads: int, warmup: int, steps: int, seed: int = 0) -> float:
    """Samples/s of `steps` training steps after `warmup` ones, through a Lightning trainer in `dtype`."""
    import lightning as L

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    module = spec.build()
    timer = _step_timer(warmup, steps)
    loader = DataLoader(Cycle(spec.pool, spec.batch * (warmup + steps)), batch_size=spec.batch)
    trainer = L.Trainer(accelerator="cpu", devices=1, precision=DTYPES[dtype][0], max_steps=warmup + steps,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[timer])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, train_dataloaders=loader)
    if timer.seconds is None or timer.threads != threads:
        raise RuntimeError(f"{spec.name} {dtype}: {timer.done} steps at {timer.threads} threads, "
                           f"expected {warmup + steps} at {threads}")
    return steps * spec.batch / timer.seconds


def matmul_peak(dtype: torch.dtype, threads: int, n: int = 1024, reps: int = 5) -> float:
    """GFLOP/s of the fastest of `reps` (n x n) @ (n x n) matmuls in `dtype`, after two warm-up ones."""
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(dtype) for _ in range(2))
    out = torch.empty(n, n, dtype=dtype)
    best = float("inf")
    for i in range(reps + 2):
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        if i >= 2:
            best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def peak_gflops(dtype: torch.dtype, threads: int, sizes) -> tuple[float, int]:
    """(GFLOP/s, side) of the fastest square matmul over `sizes` (fp32 GEMMs slow down past the caches)."""
    return max((matmul_peak(dtype, threads, n), n) for n in sizes)


def budget(ratios: dict, bound: float = BUDGET, decoders=DECODERS, bf16: bool = True) -> tuple[str, str]:
    """(PASS | MISS | n/a, the budget line) for each default decoder's one-thread bf16/fp32 samples/s ratio
    (n/a when bf16 was not timed, `bf16=False`)."""
    if not bf16:
        return "n/a", (f"budget: each default decoder >= {bound:g}x samples/s in bf16 over fp32 at one thread: "
                       "bf16 not timed (--dtypes fp32,bf16) -> n/a")
    got = {d: ratios[d] for d in decoders if ratios.get(d) is not None}
    missing = [d for d in decoders if d not in got]
    status = "n/a" if missing else "PASS" if min(got.values()) >= bound else "MISS"
    figures = ", ".join(f"{d} {r:.2f}x" for d, r in got.items()) or "none measured"
    line = (f"budget: each default decoder >= {bound:g}x samples/s in bf16 over fp32 at one thread: {figures}"
            + (f" (not measured: {', '.join(missing)})" if missing else "") + f" -> {status}")
    return status, line


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


# ---------------------------------------------------------------------------------------------------- run


def run(args) -> int:
    import lightning  # noqa: F401  (its loggers exist from here on)

    from genretr.bench import timed_dtypes
    from genretr.hardware import cpu_bf16_kind

    for name in [n for n in logging.root.manager.loggerDict if n.startswith("lightning")]:
        logging.getLogger(name).setLevel(logging.WARNING)  # no "GPU available" lines per cell
    for k, v in (QUICK if args.quick else FULL).items():  # what the command line leaves unset
        setattr(args, k, v if getattr(args, k) is None else getattr(args, k))
    warmup = max(1, args.warmup)
    models = [m for m in args.models.split(",") if m]
    threads = [int(t) for t in args.threads.split(",") if t]
    sizes = [int(n) for n in str(args.gemm).split(",") if n]
    dtypes, why = timed_dtypes(args.dtypes)
    print(f"genretr bench training: {why}", flush=True)
    start = time.perf_counter()
    torch.set_num_threads(1)
    specs = {m: build_spec(m, args.batch, min(4, warmup + args.steps)) for m in models}
    flops = {m: flops_per_sample(s.build(), first_batch(s)) for m, s in specs.items()}
    runs = {(m, d, t): [] for m in models for d in dtypes for t in threads}
    peaks = {(d, t): [] for d in dtypes for t in threads}
    for r in range(args.repeats):
        for t in threads:
            for d in dtypes:
                peaks[d, t].append(peak_gflops(DTYPES[d][1], t, sizes))
            for m in models:
                for d in (dtypes if r % 2 == 0 else dtypes[::-1]):
                    runs[m, d, t].append(time_cell(specs[m], d, t, warmup, args.steps))
                print(f"  repeat {r + 1}/{args.repeats}, {t} thread(s), {m}: "
                      + ", ".join(f"{d} {runs[m, d, t][-1]:.1f}" for d in dtypes) + " samples/s", flush=True)
    peak = {k: statistics.median(g for g, _ in v) for k, v in peaks.items()}
    ratio = {(m, t): statistics.median(b / f for f, b in zip(runs[m, "fp32", t], runs[m, "bf16", t]))
             for m in models for t in threads} if len(dtypes) == 2 else {}
    rows = []
    for m in models:
        for t in threads:
            for d in dtypes:
                sps = statistics.median(runs[m, d, t])
                gflops = flops[m] * sps / 1e9
                rows.append({"model": m, "threads": t, "dtype": d, "batch": specs[m].batch, "steps": args.steps,
                             "warmup": warmup, "repeats": args.repeats, "samples_per_s": sps,
                             "samples_per_s_runs": " ".join(f"{x:.2f}" for x in runs[m, d, t]),
                             "flops_per_sample": flops[m], "gflops": gflops, "matmul_peak_gflops": peak[d, t],
                             "pct_of_peak": 100 * gflops / peak[d, t],
                             "bf16_over_fp32": ratio.get((m, t)) if d == "bf16" else None})

    kind = cpu_bf16_kind()
    print(f"\ntraining throughput: {_cpu_name()}, bf16 hardware: {kind or 'none'}, torch {torch.__version__}; "
          f"{args.steps} steps timed after {warmup}, median of {args.repeats} ({time.perf_counter() - start:.0f} s)")
    for t in threads:
        side = {d: "/".join(sorted({f"{n}²" for _, n in peaks[d, t]})) for d in dtypes}
        print(f"matmul peak at {t} thread(s) (fastest of {args.gemm} squares): "
              + ", ".join(f"{d} {peak[d, t]:.0f} GFLOP/s ({side[d]})" for d in dtypes)
              + (f"; bf16/fp32 {peak['bf16', t] / peak['fp32', t]:.2f}x" if len(dtypes) == 2 else ""))
    for m, s in specs.items():
        print(f"  {m}: batch {s.batch}, {flops[m] / 1e6:.1f} MFLOP/sample (fwd+bwd); {s.notes}")
    print("\n| model | threads | batch | " + " | ".join(f"{d} samples/s" for d in dtypes)
          + (" | bf16/fp32" if ratio else "") + " | " + " | ".join(f"{d} GFLOP/s (peak, %)" for d in dtypes)
          + " |\n|---|---:|---:|" + "---:|" * (2 * len(dtypes) + bool(ratio)))
    by = {(r["model"], r["threads"], r["dtype"]): r for r in rows}
    cell = lambda r: f"{r['gflops']:.1f} ({r['matmul_peak_gflops']:.0f}, {r['pct_of_peak']:.0f}%)"  # noqa: E731
    for m in models:
        for t in threads:
            got = [by[m, t, d] for d in dtypes]
            print(f"| {m} | {t} | {got[0]['batch']} | " + " | ".join(f"{r['samples_per_s']:.1f}" for r in got)
                  + (f" | {ratio[m, t]:.2f}x" if ratio else "") + " | " + " | ".join(cell(r) for r in got) + " |")
    status, line = budget({m: ratio[m, 1] for m in models if (m, 1) in ratio}, bf16="bf16" in dtypes)
    print("\n" + line)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "training.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    summary = {"cpu": _cpu_name(), "bf16_kind": kind, "torch": torch.__version__, "quick": bool(args.quick),
               "dtypes": dtypes,
               "models": {m: {"batch": s.batch, "overrides": MODELS[m], "notes": s.notes,
                              "flops_per_sample": flops[m]} for m, s in specs.items()},
               "matmul_peak": [{"dtype": d, "threads": t, "sizes": sizes, "gflops": peak[d, t],
                                "runs": [{"gflops": g, "n": n} for g, n in peaks[d, t]]} for d, t in peaks],
               "rows": rows, "bf16_over_fp32": [{"model": m, "threads": t, "ratio": v} for (m, t), v in ratio.items()],
               "budget": {"status": status, "line": line, "bound": BUDGET}}
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out / 'training.csv'} and {out / 'training.json'}")
    return 0
