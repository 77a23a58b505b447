"""Training: token shards and loaders, the trainer, optimizer groups, resume checkpoints, distributed.

Modules (import them directly; this package imports nothing, so importing one module stays light):
corpus (the embedded default corpus), data (prepare token shards, `RandomBatches`, `SequentialBatches`),
optim (AdamW groups, warmup + cosine), trainer (`TrainConfig`, `Trainer`), resume_checkpoints (atomic,
checksummed checkpoints to resume a run), distributed (torchrun, DDP, FSDP2), metrics (JSONL + loss curve),
run (a whole run from a config: `mambalab train`), evaluate (`mambalab eval`). Tokenizers live in
`mambalab.tokenizer`.
"""
