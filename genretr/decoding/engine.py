"""Vectorised, exact trie-constrained beam search driving a `T5PrefixDecoder` step by step (issue #3).

What it computes is HF `generate`'s beam search (transformers 5.x `_beam_search`, the peers' method)
with `prefix_allowed_tokens_fn` over the identifier trie, minus HF's placeholder ("ghost") beams:

* scores are summed log-probabilities, each a log-softmax over the **full** vocabulary (GENIUS Sec. 4.4);
  a finished identifier of n tokens (EOS included) scores ``sum / n ** length_penalty``;
* every step takes the best ``2 * num_beams`` candidates over all (beam, allowed child) pairs; a
  candidate ending in EOS (or reaching `max_len`) is finalised if it ranks among the first
  `num_beams` of them; the best `num_beams` candidates that did not end continue;
* ``early_stopping=True`` (what `T5PrefixDecoder.generate` passes): a query is done once it holds
  `num_beams` finished identifiers; ``False``: once no running beam can beat its worst finished one
  (HF's heuristic; exact for ``length_penalty=0`` as log-probabilities only decrease).

HF starts every query with one real beam and ``num_beams - 1`` placeholders at -1e9; when a step has
fewer valid candidates than ``2 * num_beams`` those placeholders (and finished beams penalised by
-1e9) keep running and can enter HF's finished set with scores near -1e9 (duplicates, or identifiers
no real beam reached) -- and, with early stopping, can fill it before real identifiers finish.  Here
dead beams are simply dead, so the engine's finished set is HF's with those placeholder entries
replaced by real identifiers (tests/decoding/test_engine.py checks exactly that).

How it is computed (the speed):

* the prefix vectors and every layer's cross-attention keys/values are computed once per query and
  shared by its beams: the cross-attention runs as (query, head, beams x prefix) batched products;
* the self-attention keys/values live in a preallocated cache per layer, (rows, heads, max_len, d_kv),
  reordered in place by beam origin after each step (only the positions written so far);
* beam slots grow as the trie allows (step 0 runs one row per query, not `num_beams`);
* the constraint is one vectorised gather for all beams of all queries: the children of every beam's
  trie node (`CSRTrie.children`) index the logits; no Python loop over beams or queries;
* the output projection is computed for the full vocabulary -- the log-softmax normaliser needs
  every logit (a projection restricted to the allowed children would give a renormalised score,
  i.e. a different model score, not the papers') -- but only the allowed children are then gathered,
  normalised by the full logsumexp, and ranked, so neither a (rows, V) log-softmax nor a mask nor a
  top-k over rows x V is materialised in constrained mode.

`TrieLogitsProcessor` applies the same vectorised constraint inside HF `generate`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import LogitsProcessor

from genretr.decoding import queries as Q
from genretr.decoding.csr_trie import CSRTrie
from genretr.identifiers.base import EOS, PAD, IdTable

NEG_INF = float("-inf")


# ---------------------------------------------------------------------------------------------------------------
# step-wise T5 decoder


def reorder_kv_cache(cache, rows: torch.Tensor, upto: int) -> None:
    """In place, for a list of (keys, values) of shape (rows, heads, T, d): new row i <- old row rows[i],
    positions < upto only (the preallocated self-attention cache of every step decoder)."""
    n = len(rows)
    for ks, vs in cache:
        ks[:n, :, :upto] = ks[rows, :, :upto]
        vs[:n, :, :upto] = vs[rows, :, :upto]


class T5StepDecoder:
    """The weights of a `T5PrefixDecoder` (or any HF T5ForConditionalGeneration with a prefix) laid out
    for one-token steps with shared cross-attention and a reorderable self-attention cache."""

    def __init__(self, model):
        t5 = getattr(model, "t5", model)
        self.model = model
        cfg = t5.config
        dec = t5.decoder
        self.d, self.H, self.dk = cfg.d_model, cfg.num_heads, cfg.d_kv
        self.inner = self.H * self.dk
        self.eps = cfg.layer_norm_epsilon
        self.vocab_size = t5.lm_head.weight.shape[0]
        self.out_scale = cfg.d_model ** -0.5 if getattr(cfg, "scale_decoder_outputs", False) else None
        self.gated = bool(cfg.is_gated_act)
        act = cfg.dense_act_fn
        if act in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
            self.act = lambda x: F.gelu(x, approximate="tanh")
        elif act == "gelu":
            self.act = F.gelu
        elif act == "relu":
            self.act = F.relu
        else:
            self.act = dec.block[0].layer[-1].DenseReluDense.act
        self.embed = dec.embed_tokens.weight.detach()
        self.layers = []
        cross_kv = []
        for blk in dec.block:
            sa, ca, ff = blk.layer[0], blk.layer[1], blk.layer[-1]
            a, c, f = sa.SelfAttention, ca.EncDecAttention, ff.DenseReluDense
            # T5's RMS-norm weight is folded into the projection that follows it: W @ (w * x) = (W * w) @ x
            w_sa, w_ca, w_ff = (ln.layer_norm.weight.detach() for ln in (sa, ca, ff))
            layer = {
                "qkv": (torch.cat([a.q.weight, a.k.weight, a.v.weight]).detach() * w_sa).contiguous(),
                "o_t": a.o.weight.detach().t(),
                "cq": (c.q.weight.detach() * w_ca).contiguous(),
                "co_t": c.o.weight.detach().t(),
                "wo_t": f.wo.weight.detach().t(),
            }
            if self.gated:
                layer["wi"] = (torch.cat([f.wi_0.weight, f.wi_1.weight]).detach() * w_ff).contiguous()
                layer["d_ff"] = f.wi_0.weight.shape[0]
            else:
                layer["wi"] = (f.wi.weight.detach() * w_ff).contiguous()
            self.layers.append(layer)
            cross_kv += [c.k.weight, c.v.weight]
        self.L = len(self.layers)
        self.cross_kv = torch.cat(cross_kv).detach().contiguous()  # (L * 2 * inner, d)
        head = t5.lm_head.weight.detach() * dec.final_layer_norm.weight.detach()
        self.lm_head = (head * self.out_scale if self.out_scale is not None else head).contiguous()
        self.rel_attn = dec.block[0].layer[0].SelfAttention  # layer 0 owns the relative position bias
        self._bias_cache: dict = {}

    @property
    def device(self):
        return self.embed.device

    def position_bias(self, T: int) -> torch.Tensor:
        """(T, H, 1, T): row t is the self-attention bias of query position t over key positions (masked > t)."""
        if T not in self._bias_cache:
            with torch.no_grad():
                b = self.rel_attn.compute_bias(T, T, device=self.device)[0]  # (H, T, T)
            causal = torch.ones(T, T, dtype=torch.bool, device=self.device).tril()
            b = b.masked_fill(~causal, NEG_INF)
            self._bias_cache[T] = b.permute(1, 0, 2).unsqueeze(2).contiguous()
        return self._bias_cache[T]

    def rms(self, x):
        """T5LayerNorm without its weight (folded into the next projection)."""
        return F.rms_norm(x, (self.d,), eps=self.eps)

    def prepare(self, queries):
        """Once per query batch: the encoder states (`model.encode`: prefix vectors, or a T5 encoder over
        query tokens) and every layer's cross-attention K/V, shared by the query's beams."""
        if hasattr(self.model, "encode"):
            enc, mask = self.model.encode(queries)
        else:  # a bare HF T5 given encoder states directly
            enc, mask = queries, None
        # (N, 1, 1, P) boolean "may attend", broadcast over heads and beam slots
        return self.cross_kv_of(enc), None if mask is None else mask[:, None, None, :]

    def cross_kv_of(self, enc: torch.Tensor):
        """enc (N, P, d) -> per layer (K, V), each (N, H, P, d_kv); computed once per query."""
        N, P, _ = enc.shape
        kv = F.linear(enc, self.cross_kv).view(N, P, self.L, 2, self.H, self.dk)
        kv = kv.permute(2, 3, 0, 4, 1, 5).contiguous()  # (L, 2, N, H, P, dk)
        return [(kv[l, 0], kv[l, 1]) for l in range(self.L)]

    def new_cache(self, rows: int, T: int):
        shape = (rows, self.H, T, self.dk)
        return [(torch.empty(shape, device=self.device), torch.empty(shape, device=self.device))
                for _ in range(self.L)]

    def step(self, tokens: torch.Tensor, t: int, N: int, S: int, state, cache, T: int) -> torch.Tensor:
        """Logits (N*S, V) of the next token for N queries x S beam slots at position t (rows n*S + s)."""
        cross, cross_mask = state
        NS = N * S
        x = self.embed[tokens]
        bias = self.position_bias(T)[t, :, :, : t + 1]  # (H, 1, t+1)
        for layer, (kc, vc), (ks, vs) in zip(self.layers, cross, cache):
            # self-attention over positions 0..t, keys/values of position t written into the cache
            qkv = F.linear(self.rms(x), layer["qkv"]).view(NS, 3, self.H, self.dk)
            ks[:NS, :, t] = qkv[:, 1]
            vs[:NS, :, t] = qkv[:, 2]
            q = qkv[:, 0].unsqueeze(2)  # (NS, H, 1, dk)
            att = F.scaled_dot_product_attention(q, ks[:NS, :, : t + 1], vs[:NS, :, : t + 1], attn_mask=bias,
                                                 scale=1.0)
            x = torch.addmm(x, att.reshape(NS, self.inner), layer["o_t"])
            # cross-attention: the S beams of a query are S query positions against its shared prefix K/V
            q = F.linear(self.rms(x), layer["cq"]).view(N, S, self.H, self.dk).transpose(1, 2)  # (N, H, S, dk)
            att = F.scaled_dot_product_attention(q, kc, vc, attn_mask=cross_mask, scale=1.0)  # (N, H, S, dk)
            x = torch.addmm(x, att.transpose(1, 2).reshape(NS, self.inner), layer["co_t"])
            # feed-forward (T5DenseGatedActDense / T5DenseActDense)
            g = F.linear(self.rms(x), layer["wi"])
            if self.gated:
                dff = layer["d_ff"]
                g = self.act(g[:, :dff]).mul_(g[:, dff:])
            else:
                g = self.act(g)
            x = torch.addmm(x, g, layer["wo_t"])
        # final layer norm (weight and T5's optional output scaling folded into lm_head)
        return F.linear(self.rms(x), self.lm_head)

    reorder = staticmethod(reorder_kv_cache)


# ---------------------------------------------------------------------------------------------------------------
# beam search


@dataclass
class BeamResult:
    tokens: torch.Tensor  # (Q, B, T) finished identifiers, PAD after EOS
    scores: torch.Tensor  # (Q, B) length-penalised summed log-probs, descending; -inf for empty slots
    lengths: torch.Tensor  # (Q, B) tokens incl. EOS (0 for empty slots)
    nodes: torch.Tensor  # (Q, B) trie leaf node of each identifier (-1 for empty slots / unconstrained)


def step_decoder_of(model):
    """The model's `StepDecoder` (`model.step_decoder()`: CART, MLLMs) or the built-in T5 one."""
    return model.step_decoder() if hasattr(model, "step_decoder") else T5StepDecoder(model)


