"""Vectorised, exact trie-constrained beam search driving a step decoder token by token (issues #3, #18).

What it computes (the contract, checked against an exhaustive reference in tests/decoding/test_engine_reference.py):
exact beam search with HF `generate`'s rules (transformers 5.x `_beam_search`, the peers' method, with
`prefix_allowed_tokens_fn` over the identifier trie), over real beams only:

* scores are summed log-probabilities, each a log-softmax over the **full** vocabulary (GENIUS Sec. 4.4);
  a finished identifier of n tokens (EOS included) scores ``sum / n ** length_penalty``;
* every step ranks all (running beam, allowed child) pairs and keeps the best ``2 * num_beams``; a
  candidate ending in EOS (or reaching `max_len`) is finalised if it ranks among the first `num_beams`
  of them; the best `num_beams` candidates that did not end continue;
* ``early_stopping=True`` (what `T5PrefixDecoder.generate` passes): a query stops accepting identifiers once
  it holds `num_beams` finished ones; ``False``: once it holds `num_beams` and the best running beam, scored
  at its current length, cannot beat the worst finished one (HF's heuristic; exact for
  ``length_penalty=0``); ``"never"``: the same test with the running beam scored at the maximal length when
  ``length_penalty > 0`` (HF `_check_early_stop_heuristic`; an exact bound then).

Where HF differs: HF starts every query with one real beam and ``num_beams - 1`` placeholder beams at -1e9;
when a step has fewer valid candidates than ``2 * num_beams`` those placeholders (and finished beams
penalised by -1e9) keep running and can enter HF's finished set with scores near -1e9 -- and, with early
stopping, fill it and stop the query before real identifiers finish.  The engine has no placeholders, so
such a query keeps searching and may return better identifiers than HF; where HF's result has no
placeholder entry the two agree (tests/decoding/test_engine.py).

How it is computed (the speed; no host synchronisation inside a step, issue #18):

* the step decoder (`genretr.decoding.protocol.StepDecoder`: T5's, CART's, an MLLM's) computes the prefix /
  encoder states and every layer's cross-attention K/V once per query, shared by its beams, and keeps the
  self-attention K/V in a double-buffered cache reordered by `index_select` (`t5_step.KVCache`);
* beam slots per query at step t are fixed before the search: ``min(num_beams, trie.depth_open_nodes[t])``
  (no more beams can run than prefixes of that depth with children), dead slots carry -inf; the child
  width of step t is the trie's widest fan-out at depth t (`depth_max_fanout`), which also picks the
  sparse (gather the children's logits) or dense (mask full rows) constraint; the only host sync is an
  optional early-exit test every `exit_every` steps (the identifier length bounds the loop anyway) -- and,
  on an eager CPU run only, where a sync costs nothing, the dense mask built once per distinct node
  (`torch.unique`) instead of once per beam (compiled or on a GPU: per beam, fixed shapes);
* the model step may run in bf16 (`step_dtype`): weights, cross K/V and cache in bf16, its logits cast
  to float32 before the logsumexp; score sums, the finished set and the ranking stay float32;
* `compile=True` wraps the whole step (model, constraint, top-k, bookkeeping, cache reorder) in
  `torch.compile` (``mode="reduce-overhead"``, i.e. CUDA graphs, on a GPU);
* the output projection is computed for the full vocabulary -- the log-softmax normaliser needs every
  logit -- but only the allowed children are then gathered, normalised and ranked (sparse steps).

`TrieLogitsProcessor` / `hf_generate` (genretr.decoding.hf) and `T5StepDecoder` are re-exported here.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import torch

from genretr.decoding import queries as Q
from genretr.decoding.csr_trie import CSRTrie
from genretr.decoding.hf import TrieLogitsProcessor, hf_generate  # noqa: F401  (re-export)
from genretr.decoding.protocol import missing_members
from genretr.backbones.t5_step import KVCache, T5StepDecoder, kv_cache_pool, reorder_kv_cache  # noqa: F401  (re-export)
from genretr.identifiers.base import EOS, PAD, IdTable

NEG_INF = float("-inf")
MISS = None  # a ranking's entry for a freely generated sequence that is no pool item's identifier (`rank_items`)
STEP_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


@dataclass
class BeamResult:
    tokens: torch.Tensor  # (Q, B, T) finished identifiers, PAD after EOS (all PAD for empty slots)
    scores: torch.Tensor  # (Q, B) length-penalised summed log-probs, descending; -inf for empty slots
    lengths: torch.Tensor  # (Q, B) tokens incl. EOS (0 for empty slots)
    nodes: torch.Tensor  # (Q, B) trie node of each identifier (-1 for empty slots / unconstrained)


def as_dtype(dtype) -> torch.dtype:
    """torch dtype of a `step_dtype` option ("float32" | "bfloat16" or a torch dtype)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype) not in STEP_DTYPES:
        raise ValueError(f"step_dtype={dtype} is not one of float32, bfloat16")
    return STEP_DTYPES[str(dtype)]


