"""Benchmarks: `python -m genretr.bench SUBCOMMAND [options]` (see `--help`).

Subcommands: `decoding` (genretr.bench.decoding): constrained decoding throughput, the constraint's
own cost, trie build/memory, faiss crossover.  Results go under `bench_out/` (gitignored).
"""