@torch.no_grad()
def beam_search(model, query_vecs, trie: CSRTrie | None, num_beams: int, length_penalty: float = 0.0,
                max_len: int | None = None, early_stopping: bool = True, batch_size: int = 64,
                progress: bool = False, dense_ratio: float = 4.0) -> BeamResult:
    """Beam search for every query (`trie=None`: unconstrained over the full vocabulary, `max_len` tokens).

    A step whose widest trie node has W children scores (rows, W) gathered children when
    ``W * dense_ratio < V``, else full (rows, V) rows masked per distinct node (same result)."""
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
    sd = step_decoder_of(model)  # cheap (views of the weights); rebuilt per call so it never goes stale
    parts = []
    starts = range(0, Q.count(query_vecs), batch_size)
    if progress:
        from rich.progress import track

        starts = track(starts, description="constrained beam search (genretr)", transient=True)
    for s in starts:
        z = Q.to_device(Q.take(query_vecs, s, s + batch_size), sd.device)
        parts.append(_search_batch(sd, z, trie, B, T, float(length_penalty), early_stopping, dense_ratio))
    if was_training:
        model.train()
    if not parts:
        e = torch.empty(0, B)
        return BeamResult(torch.empty(0, B, T, dtype=torch.long), e, e.long(), e.long())
    return BeamResult(*(torch.cat([getattr(p, f) for p in parts]) for f in ("tokens", "scores", "lengths", "nodes")))


