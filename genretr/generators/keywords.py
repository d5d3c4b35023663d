"""`KeywordsGenerator`: an offline stand-in for the MLLM of SSID Sec. III-C -- NOT a language model.

It writes what the Sec. III-E prompt asks for from the item's captions alone, deterministically:

* identifier: concept-level phrases joined by " - " ("small red circle - blue square"), as SSID's
  identifiers are (Sec. III-C: objects, attributes, scenes; "cheerleaders - chairs - spectators").  The
  phrases are the caption's runs of content words between function words (at most `max_phrase_words`
  of each: its last word, the head, and the best-weighted others); each word is weighted by
  tf-idf (the share of the item's captions that use it x its inverse document frequency over the
  training captions), the best-weighted phrases are kept (in caption order) up to `max_words` words,
  skipping one whose words are mostly named already ("tiny red circle" after "small red circle");
  with `synonyms` > 0 every word is first replaced by its class's name, a lexicon learned from the training
  items' caption groups (`genretr.generators.synonyms`: "crimson" and "scarlet" are written "red"), so that
  one concept is one word across items, as an MLLM writes it;
* reason: a templated sentence naming those phrases; with `details`, it goes on with what else the first caption
  says (its other phrases, as an MLLM's reason relates the rest of the image), so the reason carries more
  than the identifier does;
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
from genretr.generators.synonyms import learn_synonyms

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
DETERMINERS = frozenset("a an the this that these those some any each every another".split())
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")


def content_runs(text: str) -> list[list[str]]:
    """Runs of consecutive content words of a text (lower-cased), split at function words and at punctuation
    other than commas and hyphens ("young, white males" stays one run).  "plus" before a determiner is the
    conjunction ("..., plus a red circle"), elsewhere a noun ("a plus sign")."""
    runs = []
    for chunk in re.split(r"[^\w\s',-]+", text.lower()):
        run = []
        ws = _WORD.findall(chunk)
        for i, w in enumerate(ws):
            if w in FUNCTION_WORDS or (w == "plus" and i + 1 < len(ws) and ws[i + 1] in DETERMINERS):
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

    def __init__(self, max_words: int = 6, max_phrases: int = 3, max_phrase_words: int = 3, synonyms: float = 0.0,
                 details: bool = False):
        """`synonyms`: the ratio below which two words are one concept (`learn_synonyms`); 0 learns none."""
        if min(max_words, max_phrases, max_phrase_words) < 1:
            raise GenretrError("keywords generator: max_words, max_phrases and max_phrase_words must be >= 1")
        if synonyms < 0:
            raise GenretrError(f"keywords generator: synonyms={synonyms} must be >= 0 (0: no synonym classes)")
        self.max_words, self.max_phrases, self.max_phrase_words = max_words, max_phrases, max_phrase_words
        self.synonyms, self.details = synonyms, details
        self.canon: dict[str, str] = {}
        self.df: Counter = Counter()
        self.docs = 0

    def fit(self, train_texts: list[str], groups: list[list[str]] = ()) -> None:
        """Document frequencies of the training captions' content words; with `synonyms`, the synonym classes
        learned from `groups` (each training item's captions)."""
        if self.synonyms > 0:
            self.canon = learn_synonyms((g for g in groups if len(g) > 1), _words, self.synonyms)
        self.df = Counter(w for t in train_texts for w in set(self.words(t)))
        self.docs = len(train_texts)

    def runs(self, text: str) -> list[list[str]]:
        """`content_runs` with each word named by its synonym class; a word repeated by that is kept once
        ("round dot" -> "circle")."""
        out = []
        for run in content_runs(text):
            named = [self.canon.get(w, w) for w in run]
            out.append([w for i, w in enumerate(named) if i == 0 or w != named[i - 1]])
        return out

    def words(self, text: str) -> list[str]:
        return [w for run in self.runs(text) for w in run]

    def idf(self, word: str) -> float:
        return math.log((1 + self.docs) / (1 + self.df[word])) + 1.0

    def phrases(self, captions: list[str]) -> list[str]:
        """The distinctive phrases of an item's captions, in the order the captions mention them."""
        per_caption = [self.runs(text) for text in captions]
        runs = [(c, k, run) for c, caption_runs in enumerate(per_caption) for k, run in enumerate(caption_runs)]
        if not runs:
            return []
        share = Counter(w for caption_runs in per_caption for w in {w for run in caption_runs for w in run})
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
        captions = [c for c in captions if c]
        phrases = self.phrases(captions)
        if not phrases:
            return "", ""
        reason = f"The caption names {_listed(phrases)}, the elements that set this image apart."
        named = {w for p in phrases for w in p.split()}
        rest = [" ".join(run) for run in self.runs(captions[0]) if not named.issuperset(run)] if self.details else []
        if rest:
            reason = reason[:-1] + f"; it also mentions {_listed(rest)}."
        return " - ".join(phrases), reason

    def generate(self, requests: list[Request]) -> list[str]:
        out = []
        for r in requests:
            if r.caption is None and not r.captions:
                raise GenretrError(f"the keywords generator needs a caption for item '{r.item_id}'")
            # every caption known (the shown one is among them), else the shown one; a written caption may be empty
            captions = [c for c in (r.captions or (r.caption,)) if c]
            identifier, reason = self.compose(captions) if captions else ("", "")
            out.append(f"caption:{captions[0] if captions else ''}\nidentifier:{identifier}\nreason:{reason}")
        return out

    def signature(self) -> dict:
        sig = {"generator": "keywords", "max_words": self.max_words, "max_phrases": self.max_phrases,
               "max_phrase_words": self.max_phrase_words, "docs": self.docs}
        if self.details:
            sig["details"] = True
        if self.synonyms > 0:  # absent at 0: caches written before synonym classes keep their key
            sig["synonyms"] = {"threshold": self.synonyms, "classes": sorted(self.canon.items())}
        return sig


def _listed(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _words(text: str) -> set[str]:
    return {w for run in content_runs(text) for w in run}