def step_decoder_of(model, dtype=torch.float32):
    """The model's `StepDecoder` (`model.step_decoder()`: CART, MLLMs) or the built-in T5 one, its step in `dtype`."""
    sd = model.step_decoder() if hasattr(model, "step_decoder") else T5StepDecoder(model)
    missing = missing_members(sd)
    if missing:
        raise TypeError(f"{type(sd).__name__} is not a StepDecoder (genretr.decoding.protocol): it lacks "
                        f"{', '.join(missing)}")
    dtype = as_dtype(dtype)
    if dtype != torch.float32:
        if not hasattr(sd, "cast"):
            raise ValueError(f"{type(sd).__name__} cannot run its step in {dtype}")
        sd.cast(dtype)
    return sd


def compile_options(device, compile) -> dict | None:
    """torch.compile kwargs of a `compile` option: True -> fullgraph, CUDA graphs on a GPU; a dict as given."""
    if not compile:
        return None
    if isinstance(compile, dict):
        return dict(compile)
    # static shapes: one graph per step position and batch shape, never a symbolic one (the step's shapes are
    # fixed by the search plan)
    return {"fullgraph": True, "dynamic": False,
            **({"mode": "reduce-overhead"} if torch.device(device).type == "cuda" else {})}


@torch.no_grad()
def beam_search(model, query_vecs, trie: CSRTrie | None, num_beams: int, length_penalty: float = 0.0,
                max_len: int | None = None, early_stopping: bool | str = True, batch_size: int = 64,
                progress: bool = False, dense_ratio: float = 4.0, step_dtype="float32", compile=False,
                exit_every: int | None = None) -> BeamResult:
    """Beam search for every query (`trie=None`: unconstrained over the full vocabulary, `max_len` tokens).

    A step whose trie depth has fan-out W scores (rows, W) gathered children when ``W * dense_ratio < V``,
    else full (rows, V) rows masked by each row's children (same result).  `step_dtype`: "float32" (exact)
    or "bfloat16" (the model step only).  `compile`: torch.compile the step (True, or torch.compile kwargs).
    `exit_every`: test every that many steps whether all queries are done (default 1 on CPU, 4 on CUDA, 0: never)."""
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping={early_stopping!r} is not one of True, False, 'never'")
    early_stopping = early_stopping if early_stopping == "never" else bool(early_stopping)  # 1 -> True
    if trie is not None:
        trie = CSRTrie.coerce(trie)
        T = trie.max_len if max_len is None else min(int(max_len), trie.max_len)
        B = max(1, min(int(num_beams), trie.num_sequences))
    else:
        if max_len is None:
            raise ValueError("unconstrained beam search needs max_len")
        T, B = int(max_len), max(1, int(num_beams))
    was_training = getattr(model, "training", False)
    model.eval()
    sd = step_decoder_of(model, step_dtype)  # cheap (views / one copy of the weights); never stale
    plan = search_plan(trie, B, T, int(sd.vocab_size), dense_ratio)
    step = _search_step
    opts = compile_options(sd.device, compile)
    if opts is not None:
        if getattr(sd, "compilable", False):
            _raise_recompile_limit()
            step = compiled_step(opts)
        else:
            warnings.warn(f"{type(sd).__name__} cannot be compiled; its steps run eagerly", stacklevel=2)
            opts = None
    if exit_every is None:
        exit_every = 4 if torch.device(sd.device).type == "cuda" else 1
    parts = []
    starts = range(0, Q.count(query_vecs), batch_size)
    if progress:
        from rich.progress import track

        starts = track(starts, description="constrained beam search (genretr)", transient=True)
    # one cache for the whole search, sized for the largest batch: its buffers keep their addresses across
    # batches, so CUDA graphs captured on the first batch replay on the next ones
    n_queries, widest = Q.count(query_vecs), max((s for s, _, _ in plan), default=1)
    # (compiled on CUDA: the pooled cache of this shape, so that the next search replays these graphs too)
    graphs = opts is not None and torch.device(sd.device).type == "cuda"
    with kv_cache_pool(enabled=graphs):
        cache = sd.new_cache(min(int(batch_size), n_queries) * widest, T) if n_queries else None
    if graphs and hasattr(cache, "mark_static"):
        cache.mark_static()
    for s in starts:
        z = Q.to_device(Q.take(query_vecs, s, s + batch_size), sd.device)
        parts.append(_search_batch(sd, z, trie, B, T, float(length_penalty), early_stopping, plan, step, cache,
                                   opts is not None, int(exit_every)))
    if was_training:
        model.train()
    if not parts:
        e = torch.empty(0, B)
        return BeamResult(torch.empty(0, B, T, dtype=torch.long), e, e.long(), e.long())
    return BeamResult(*(torch.cat([getattr(p, f) for p in parts]) for f in ("tokens", "scores", "lengths", "nodes")))