def constrained_scores(trie: CSRTrie | None, nodes: torch.Tensor, logits: torch.Tensor, offset: torch.Tensor,
                       dense_ratio: float = 4.0, inplace: bool = False):
    """The constraint of one step for all beams of all queries at once.

    nodes (R,) trie node of each beam (-1: dead); logits (R, V); offset (R, 1) added to every allowed
    logit (running score - logsumexp).  Returns (scores, tokens, children): with narrow nodes
    (``W * dense_ratio < V``, W the widest fan-out) scores are (R, W) over each node's children, whose
    tokens and child nodes are returned; otherwise (R, V) full rows masked by each distinct node's
    children, and tokens/children are None (the column is the token)."""
    if trie is not None:
        W = int(trie.fanout(nodes).max()) if nodes.numel() else 0
        if W * dense_ratio < logits.shape[1]:
            ctok, cnode, valid = trie.children(nodes, width=W)
            return torch.where(valid, logits.gather(1, ctok).add_(offset), NEG_INF), ctok, cnode
    cand = logits.add_(offset) if inplace else logits + offset
    if trie is not None:
        cand = cand.masked_fill_(trie.disallowed_mask(nodes, logits.shape[1]), NEG_INF)
    return cand, None, None


def _search_batch(sd, z, trie, B: int, T: int, lp: float, early_stopping: bool,
                  dense_ratio: float = 4.0) -> BeamResult:
    N, dev = Q.count(z), sd.device
    state = sd.prepare(z)  # what a query's beams share (encoder states, cross-attention K/V), once per query
    cache = sd.new_cache(N * B, T)
    S = 1
    tokens = torch.full((N,), PAD, dtype=torch.long, device=dev)
    run_scores = torch.zeros(N, 1, device=dev)
    nodes = torch.zeros(N, 1, dtype=torch.long, device=dev)
    hist = torch.zeros(N, 1, T, dtype=torch.long, device=dev)
    fin_scores = torch.full((N, B), NEG_INF, device=dev)
    fin_tok = torch.zeros(N, B, T, dtype=torch.long, device=dev)
    fin_len = torch.zeros(N, B, dtype=torch.long, device=dev)
    fin_node = torch.full((N, B), -1, dtype=torch.long, device=dev)
    frozen = torch.zeros(N, dtype=torch.bool, device=dev)
    ar_n = torch.arange(N, device=dev).unsqueeze(1)
    for t in range(T):
        logits = sd.step(tokens, t, N, S, state, cache, T)  # (N*S, V)
        V = logits.shape[1]
        # log p(token) = logit - logsumexp over the FULL vocabulary, + the beam's running score
        offset = run_scores.view(-1, 1) - torch.logsumexp(logits, -1, keepdim=True)
        cand, ctok, cnode = constrained_scores(trie, nodes.view(-1), logits, offset, dense_ratio, inplace=True)
        sparse = ctok is not None
        W = cand.shape[1]
        cand = cand.view(N, S * W)
        K = min(2 * B, S * W)
        top, idx = cand.topk(K, dim=1)  # sorted, best first
        slot = idx // W
        if sparse:
            tok = ctok.view(N, S * W).gather(1, idx)
            child = cnode.view(N, S * W).gather(1, idx)
        else:
            tok = idx % W
            child = trie.step(nodes.gather(1, slot), tok, depth=t) if trie is not None else torch.full_like(tok, -1)
        ok = top > NEG_INF
        ends = ok & ((tok == EOS) | (t == T - 1))
        # finished: candidates that end, ranked within the first B, for queries still accepting
        add = ends & ~frozen.unsqueeze(1)
        if K > B:
            add[:, B:] = False
        if add.any():
            cand_hist = hist.gather(1, slot.unsqueeze(-1).expand(N, K, T))
            cand_hist[:, :, t] = tok
            new = torch.where(add, top / float(t + 1) ** lp, NEG_INF)
            merged = torch.cat([fin_scores, new], 1)
            fin_scores, sel = merged.topk(B, dim=1)
            fin_tok = torch.cat([fin_tok, cand_hist], 1).gather(1, sel.unsqueeze(-1).expand(N, B, T))
            fin_len = torch.cat([fin_len, torch.full_like(tok, t + 1)], 1).gather(1, sel)
            fin_node = torch.cat([fin_node, child], 1).gather(1, sel)
        # running: the best B candidates that did not end
        runnable = ok & ~ends
        S_new = min(B, int(runnable.sum(1).max()) if t < T - 1 else 0)
        full = (fin_scores > NEG_INF).all(1)
        if S_new == 0:
            break
        r_top, r_idx = top.masked_fill(~runnable, NEG_INF).topk(S_new, dim=1)
        origin = slot.gather(1, r_idx)  # (N, S_new)
        alive = r_top > NEG_INF
        new_tok = tok.gather(1, r_idx)
        rows = (ar_n * S + origin).view(-1)
        sd.reorder(cache, rows, t + 1)
        hist = hist.gather(1, origin.unsqueeze(-1).expand(N, S_new, T))
        hist[:, :, t] = new_tok
        run_scores = r_top
        nodes = torch.where(alive, child.gather(1, r_idx), -1)
        tokens = torch.where(alive, new_tok, PAD).view(-1)
        S = S_new
        if early_stopping is True:
            frozen |= full
        else:  # HF: stop once the best running beam cannot beat the worst finished one
            best = run_scores[:, 0] / float(t + 1) ** lp
            frozen |= full & ~(best > fin_scores[:, -1])
        if bool(frozen.all()):
            break
    if trie is None:
        fin_node.fill_(-1)
    return BeamResult(fin_tok.cpu(), fin_scores.cpu(), fin_len.cpu(), fin_node.cpu())


