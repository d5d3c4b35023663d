"""What a search returned for one query, item by item, as `results.html` and `genretr.search` show it: the item,
its identifier as the decoder spells it, its score (`genretr.evaluation.scoring`) and whether it is relevant."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from genretr.decoding import queries as Q
from genretr.evaluation.scoring import cosine_scores, identifier_scores
from genretr.identifiers.base import IdTable


@dataclass(frozen=True)
class Hit:
    rank: int  # 1-based
    item_id: str | None  # None: a free generation's miss (a sequence that is no pool item's identifier)
    identifier: str | None  # its tokens as the decoder spells them (IdTable.text); None without identifiers
    score: float | None  # log p(identifier | query) (generative) or cosine (embedding); None for a miss
    relevant: bool

    def as_dict(self) -> dict:
        return asdict(self)


def scored_hits(rankings: list[list[str | None]], relevant: list[tuple[str, ...]], query_inputs, *, model=None,
                table: IdTable | None = None, item_vecs=None, length_penalty: float = 0.0,
                step_dtype="float32", first_token: bool = False) -> list[list[Hit]]:
    """Each query's ranking as `Hit`s.  Generative runs (`model` and `table`) score identifiers teacher-forced;
    without a model (`item_vecs(ids) -> (n, d)`: the embedding baseline, GENIUS_R) by cosine with the query
    vector; `first_token`: the classifier head's score, log p of the identifier's one token.  `query_inputs`:
    what the searcher read for these queries, in its order.  A free generation's miss (`MISS`) keeps its rank as a
    Hit without an item."""
    from genretr.decoding.engine import MISS  # here, as the step decoder: the engine imports transformers

    sd = None
    if model is not None:  # one step decoder for every query (it folds, casts or copies the weights)
        from genretr.decoding.engine import step_decoder_of

        if hasattr(model, "eval"):
            model.eval()
        sd = step_decoder_of(model, step_dtype)
    out = []
    for q, ranked in enumerate(rankings):
        one = Q.take(query_inputs, q, q + 1)
        found = [iid for iid in ranked if iid is not MISS]
        if not found:
            scores = []
        elif model is not None:
            rows = table.subset(found).sequences
            scores = identifier_scores(model, one, rows[:, :1] if first_token else rows, length_penalty, step_dtype,
                                       step_decoder=sd)
        else:
            scores = cosine_scores(torch.as_tensor(Q.encoder_vectors(one))[0], torch.as_tensor(item_vecs(found)))
        score = dict(zip(found, map(float, scores)))
        out.append([Hit(r + 1, None, None, None, False) if iid is MISS else
                    Hit(r + 1, iid, table.text(iid) if table is not None else None, score[iid], iid in relevant[q])
                    for r, iid in enumerate(ranked)])
    return out
