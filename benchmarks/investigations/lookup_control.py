"""The phone-book's control: the same model, trained by the same plan, on MQAR (Zoology's key-value recall),
whose lookup the Transformer++ of `compare` is known to learn at its own plan. When the phone-book lookup is
not learnt, this says whether the model and budget form an associative-recall circuit at all.

    PYTHONPATH=. python3 benchmarks/investigations/lookup_control.py --vocab-size 128 --n-kv 16 --length 64 \\
        --eval-lengths 64 --steps 2000 --lr 1e-3 --out $OUT
"""

from __future__ import annotations

import time

from benchmarks.common import base_parser, write_result
from benchmarks.investigations.phonebook_digits import (
    add_model_arguments,
    held_out_logits,
    plan_from,
    plan_record,
    trained_model,
)
from mambalab.device import resolve_device
from mambalab.tasks import build_task


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
    device = resolve_device(args.device)
    options = {"vocab_size": args.vocab_size, "n_kv": args.n_kv}
    plan = plan_from(args, options)
    task = build_task("mqar", **options)
    start = time.perf_counter()
    model, train = trained_model(args.family, task, plan, args.seed, device)
    evals = {str(n): recall_metrics(model, task, plan, n, args.seed, device) for n in plan.eval_lengths}
    for n, result in evals.items():
        print(f"length {n}: answers right {result['token_accuracy']:.3f}, loss {result['loss']:.3f}")
    write_result("lookup_control", {
        "family": args.family, "task": "mqar", "plan": plan_record(args, plan, model),
        "final_loss": train["final_loss"], "curve": train["curve"], "wall_s": time.perf_counter() - start,
        "eval": evals}, args.out)


if __name__ == "__main__":
    main()
