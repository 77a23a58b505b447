"""Training: token shards and loaders, the trainer, optimizer groups, checkpoints, distributed (the tokenizers
live in mambalab.tokenizer).

Modules (import them directly; this package imports nothing, so importing one stays light):
corpus (the embedded default corpus), data (prepare token
shards, `RandomBatches`, `SequentialBatches`), optim (AdamW groups, warmup + cosine), trainer (`TrainConfig`,
`Trainer`), checkpointing (atomic, checksummed checkpoints), distributed (torchrun, DDP, FSDP2), metrics
(JSONL + loss curve), run (a whole run from a config: `mambalab train`), evaluate (`mambalab eval`).
"""