def rank_items(result: BeamResult, table: IdTable | None, trie: CSRTrie | None, top_k: int):
    """Per query: items of the finished identifiers in score order (distinct, <= top_k) and their scores.

    Items come from `table.items_of(identifier)` (as the HF path), or -- without a table -- from the
    trie's leaves (rows of the table the trie was built from)."""
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
            for iid in items:
                if iid not in seen:
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
                            early_stopping: bool = True, constrained: bool = True, max_len: int | None = None,
                            progress: bool = False, return_scores: bool = False):
    """Ranked item ids (<= top_k) per query and the throughput in queries/s (+ their scores if asked).

    `constrained=False` runs the same search over the full vocabulary for `max_len` (default: the
    trie's) tokens; identifiers that are not in `table` then map to no item."""
    t0 = time.perf_counter()
    if not constrained:
        max_len = max_len or (trie.max_len if trie is not None else None)
        trie = None
    result = beam_search(model, query_vecs, trie, num_beams, length_penalty, max_len, early_stopping, batch_size,
                         progress)
    rankings, scores = rank_items(result, table, None if trie is None else CSRTrie.coerce(trie), top_k)
    qps = Q.count(query_vecs) / max(time.perf_counter() - t0, 1e-9)
    return (rankings, scores, qps) if return_scores else (rankings, qps)


