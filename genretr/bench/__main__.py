"""`python -m genretr.bench SUBCOMMAND [options]`."""
from __future__ import annotations

import argparse
import sys

SUBCOMMANDS = {
    "decoding": ("genretr.bench.decoding", "constrained decoding: HF vs the genretr engine, trie, faiss crossover"),
    "stability": ("genretr.bench.stability", "the default training over seeds x thread counts: spread and budgets"),
    "training": ("genretr.bench.training", "training throughput of the default models: fp32 vs bf16, per thread count"),
    "scale": ("genretr.bench.scale", "shapes at growing sizes through every stage: wall time and peak RSS per stage"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genretr.bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_) in SUBCOMMANDS.items():
        mod = __import__(module, fromlist=["add_arguments"])
        mod.add_arguments(sub.add_parser(name, help=help_, description=mod.__doc__,
                                         formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    from genretr.heap import malloc_at_ceiling

    malloc_at_ceiling()  # as genretr.run has it
    mod = __import__(SUBCOMMANDS[args.command][0], fromlist=["run"])
    return int(mod.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