_COMPILED: dict = {}


def compiled_step(opts: dict):
    """`torch.compile(_search_step, **opts)`, one per distinct `opts` in this process (so repeated searches reuse
    its graphs instead of compiling a new wrapper each call)."""
    key = repr(sorted(opts.items()))
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(_search_step, **opts)
    return _COMPILED[key]


COMPILED_GRAPHS = 4096  # graphs of the step one process may hold (torch's default limit is 8 per function)


def _raise_recompile_limit() -> None:
    """The step is specialised (static shapes) per position t and per search setting -- batch, beams, the trie's
    child widths, dtype -- so each search of a new setting adds one graph per step position: intended
    recompiles, not accidental ones.  Under fullgraph=True torch's limit (8 graphs of one function) is a hard
    failure: the decoding bench's 9th compiled setting and a pipeline searching several tasks' tries hit it.
    The limits are torch's, process-wide: other compiled code in the process gets them too."""
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), COMPILED_GRAPHS))


def search_plan(trie: CSRTrie | None, B: int, T: int, V: int, dense_ratio: float = 4.0) -> list[tuple[int, int, bool]]:
    """Per step t: (beam slots S_t, child width W_t, dense), fixed before the search (no host sync per step).

    S_t = min(B, prefixes of depth t that have children) (1 at t = 0); unconstrained min(B, V ** t).
    W_t = the widest fan-out at depth t; a dense step (``W_t * dense_ratio >= V``) scores full rows (width V)."""
    plan = []
    for t in range(T):
        if trie is None:
            plan.append((min(B, V ** min(t, 64)), V, True))
            continue
        S, W = min(B, int(trie.depth_open_nodes[t])), int(trie.depth_max_fanout[t])
        if S == 0:
            break
        plan.append((S, W, W * dense_ratio >= V))
    return plan


