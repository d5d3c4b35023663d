"""How right is the describer? Word F1 of the caption written for each test image against its true captions.

SSID's keywords generator reads, for a test image, the caption of the run's captioner (`ctx.describe`,
`genretr.stages.captions.captions_for`; test captions stay unseen).  This scores those captions in the generator's
canonical words (synonym classes learned from the train captions) against the union of the image's five
true captions, beside two references: the caption of the nearest train image (image embeddings) and one of
the true captions itself (the ceiling a perfect describer reaches).  It also lists the words the describer
uses most, which shows a collapsed captioner (a few shapes or colours everywhere), and the share of captions
that repeat a word trigram (a decoder looping).

    .venv/bin/python experiments/ssid/describer_quality.py experiment=ssid_table1
    .venv/bin/python experiments/ssid/describer_quality.py experiment=ssid_table1 captioner=pixels

The captions are the cached `captions` stage artifact of the same settings (a SSID run reuses them).
"""
import collections
import os
import sys
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir

from canonical_words import fitted_generator, train_captions, true_captions  # experiments/ssid/
from genretr.stages.captions import captions_for
from genretr.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[2]
CACHE = os.environ.get("GENRETR_CACHE", str(ROOT / ".cache/genretr"))


def repeats_trigram(text: str) -> bool:
    """Whether some three consecutive words occur twice: the sign of a greedy decoder caught in a loop."""
    words = text.split()
    trigrams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    return len(trigrams) != len(set(trigrams))


def main(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=[*overrides, f"paths.cache_dir={CACHE}", "progress=false"])
    p = Pipeline(cfg, Path("outputs/describer_quality"))
    ds = p.dataset()
    emb = p.encode(ds)
    train = train_captions(ds)
    true = true_captions(ds, cfg.eval.split)
    test = sorted(true)
    gen = fitted_generator(cfg, ds)
    truth = {i: {w for t in true[i] for w in gen.words(t)} for i in test}
    ids = sorted(train)
    nearest = np.argmax(emb.items(test).numpy() @ emb.items(ids).numpy().T, 1)
    written = {
        f"captioner ({' '.join(overrides)})": captions_for(p.ctx, ds, emb, test, every_item=True),
        "nearest train image's first caption": {i: train[ids[k]][0] for i, k in zip(test, nearest)},
        "a true caption (ceiling)": {i: true[i][0] for i in test},
    }
    for name, texts in written.items():
        f1 = []
        for i in test:
            w = set(gen.words(texts[i]))
            f1.append(2 * len(w & truth[i]) / (len(w) + len(truth[i])) if w else 0.0)
        top = collections.Counter(w for i in test for w in set(gen.words(texts[i]))).most_common(12)
        looping = np.mean([repeats_trigram(texts[i]) for i in test])
        print(f"{name}: word F1 {np.mean(f1):.3f}; {len(set(texts.values()))} distinct captions of {len(test)}; "
              f"{looping:.0%} repeat a word trigram (a decoding loop); "
              f"most used: {', '.join(f'{w} {n}' for w, n in top)}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
