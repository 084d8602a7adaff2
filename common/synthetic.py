"""CONTRACT STUB (to be implemented): embedded datasets in the real formats.

write_wikitext(dir, ...) -> dir with wiki.{train,valid,test}.raw; topic-structured; optimal perplexity in meta.
write_ag_news(dir, ...) -> train.csv/test.csv ("class","title","description"), classes 1..4 (topics).
write_glue(dir, task) for task in {sst2-like single sentence, mrpc-like pair, stsb-like regression}: train.tsv/dev.tsv
write_cifar100(dir, ...) -> cifar-100-python/{train,test,meta} pickles (uint8 3072-byte rows), learnable classes.
ensure(kind, root=None) -> Path: generate once into a cache folder (deterministic), return it.
"""