def constrained_scores(trie: CSRTrie | None, nodes: torch.Tensor, logits: torch.Tensor, offset: torch.Tensor,
                       dense_ratio: float = 4.0, inplace: bool = False, width: int | None = None,
                       dense: bool | None = None):
    """The constraint of one step for all beams of all queries at once.

    nodes (R,) trie node of each beam (-1: dead); logits (R, V); offset (R, 1) added to every allowed
    logit (running score - logsumexp).  `width`: the widest fan-out among `nodes` (measured when None,
    a host sync); `dense` (default ``width * dense_ratio >= V``).  Returns (scores, tokens, children): sparse,
    scores are (R, width) over each node's children, whose tokens and child nodes are returned; dense,
    (R, V) full rows masked by each row's children, and tokens/children are None (the column is the token)."""
    V = logits.shape[1]
    if trie is not None:
        if width is None:
            width = int(trie.fanout(nodes).max()) if nodes.numel() else 0
        if not (width * dense_ratio >= V if dense is None else dense):
            ctok, cnode, valid = trie.children(nodes, width=width)
            return torch.where(valid, logits.gather(1, ctok).add_(offset), NEG_INF), ctok, cnode
    cand = logits.add_(offset) if inplace else logits + offset
    if trie is not None:
        if torch.compiler.is_compiling() or cand.device.type != "cpu":  # fixed shapes: one mask row per beam
            banned = trie.children_mask(nodes, max(width, 1), V, allowed=False)
        else:  # eager CPU, where a sync is free: one mask per distinct node (`unique`), ~10x cheaper there
            banned = trie.disallowed_mask(nodes, V)
        cand = cand.masked_fill_(banned, NEG_INF)
    return cand, None, None


def _search_step(sd, trie, state, cache, carry, t: int, S: int, W: int, dense: bool, S_next: int, T: int, B: int,
                 lp: float, early_stopping):
    """One step for N queries x S beam slots: model, constraint, top-k, finished set, next beams, cache reorder.

    Fixed shapes given (t, S, W, dense, S_next), no host synchronisation: `torch.compile` can capture it."""
    tokens, nodes, run_scores, hist, fin_scores, fin_tok, fin_len, fin_node, frozen = carry
    N = run_scores.shape[0]
    logits = sd.step(tokens, t, N, S, state, cache, T).float()  # (N*S, V); a bf16 step's logits in float32
    # log p(token) = logit - logsumexp over the FULL vocabulary, + the beam's running score
    offset = run_scores.reshape(-1, 1) - torch.logsumexp(logits, -1, keepdim=True)
    cand, ctok, cnode = constrained_scores(trie, nodes.reshape(-1), logits, offset, inplace=True, width=W,
                                           dense=dense)
    Wc = cand.shape[1]  # W (sparse) or V (dense)
    K = min(2 * B, S * Wc)
    top, idx = cand.view(N, S * Wc).topk(K, dim=1)  # (N, K), best first
    slot = idx // Wc
    if ctok is not None:
        tok = ctok.view(N, S * Wc).gather(1, idx)
        child = cnode.view(N, S * Wc).gather(1, idx)
    else:
        tok = idx % Wc
        child = trie.step(nodes.gather(1, slot), tok, widest=W) if trie is not None else torch.full_like(tok, -1)
    ok = top > NEG_INF
    ends = ok & ((tok == EOS) | (t == T - 1))
    # finished: candidates that end among the first B, for queries still accepting (always merged: no sync)
    Kf = min(K, B)
    new = torch.where(ends[:, :Kf] & ~frozen.unsqueeze(1), top[:, :Kf] / float(t + 1) ** lp, NEG_INF)
    cand_hist = hist.gather(1, slot[:, :Kf, None].expand(N, Kf, T))  # (N, Kf, T)
    cand_hist[:, :, t] = tok[:, :Kf]
    fin_scores, sel = torch.cat([fin_scores, new], 1).topk(B, dim=1)
    fin_tok = torch.cat([fin_tok, cand_hist], 1).gather(1, sel[..., None].expand(N, B, T))
    fin_len = torch.cat([fin_len, torch.full_like(sel[:, :Kf], t + 1)], 1).gather(1, sel)
    fin_node = torch.cat([fin_node, child[:, :Kf]], 1).gather(1, sel)
    if S_next == 0:  # the last step
        return (tokens, nodes, run_scores, hist, fin_scores, fin_tok, fin_len, fin_node, frozen), frozen
    # running: the best S_next candidates that did not end (dead slots: -inf, node -1, PAD)
    r_top, r_idx = top.masked_fill(~ok | ends, NEG_INF).topk(S_next, dim=1)  # (N, S_next)
    origin = slot.gather(1, r_idx)
    alive = r_top > NEG_INF
    new_tok = tok.gather(1, r_idx)
    rows = (torch.arange(N, device=origin.device).unsqueeze(1) * S + origin).view(-1)  # (N * S_next,)
    sd.reorder(cache, rows, t + 1)
    hist = hist.gather(1, origin[..., None].expand(N, S_next, T))  # (N, S_next, T)
    hist[:, :, t] = new_tok
    nodes = torch.where(alive, child.gather(1, r_idx), -1)
    tokens = torch.where(alive, new_tok, PAD).view(-1)
    full = fin_scores[:, -1] > NEG_INF
    if early_stopping is True:
        frozen = frozen | full
    else:  # HF `_check_early_stop_heuristic`: stop once the best running beam cannot beat the worst finished one
        length = T if (early_stopping == "never" and lp > 0) else t + 1
        frozen = frozen | (full & ~(r_top[:, 0] / float(length) ** lp > fin_scores[:, -1]))
    done = frozen | ~alive[:, 0]  # nothing can change any more for these queries
    return (tokens, nodes, r_top, hist, fin_scores, fin_tok, fin_len, fin_node, frozen), done