# ---------------------------------------------------------------------------------------------------------------
# HF generate with the same vectorised constraint


class TrieLogitsProcessor(LogitsProcessor):
    """HF `LogitsProcessor`: -inf on every token the trie does not allow after each row's prefix.

    Equivalent to `PrefixConstrainedLogitsProcessor(prefix_allowed_fn(trie))` (rows whose prefix is
    complete or invalid may only emit PAD) but vectorised over all rows: the prefixes are walked
    down the CSR trie column by column and the allowed children scattered into one mask."""

    def __init__(self, trie, num_beams: int = 1, prompt_len: int = 1, inplace: bool = False):
        self.trie = CSRTrie.coerce(trie)
        self.num_beams = num_beams
        self.prompt_len = prompt_len  # decoder start token(s) to skip
        # inplace=True masks `scores` itself, sparing a (rows, V) allocation: safe in HF beam search (its
        # input is a fresh log-softmax), not in greedy search with output_logits=True (HF keeps that tensor)
        self.inplace = inplace

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        nodes = self.trie.walk(input_ids[:, self.prompt_len:])
        dead = self.trie.fanout(nodes) == 0
        if dead.any():  # complete or invalid prefix: only PAD (as `prefix_allowed_fn`)
            nodes = nodes.masked_fill(dead, -1)
        banned = self.trie.disallowed_mask(nodes, scores.shape[-1])
        banned[:, PAD] &= ~dead
        processed = scores.masked_fill_(banned, NEG_INF) if self.inplace else scores.masked_fill(banned, NEG_INF)
        # as HF: if no beam of a batch element has a finite allowed score, force the constraint with 0
        unsat = processed.amax(-1).isneginf().view(-1, self.num_beams).all(-1, keepdim=True)
        if unsat.any():
            zero = torch.zeros_like(scores).masked_fill(banned, NEG_INF)
            processed = torch.where(unsat.repeat_interleave(self.num_beams, 0), zero, processed)
        return processed


