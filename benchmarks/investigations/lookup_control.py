"""The phone-book's control: the same model, trained by the same plan, on MQAR (Zoology's key-value recall),
whose lookup the Transformer++ of `compare` is known to learn at its own plan. When the phone-book lookup is
not learnt, this says whether the model and budget form an associative-recall circuit at all.

    PYTHONPATH=. python3 benchmarks/investigations/lookup_control.py --vocab-size 128 --n-kv 16 --length 64 \\
        --eval-lengths 64 --steps 2000 --lr 1e-3 --out $OUT
"""

from __future__ import annotations

from benchmarks.common import base_parser
from benchmarks.investigations.phonebook_digits import (
    add_model_arguments,
    held_out_logits,
    run_and_record,
)


def recall_metrics(model, task, plan, length, seed, device) -> dict:
    """MQAR's metrics (token accuracy over the answers, loss) on the held-out batches at `length`."""
    return task.merge([task.score(logits, batch)
                       for logits, batch in held_out_logits(model, task, plan, length, seed, device)])


def main() -> None:
    parser = base_parser(__doc__, raw_description=True, device="auto")
    add_model_arguments(parser)
    parser.add_argument("--vocab-size", type=int, default=128)
    parser.add_argument("--n-kv", type=int, default=16, help="key-value pairs per sequence")
    args = parser.parse_args()
    run_and_record("lookup_control", args, "mqar", {"vocab_size": args.vocab_size, "n_kv": args.n_kv},
                   recall_metrics, lambda r: f"answers right {r['token_accuracy']:.3f}, loss {r['loss']:.3f}")


if __name__ == "__main__":
    main()