def _search_batch(sd, z, trie, B: int, T: int, lp: float, early_stopping, plan, step, cache, compiled: bool,
                  exit_every: int) -> BeamResult:
    """One batch of queries; `cache` (the search's, rows >= N * widest S) is overwritten from position 0, and a
    row is always written at a position before any live beam reads it there."""
    N, dev = Q.count(z), sd.device
    if trie is not None:
        trie.tensors(dev)  # built outside the (compiled) step, never inside a captured graph
    state = sd.prepare(z)  # what a query's beams share (encoder states, cross-attention K/V), once per query
    if compiled and torch.device(dev).type == "cuda":
        torch.compiler.cudagraph_mark_step_begin()
    carry = (torch.full((N,), PAD, dtype=torch.long, device=dev),  # tokens (N*S,)
             torch.zeros(N, 1, dtype=torch.long, device=dev),  # nodes (N, S): the root
             torch.zeros(N, 1, device=dev),  # running scores (N, S)
             torch.zeros(N, 1, T, dtype=torch.long, device=dev),  # running prefixes (N, S, T)
             torch.full((N, B), NEG_INF, device=dev),  # finished: scores (N, B), descending
             torch.zeros(N, B, T, dtype=torch.long, device=dev),  # tokens
             torch.zeros(N, B, dtype=torch.long, device=dev),  # lengths
             torch.full((N, B), -1, dtype=torch.long, device=dev),  # trie nodes
             torch.zeros(N, dtype=torch.bool, device=dev))  # frozen: accepts no more identifiers
    for t, (S, W, dense) in enumerate(plan):
        S_next = plan[t + 1][0] if t + 1 < len(plan) else 0
        carry, done = step(sd, trie, state, cache, carry, t, S, W, dense, S_next, T, B, lp, early_stopping)
        if S_next and exit_every and (t + 1) % exit_every == 0 and bool(done.all()):
            break
    fin_scores, fin_tok, fin_len, fin_node = carry[4:8]
    empty = fin_scores == NEG_INF  # fewer identifiers than beams: length 0, PAD, node -1
    fin_tok = fin_tok.masked_fill(empty.unsqueeze(-1), PAD)
    fin_len = fin_len.masked_fill(empty, 0)
    fin_node = fin_node.masked_fill(empty | (trie is None), -1)
    return BeamResult(fin_tok.cpu(), fin_scores.cpu(), fin_len.cpu(), fin_node.cpu())


