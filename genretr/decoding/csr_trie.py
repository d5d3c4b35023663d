"""`CSRTrie`: the identifier trie compiled into flat arrays (issue #3).

Built from an `IdTable`'s PAD-padded, EOS-terminated sequences (or any such int array) with
numpy and no Python loop per item: the distinct sequences are sorted lexicographically, and a
new trie node starts at depth d wherever a row's first difference from the previous row is at
a column <= d.  Nodes are numbered breadth-first, and within a depth by (parent, token), so

* the children of node i are the nodes ``indptr[i] + 1 .. indptr[i + 1]`` (edge e leads to node
  e + 1; the root is node 0), with their tokens ``edge_token[indptr[i]:indptr[i + 1]]`` sorted,
* a child lookup is a binary search in the parent's sorted segment,
* a terminal node (reached by EOS) is a leaf; ``leaf_node`` (sorted) / ``leaf_ptr`` /
  ``leaf_items`` give the rows of the building table that carry that identifier (several items
  may share one).

`allowed(prefix)`, `max_len` and `num_sequences` match the dict `genretr.decoding.trie.Trie`, so
this one class serves both the HF path (`prefix_allowed_tokens_fn`) and the vectorised engine
(`children`, `step`, `allowed_mask`).  Memory: 4 bytes per edge for tokens and per node for
offsets, plus the leaf arrays; on CPU the torch views share that memory.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from genretr.identifiers.base import EOS, PAD

_FILE = "trie.npz"


class CSRTrie:
    def __init__(self, indptr: np.ndarray, edge_token: np.ndarray, depth_ptr: np.ndarray, leaf_node: np.ndarray,
                 leaf_ptr: np.ndarray, leaf_items: np.ndarray, vocab_size: int, max_len: int):
        self.indptr = np.ascontiguousarray(indptr)
        # edge tokens padded by the widest fan-out (+1), so a padded child gather needs no clamp;
        # `edge_token` is a view of the first num_edges entries
        widest = int(np.diff(self.indptr).max(initial=0))
        self._edge_buf = np.zeros(len(edge_token) + widest + 1, dtype=np.asarray(edge_token).dtype)
        self._edge_buf[:len(edge_token)] = edge_token
        self.edge_token = self._edge_buf[:len(edge_token)]
        self.depth_ptr = np.asarray(depth_ptr, dtype=np.int64)  # nodes of depth d: depth_ptr[d]..depth_ptr[d+1]
        self.leaf_node = np.ascontiguousarray(leaf_node)
        self.leaf_ptr = np.ascontiguousarray(leaf_ptr)
        self.leaf_items = np.ascontiguousarray(leaf_items)
        self.vocab_size = int(vocab_size)
        self.max_len = int(max_len)
        self.num_sequences = len(self.leaf_node)
        self._torch: dict = {}  # device -> tensors for the vectorised ops

    # -- building -------------------------------------------------------------------------
    @classmethod
    def from_table(cls, table) -> "CSRTrie":
        return cls.from_sequences(table.sequences, vocab_size=table.vocab_size)

    @classmethod
    def from_sequences(cls, sequences, vocab_size: int | None = None) -> "CSRTrie":
        """`sequences`: (n, width) ints, PAD-padded; each row ends with EOS (rows of PAD only are skipped)."""
        seqs = np.asarray(sequences)
        if seqs.ndim != 2:
            raise ValueError(f"sequences must be 2-D, got shape {seqs.shape}")
        n, width = seqs.shape
        vocab_size = int(vocab_size if vocab_size is not None else (int(seqs.max()) + 1 if seqs.size else 2))
        if seqs.size and (seqs.min() < 0 or seqs.max() >= vocab_size):
            raise ValueError("token ids out of range")
        dtype = np.int16 if vocab_size <= np.iinfo(np.int16).max else np.int32
        seqs = seqs.astype(dtype, copy=False)
        nonempty = (seqs != PAD).any(1) if width else np.zeros(n, bool)
        rows = np.flatnonzero(nonempty)
        seqs = seqs[rows]
        if len(seqs) == 0:
            return cls(np.zeros(2, np.int32), np.zeros(0, np.int32), np.array([0, 1]), np.zeros(0, np.int32),
                       np.zeros(1, np.int64), np.zeros(0, np.int32), vocab_size, 0)
        lengths = (seqs != PAD).sum(1)
        last = seqs[np.arange(len(seqs)), lengths - 1]
        if (last != EOS).any() or ((seqs[:, :-1] == PAD) & (seqs[:, 1:] != PAD)).any() or (
                (seqs == EOS).sum(1) != 1).any():
            raise ValueError("every sequence must be EOS-terminated, contain one EOS, and be right-padded with PAD")
        width = int(lengths.max())
        seqs = seqs[:, :width]

        # lexicographic sort (column 0 most significant); PAD (0) < EOS (1) < every code
        order = np.lexsort(seqs.T[::-1])
        s = seqs[order]
        diff = s[1:] != s[:-1]
        differs = diff.any(1)
        first_diff = np.where(differs, diff.argmax(1), width)  # first differing column vs the previous row
        first_diff = np.concatenate([[0], first_diff])  # row 0 starts every node of its path
        uniq = np.concatenate([[True], differs])  # first row of each distinct sequence
        group = np.cumsum(uniq) - 1  # distinct-sequence index of every sorted row
        u = s[uniq]
        ufd = first_diff[uniq]
        m = len(u)

        # per depth: which distinct rows open a new node there, and each row's node id at that depth
        node_of_row = np.zeros(m, np.int64)  # node id of the current depth, per distinct row (root: 0)
        parents, tokens = [], []
        depth_ptr = [0, 1]
        next_id = 1
        for d in range(width):
            valid = u[:, d] != PAD
            opens = valid & (ufd <= d)
            k = int(opens.sum())
            parents.append(node_of_row[opens])
            tokens.append(u[opens, d])
            ids = np.cumsum(opens) - 1 + next_id  # for valid rows: the node that contains them at depth d+1
            node_of_row = np.where(valid, ids, node_of_row)
            next_id += k
            depth_ptr.append(next_id)
        parent = np.concatenate(parents)  # parent of node e + 1, non-decreasing
        edge_token = np.concatenate(tokens).astype(np.int32)
        num_nodes = next_id
        idx_dtype = np.int32 if num_nodes < np.iinfo(np.int32).max else np.int64
        counts = np.bincount(parent, minlength=num_nodes)
        indptr = np.zeros(num_nodes + 1, dtype=idx_dtype)
        np.cumsum(counts, out=indptr[1:])

        # leaves: node_of_row now holds each distinct sequence's terminal (EOS) node, increasing in u's order
        leaf_node = node_of_row.astype(idx_dtype)
        # items of each distinct sequence: table rows sorted by (group)
        leaf_items = rows[order].astype(np.int64)  # sorted rows are grouped by distinct sequence already
        leaf_ptr = np.zeros(m + 1, dtype=np.int64)
        np.cumsum(np.bincount(group, minlength=m), out=leaf_ptr[1:])
        # the terminal node ids of u's rows are increasing? (BFS numbering by depth breaks that for
        # variable lengths) -> sort leaves by node id so a lookup is one searchsorted
        lo = np.argsort(leaf_node, kind="stable")
        if (lo != np.arange(m)).any():
            sizes = np.diff(leaf_ptr)[lo]
            starts = leaf_ptr[:-1][lo]
            new_ptr = np.zeros(m + 1, dtype=np.int64)
            np.cumsum(sizes, out=new_ptr[1:])
            gather = np.repeat(starts - new_ptr[:-1], sizes) + np.arange(new_ptr[-1])
            leaf_items, leaf_ptr, leaf_node = leaf_items[gather], new_ptr, leaf_node[lo]
        leaf_items = leaf_items.astype(np.int32 if len(rows) and rows.max() < np.iinfo(np.int32).max else np.int64)
        return cls(indptr, edge_token, np.array(depth_ptr), leaf_node, leaf_ptr, leaf_items, vocab_size, width)

    @classmethod
    def coerce(cls, trie) -> "CSRTrie":
        """A CSRTrie from a CSRTrie or a dict `Trie` (its identifiers enumerated; leaf items are then unknown)."""
        if isinstance(trie, CSRTrie):
            return trie
        seqs, stack = [], [()]
        while stack:
            p = stack.pop()
            for t in trie.allowed(p):
                (seqs.append(p + (t,)) if t == EOS else stack.append(p + (t,)))
        width = max((len(s) for s in seqs), default=1)
        arr = np.zeros((len(seqs), width), np.int32)
        for i, s in enumerate(seqs):
            arr[i, :len(s)] = s
        vocab = max((max(s) for s in seqs), default=1) + 1
        return cls.from_sequences(arr, vocab_size=vocab)

    # -- sizes ----------------------------------------------------------------------------
    @property
    def num_nodes(self) -> int:
        return len(self.indptr) - 1

    @property
    def num_edges(self) -> int:
        return len(self.edge_token)

    def memory_bytes(self) -> int:
        """Bytes of the compiled arrays (+ copies on an accelerator)."""
        own = sum(a.nbytes for a in (self.indptr, self._edge_buf, self.depth_ptr, self.leaf_node, self.leaf_ptr,
                                     self.leaf_items))
        extra = sum(t.element_size() * t.numel() for d in self._torch.values() for t in d.values()
                    if t.device.type != "cpu")  # CPU tensors share the numpy arrays' memory
        return int(own + extra)

    # -- scalar API (dict-Trie compatible) -------------------------------------------------
    def _child(self, node: int, tok: int) -> int:
        lo, hi = int(self.indptr[node]), int(self.indptr[node + 1])
        j = lo + int(np.searchsorted(self.edge_token[lo:hi], tok))
        return j + 1 if j < hi and int(self.edge_token[j]) == tok else -1

    def node_of(self, prefix) -> int:
        """Node reached by `prefix`, or -1 when it is not a path of the trie.

        Memoised per prefix (bounded), so the HF path's per-beam calls on growing prefixes cost one
        dict lookup and at most one binary search, like the dict Trie's lookup."""
        key = tuple(int(t) for t in prefix)
        cache = self.__dict__.setdefault("_node_cache", {})
        node = cache.get(key)
        if node is None:
            node = 0 if not key else self.node_of(key[:-1])
            node = self._child(node, key[-1]) if key and node >= 0 else node
            if len(cache) >= 250_000:
                cache.clear()
            cache[key] = node
        return node

    def allowed(self, prefix) -> list[int]:
        """Tokens that may follow `prefix`; [] when it is not a valid prefix (or is complete)."""
        if self.num_nodes <= 1:
            return []
        node = self.node_of(prefix)
        if node < 0:
            return []
        return self.edge_token[self.indptr[node]:self.indptr[node + 1]].tolist()

    def items_of_node(self, node: int) -> list[int]:
        """Rows of the building table whose identifier ends at leaf `node`."""
        k = int(np.searchsorted(self.leaf_node, node))
        if k < len(self.leaf_node) and int(self.leaf_node[k]) == node:
            return self.leaf_items[self.leaf_ptr[k]:self.leaf_ptr[k + 1]].tolist()
        return []

    def sequences(self) -> np.ndarray:
        """(num_sequences, max_len) PAD-padded identifiers in leaf order (walks parents; for tests/inspection)."""
        parent = np.repeat(np.arange(self.num_nodes), np.diff(self.indptr))  # parent of node e + 1
        depth = np.searchsorted(self.depth_ptr, np.arange(self.num_nodes), side="right") - 1
        out = np.zeros((self.num_sequences, self.max_len), np.int32)
        node = self.leaf_node.astype(np.int64)
        d = depth[node]
        while (node > 0).any():
            live = node > 0
            out[live, d[live] - 1] = self.edge_token[node[live] - 1]
            node = np.where(live, parent[np.maximum(node - 1, 0)], 0)
            d = d - 1
        return out

    # -- vectorised API (torch) ------------------------------------------------------------
    @property
    def depth_max_fanout(self) -> np.ndarray:
        """Widest fan-out of the nodes of each depth (0: the root)."""
        if getattr(self, "_depth_fan", None) is None:
            fan = np.diff(self.indptr)
            starts = self.depth_ptr[:-1]
            ok = starts < len(fan)
            out = np.zeros(len(starts), np.int64)
            if fan.size and ok.any():
                out[ok] = np.maximum.reduceat(fan, starts[ok])
            self._depth_fan = out
        return self._depth_fan

    @property
    def depth_open_nodes(self) -> np.ndarray:
        """Nodes with children (beams that can still run) at each depth (0: the root): at most this many
        distinct running beams exist after d tokens, so the engine's beam width at step d is
        ``min(num_beams, depth_open_nodes[d])`` without looking at the beams (no host synchronisation)."""
        if getattr(self, "_depth_open", None) is None:
            fan = np.diff(self.indptr)
            depth = np.searchsorted(self.depth_ptr, np.arange(len(fan)), side="right") - 1  # depth of each node
            self._depth_open = np.bincount(depth[fan > 0], minlength=len(self.depth_ptr) - 1).astype(np.int64)
        return self._depth_open

    def tensors(self, device="cpu") -> dict:
        """The arrays as torch tensors on `device` (on CPU they share memory with the numpy arrays)."""
        key = str(device)
        if key not in self._torch:
            self._torch[key] = {"indptr": torch.from_numpy(self.indptr).to(device),
                                "edge_token": torch.from_numpy(self._edge_buf).to(device)}
        return self._torch[key]

    def _span(self, node_ids: torch.Tensor):
        t = self.tensors(node_ids.device)
        nodes = node_ids.long()
        safe = nodes.clamp(min=0)
        start = t["indptr"][safe].long()
        count = (t["indptr"][safe + 1].long() - start).masked_fill_(nodes < 0, 0)
        return start, count

    def fanout(self, node_ids: torch.Tensor) -> torch.Tensor:
        return self._span(node_ids)[1]

    def children(self, node_ids: torch.Tensor, width: int | None = None, counts: torch.Tensor | None = None):
        """For each node: (tokens, child node ids, valid), padded to the widest fan-out (or `width`).

        Only entries where `valid` are meaningful (padding holds in-range tokens, so the tokens can
        index logits directly).  Nodes < 0 have no children.  Child j of node i is ``indptr[i] + j + 1``."""
        start, count = self._span(node_ids)
        if width is None:
            width = int(count.max()) if count.numel() else 0
        ar = torch.arange(width, device=node_ids.device)
        edge = start.unsqueeze(-1) + ar
        valid = ar < count.unsqueeze(-1)
        tok = self.tensors(node_ids.device)["edge_token"][edge].long()
        return tok, edge.add_(1), valid

    def step(self, node_ids: torch.Tensor, tokens: torch.Tensor, depth: int | None = None,
             widest: int | None = None) -> torch.Tensor:
        """Child of each node by each token (-1 when there is none or the node is -1).

        A binary search inside each node's sorted child segment, vectorised over all nodes: as many
        rounds as the widest fan-out (`widest`, else that of `depth` if given) needs; no extra index memory."""
        t = self.tensors(node_ids.device)
        nodes, tokens = node_ids.long(), tokens.long()
        lo, count = self._span(nodes)
        hi = lo + count
        end = hi
        if widest is None:
            fan = self.depth_max_fanout
            widest = int(fan[depth]) if depth is not None and depth < len(fan) else int(fan.max(initial=0))
        edge_token = t["edge_token"]
        for _ in range(widest.bit_length()):
            active = lo < hi
            mid = (lo + hi) >> 1
            less = edge_token[mid] < tokens
            lo = torch.where(active & less, mid + 1, lo)
            hi = torch.where(active & ~less, mid, hi)
        found = (lo < end) & (edge_token[lo] == tokens)
        return torch.where(found, lo + 1, -1)

    def walk(self, prefixes: torch.Tensor) -> torch.Tensor:
        """Node reached by each row of `prefixes` (n, L) from the root (-1 if not a path)."""
        node = torch.zeros(len(prefixes), dtype=torch.long, device=prefixes.device)
        for j in range(prefixes.shape[1]):
            node = self.step(node, prefixes[:, j], depth=j)
        return node

    def allowed_mask(self, node_ids: torch.Tensor, vocab_size: int | None = None) -> torch.Tensor:
        """(n, V) bool: the tokens allowed after each node (rows of -1 / leaves: all False).

        Built once per distinct node and broadcast to the rows (beams share few nodes where the trie is wide)."""
        return self._mask(node_ids, vocab_size, allowed=True)

    def disallowed_mask(self, node_ids: torch.Tensor, vocab_size: int | None = None) -> torch.Tensor:
        """(n, V) bool: ~allowed_mask, built directly (one pass fewer over n x V)."""
        return self._mask(node_ids, vocab_size, allowed=False)

    def _mask(self, node_ids, vocab_size, allowed: bool) -> torch.Tensor:
        V = int(vocab_size or self.vocab_size)
        uniq, inverse = torch.unique(node_ids.long(), return_inverse=True)
        tok, _, valid = self.children(uniq)
        fill = torch.zeros if allowed else torch.ones
        mask = fill(len(uniq), V + 1, dtype=torch.bool, device=node_ids.device)
        mask.scatter_(1, torch.where(valid, tok, V), allowed)
        return mask[:, :V][inverse]

    def children_mask(self, node_ids: torch.Tensor, width: int, vocab_size: int | None = None,
                      allowed: bool = True) -> torch.Tensor:
        """(n, V) bool allowed (or disallowed) mask of each row's node, with the children padded to a given
        `width` (>= the rows' widest fan-out): fixed shapes, no `unique`, no host synchronisation."""
        V = int(vocab_size or self.vocab_size)
        tok, _, valid = self.children(node_ids, width=width)
        mask = (torch.zeros if allowed else torch.ones)(len(node_ids), V + 1, dtype=torch.bool, device=node_ids.device)
        return mask.scatter_(1, torch.where(valid, tok, V), allowed)[:, :V]

    def leaf_rows(self, node_ids: torch.Tensor) -> torch.Tensor:
        """Index into `leaf_node` of each (leaf) node, -1 for non-leaves."""
        ln = torch.from_numpy(self.leaf_node.astype(np.int64)).to(node_ids.device)
        if ln.numel() == 0:
            return torch.full_like(node_ids, -1)
        pos = torch.searchsorted(ln, node_ids.long()).clamp(max=ln.numel() - 1)
        return torch.where(ln[pos] == node_ids, pos, -1)

    # -- persistence ----------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Into directory `path` as trie.npz (same directory convention as the dict Trie)."""
        np.savez(Path(path) / _FILE, indptr=self.indptr, edge_token=self.edge_token, depth_ptr=self.depth_ptr,
                 leaf_node=self.leaf_node, leaf_ptr=self.leaf_ptr, leaf_items=self.leaf_items,
                 meta=np.array([self.vocab_size, self.max_len], np.int64))

    @classmethod
    def load(cls, path: Path) -> "CSRTrie":
        with np.load(Path(path) / _FILE) as f:
            vocab, max_len = (int(x) for x in f["meta"])
            return cls(f["indptr"], f["edge_token"], f["depth_ptr"], f["leaf_node"], f["leaf_ptr"], f["leaf_items"],
                       vocab, max_len)

    def __repr__(self) -> str:
        return (f"CSRTrie({self.num_sequences} sequences, {self.num_nodes} nodes, max_len={self.max_len}, "
                f"{self.memory_bytes() / 2**20:.1f} MiB)")
