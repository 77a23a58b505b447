"""Training: tokenizers, token shards and loaders, the trainer, optimizer groups, checkpoints, distributed.

Modules (import them directly; this package imports nothing so `mambalab.train.tokenizer` stays light):
tokenizer (byte-level and HF tokenizer.json), corpus (the embedded default corpus), data (prepare token
shards, `RandomBatches`, `SequentialBatches`), optim (AdamW groups, warmup + cosine), trainer (`TrainConfig`,
`Trainer`), checkpointing (atomic, checksummed checkpoints), distributed (torchrun, DDP, FSDP2), metrics
(JSONL + loss curve), run (a whole run from a config: `mambalab train`), evaluate (`mambalab eval`).
"""