@torch.no_grad()
def hf_generate(model, z: torch.Tensor, num_beams: int, max_new_tokens: int, trie=None, mode: str = "processor",
                length_penalty: float = 0.0):
    """HF beam search (or greedy) on a T5PrefixDecoder with the trie as `TrieLogitsProcessor`
    (`mode="processor"`), as the Python `prefix_allowed_tokens_fn` (`mode="python"`), or unconstrained
    (`trie=None`).  Returns (sequences without the start token, scores)."""
    from transformers import LogitsProcessorList
    from transformers.modeling_outputs import BaseModelOutput

    from genretr.decoding.hf import prefix_allowed_fn

    kwargs = {}
    if trie is not None and mode == "python":
        kwargs["prefix_allowed_tokens_fn"] = prefix_allowed_fn(trie)
    elif trie is not None:
        kwargs["logits_processor"] = LogitsProcessorList([TrieLogitsProcessor(trie, num_beams, inplace=True)])
    enc, mask = model.encode(z)
    out = model.t5.generate(encoder_outputs=BaseModelOutput(last_hidden_state=enc), attention_mask=mask,
                            num_beams=num_beams,
                            num_return_sequences=num_beams, max_new_tokens=max_new_tokens,
                            length_penalty=length_penalty, early_stopping=True, do_sample=False, output_scores=True,
                            return_dict_in_generate=True, **kwargs)
    seqs = out.sequences[:, 1:]
    scores = getattr(out, "sequences_scores", None)
    return seqs, scores