def rank_items(result: BeamResult, table: IdTable | None, trie: CSRTrie | None, top_k: int, misses: bool = False):
    """Per query: items of the finished identifiers in score order (distinct, <= top_k) and their scores.

    Items come from `table.items_of(identifier)` (as the HF path), or -- without a table -- from the
    trie's leaves (rows of the table the trie was built from).  `misses` (free generation, GRACE Table 2): a
    finished sequence that adds no item of the table (no identifier of it, or one of an item ranked above) keeps
    its rank as `MISS` -- it was the model's answer there -- instead of being skipped so that the identifiers
    below it move up (our reading of GRACE Sec. 4.3, whose free generation ranks out-of-corpus and training-set
    identifiers)."""
    rankings, scores = [], []
    sc = result.scores.tolist()
    if table is not None:
        toks = result.tokens.tolist()
        lens = result.lengths.tolist()
    else:
        if trie is None:
            raise ValueError("unconstrained search needs a table to map identifiers to items")
        nodes = result.nodes.tolist()
    for q in range(len(sc)):
        ranked, rs, seen = [], [], set()
        for b, s in enumerate(sc[q]):
            if s == NEG_INF:
                break
            items = table.items_of(toks[q][b][: lens[q][b]]) if table is not None else trie.items_of_node(nodes[q][b])
            new = [iid for iid in items if iid not in seen]
            if misses and not new:  # the model's answer at this rank adds no item: a miss, not a skip
                ranked.append(MISS)
                rs.append(s)
            for iid in new:
                seen.add(iid)
                ranked.append(iid)
                rs.append(s)
            if len(ranked) >= top_k:
                break
        rankings.append(ranked[:top_k])
        scores.append(rs[:top_k])
    return rankings, scores


@torch.no_grad()
def constrained_beam_search(model, query_vecs: torch.Tensor, trie, table: IdTable | None, num_beams: int = 10,
                            top_k: int = 10, length_penalty: float = 0.0, batch_size: int = 64,
                            early_stopping: bool | str = True, constrained: bool = True, max_len: int | None = None,
                            progress: bool = False, return_scores: bool = False, step_dtype="float32",
                            compile=False):
    """Ranked item ids (<= top_k) per query and the throughput in queries/s (+ their scores if asked).

    `constrained=False` runs the same search over the full vocabulary for `max_len` (default: the
    trie's) tokens; a sequence that is no identifier of `table` then holds its rank as `MISS` (`rank_items`).
    `step_dtype`, `compile`: as `beam_search`."""
    t0 = time.perf_counter()
    if not constrained:
        max_len = max_len or (trie.max_len if trie is not None else None)
        trie = None
    result = beam_search(model, query_vecs, trie, num_beams, length_penalty, max_len, early_stopping, batch_size,
                         progress, step_dtype=step_dtype, compile=compile)
    rankings, scores = rank_items(result, table, None if trie is None else CSRTrie.coerce(trie), top_k,
                                  misses=not constrained)
    qps = Q.count(query_vecs) / max(time.perf_counter() - t0, 1e-9)
    return (rankings, scores, qps) if return_scores else (rankings, qps)


def topk_agreement(a_rankings, b_rankings, k: int = 10, ordered: bool = True) -> float:
    """Fraction of queries whose top-k item lists agree between two searches (e.g. bf16 vs fp32 step, issue #18):
    the same items in the same order (`ordered=False`: the same set)."""
    if len(a_rankings) != len(b_rankings):
        raise ValueError(f"{len(a_rankings)} vs {len(b_rankings)} queries")
    if not a_rankings:
        return 1.0
    same = (list(a[:k]) == list(b[:k]) if ordered else set(a[:k]) == set(b[:k])
            for a, b in zip(a_rankings, b_rankings))
    return sum(same) / len(a_rankings)
