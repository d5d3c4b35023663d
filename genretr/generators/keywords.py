"""`KeywordsGenerator`: an offline stand-in for the MLLM of SSID Sec. III-C -- NOT a language model.

It writes what the Sec. III-E prompt asks for from the item's captions alone, deterministically:

* identifier: concept-level phrases joined by " - " ("small red circle - blue square"), as SSID's
  identifiers are (Sec. III-C: objects, attributes, scenes; "cheerleaders - chairs - spectators").  The
  phrases are the caption's runs of content words between function words (at most `max_phrase_words`
  of each: its last word, the head, and the best-weighted others); each word is weighted by
  tf-idf (the share of the item's captions that use it x its inverse document frequency over the
  training captions), the best-weighted phrases are kept (in caption order) up to `max_words` words,
  skipping one whose words are mostly named already ("tiny red circle" after "small red circle");
* reason: a templated sentence naming those phrases;
* caption: the first caption.

It needs text: items without a caption must get one first (SSID's `ctx.describe`).  The same composer is
SSID's fallback for answers that stay malformed after the retries (`compose`).
"""
from __future__ import annotations

import math
import re
from collections import Counter

from genretr.errors import GenretrError
from genretr.generators import Request

FUNCTION_WORDS = frozenset("""
a an the this that these those some any each every another other such
and or but nor so yet as than then if while when where whose which who whom what
of in on at to for from with without within by into onto over under above below beneath behind beside besides
between among near next through across along around against toward towards up down off out upon about after before
is are was were be been being am has have had having do does did doing can could will would shall should may might
must it its it's their theirs his her hers him he she they them we us our you your i me my
there here very just also too not no only own same both all either neither
many much more most few several lot lots various
""".split())
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")


def content_runs(text: str) -> list[list[str]]:
    """Runs of consecutive content words of a text (lower-cased), split at function words and at punctuation
    other than commas and hyphens ("young, white males" stays one run)."""
    runs = []
    for chunk in re.split(r"[^\w\s',-]+", text.lower()):
        run = []
        for w in _WORD.findall(chunk):
            if w in FUNCTION_WORDS:
                if run:
                    runs.append(run)
                run = []
            else:
                run.append(w)
        if run:
            runs.append(run)
    return runs


class KeywordsGenerator:
    needs_text = True

    def __init__(self, max_words: int = 6, max_phrases: int = 3, max_phrase_words: int = 3):
        if min(max_words, max_phrases, max_phrase_words) < 1:
            raise GenretrError("keywords generator: max_words, max_phrases and max_phrase_words must be >= 1")
        self.max_words, self.max_phrases, self.max_phrase_words = max_words, max_phrases, max_phrase_words
        self.df: Counter = Counter()
        self.docs = 0

    def fit(self, train_texts: list[str]) -> None:
        """Document frequencies of the content words of the training captions."""
        self.df = Counter(w for t in train_texts for w in {w for run in content_runs(t) for w in run})
        self.docs = len(train_texts)

    def idf(self, word: str) -> float:
        return math.log((1 + self.docs) / (1 + self.df[word])) + 1.0

    def phrases(self, captions: list[str]) -> list[str]:
        """The distinctive phrases of an item's captions, in the order the captions mention them."""
        runs = [(c, k, run) for c, text in enumerate(captions) for k, run in enumerate(content_runs(text))]
        if not runs:
            return []
        share = Counter(w for text in captions for w in {w for run in content_runs(text) for w in run})
        weight = {w: share[w] / len(captions) * self.idf(w) for w in share}
        candidates: dict[tuple, tuple] = {}
        for c, k, run in runs:
            # the last word (an English phrase's head: "males" of "two young white males") and the best others
            rest = sorted(range(len(run) - 1), key=lambda i: (-weight[run[i]], i))[: self.max_phrase_words - 1]
            phrase = tuple(run[i] for i in sorted(rest)) + (run[-1],)
            score = sum(weight[w] for w in phrase)
            if phrase not in candidates or candidates[phrase][0] < score:
                candidates[phrase] = (score, c, k)
        chosen, covered, words = [], set(), 0
        for phrase, (score, c, k) in sorted(candidates.items(), key=lambda kv: (-kv[1][0], kv[1][1], kv[1][2])):
            if 2 * len(covered.intersection(phrase)) > len(phrase) or words + len(phrase) > self.max_words:
                continue
            chosen.append((c, k, phrase))
            covered |= set(phrase)
            words += len(phrase)
            if len(chosen) == self.max_phrases:
                break
        return [" ".join(p) for _, _, p in sorted(chosen)]

    def compose(self, captions: list[str]) -> tuple[str, str]:
        """(identifier, reason) from captions; ("", "") when they hold no content word."""
        phrases = self.phrases([c for c in captions if c])
        if not phrases:
            return "", ""
        named = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        return " - ".join(phrases), f"The caption names {named}, the elements that set this image apart."

    def generate(self, requests: list[Request]) -> list[str]:
        out = []
        for r in requests:
            captions = [c for c in (r.caption, *r.captions) if c]
            if not captions:
                raise GenretrError(f"the keywords generator needs a caption for item '{r.item_id}'")
            identifier, reason = self.compose(captions)
            out.append(f"caption:{captions[0]}\nidentifier:{identifier}\nreason:{reason}")
        return out

    def signature(self) -> dict:
        return {"generator": "keywords", "max_words": self.max_words, "max_phrases": self.max_phrases,
                "max_phrase_words": self.max_phrase_words, "docs": self.docs}
