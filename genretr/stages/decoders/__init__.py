"""Decoder adapters: what differs between the kinds of decoder, behind one interface, so that the stages never
ask which kind they run.  The backbone YAML names its adapter (`backbone.adapter._target_`); a new kind of
decoder is one module here plus its YAML.  `RunContext.decoder()` builds it (None for `method=embedding`).

An adapter has, for a run's `ctx` (`genretr.stages.context.RunContext`), dataset `ds`, embeddings `emb`
and `IdTable` `table`:

- ``add_ons``: the names of the paper add-ons it takes (`genretr.stages.addons`; the others are refused);
- ``reads_query_vectors``: whether the decoder reads a query's vector (the encode stage's) at all;
- ``stops_early``: whether it takes ``backbone.fit.early_stop`` (`genretr.training.EarlyStop`, validating on
  held-out training queries);
- ``query_inputs(ctx, ds, emb, queries, table, vecs=None)``: what the decoder reads for `queries` (their
  vectors, in the scheme's decoder space when it has one (`RunContext.decoder_space`, GENIUS Eq. 9), their
  tokens, processor samples), `vecs` replacing the encode stage's vectors;
- ``model_builder(ctx, ds, emb, table)``: a function that builds the untrained model (called again to load
  the trained weights);
- ``training(ctx, ds, emb, table, model)``: ``(datamodule or None when there is nothing to learn, extra
  keyword arguments of `genretr.training.fit`, ``callbacks`` among them)``;
- ``decoding_table(model, table)``: the identifiers as the decoder spells them (the trie is built from it);
- ``index_key(backbone_cfg)``: what, besides the identifiers, decides the tries: ``(key parts, configs
  whose code counts)``;
- ``search_add_ons(ctx, ds, table)``: its own search add-ons (`genretr.evaluation.search.SearchAddOn`, e.g.
  SSID's answer-with-reason), applied before the run's others.
"""
