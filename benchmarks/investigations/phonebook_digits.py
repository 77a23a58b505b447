"""Which digits of a phone-book number does a trained model get wrong? One family trained as `mambalab compare`
trains it (the standard preset's matched size, the given plan), then the accuracy of each digit position of
the asked number, and of the whole number, on held-out books at each length.

    PYTHONPATH=. python3 benchmarks/investigations/phonebook_digits.py --length 128 --steps 3000 --lr 1e-3 \\
        --train-queries 8 --eval-lengths 128 256 --out $OUT

A first digit right and the rest near chance (10 %) says the lookup works and the copy after it does not; all
digits alike says the lookup itself fails.
"""

from __future__ import annotations

import time

import torch

from benchmarks.common import base_parser, write_result
from mambalab.device import resolve_device
from mambalab.experiments.families import family_config
from mambalab.experiments.presets import TaskPlan, get_compare_preset
from mambalab.experiments.runner import TaskBatches, autocast_for, check_lengths, eval_batches, train_model
from mambalab.models.lm import LanguageModel
from mambalab.tasks import build_task
from mambalab.tasks.base import IGNORE_INDEX


@torch.no_grad()
def digit_accuracy(model, task, plan, length, seed, device) -> dict:
    """Accuracy per digit position of the asked number (teacher-forced) and of whole numbers at `length`."""
    model.eval()
    right, whole, examples = torch.zeros(task.number_len), 0, 0
    for batch in eval_batches(task, plan, length, seed):
        with autocast_for(device):
            logits = model(batch["input_ids"].to(device)).float().cpu()  # (b, l, v)
        labels = batch["labels"]  # (b, l): the number's digits scored, the rest IGNORE_INDEX
        scored = labels != IGNORE_INDEX
        correct = (logits.argmax(-1) == labels) & scored
        per_digit = correct[scored].view(-1, task.number_len)  # (b, number_len), one lookup per example
        right += per_digit.float().sum(0)
        whole += int(per_digit.all(-1).sum())
        examples += per_digit.shape[0]
    model.train()
    return {"digits": [round(v, 4) for v in (right / examples).tolist()], "numbers": whole / examples,
            "examples": examples}


def main() -> None:
    parser = base_parser(__doc__, raw_description=True, device="auto")
    parser.add_argument("--family", default="transformer")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--eval-lengths", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train-queries", type=int, default=8)
    parser.add_argument("--number-len", type=int, default=4)
    parser.add_argument("--name-len", type=int, default=2)
    parser.add_argument("--n-letters", type=int, default=26)
    parser.add_argument("--n-digits", type=int, default=10, help="the base of the numbers (PhoneBook n_digits)")
    parser.add_argument("--no-colon", action="store_true", help="entries `name number ,` (PhoneBook colon=False)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-layer", type=int, default=None,
                        help="depth of the Mamba reference the family is matched to (default: the preset's)")
    parser.add_argument("--same-depth", action="store_true", help="the family at the reference's depth (TaskPlan)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the preset plan's")
    args = parser.parse_args()
    device = resolve_device(args.device)
    preset = get_compare_preset("standard")
    base = preset.tasks["phonebook"]
    options = {**base.options, "train_queries": args.train_queries, "number_len": args.number_len,
               "name_len": args.name_len, "n_letters": args.n_letters, "colon": not args.no_colon, "n_digits": args.n_digits}
    plan = TaskPlan(options, args.length, tuple(args.eval_lengths), steps=args.steps,
                    batch_size=args.batch_size or base.batch_size, lr=args.lr, weight_decay=base.weight_decay,
                    eval_examples=base.eval_examples, n_layer=args.n_layer, same_depth=args.same_depth)
    task = build_task("phonebook", **options)
    check_lengths(task, plan)
    torch.manual_seed(args.seed)
    model = LanguageModel(family_config(args.family, preset.size_for(plan), task.vocab_size, same_depth=plan.same_depth)).to(device)
    start = time.perf_counter()
    train = train_model(model, TaskBatches(task, plan, args.seed), plan, device, args.seed, progress=False)
    evals = {str(n): digit_accuracy(model, task, plan, n, args.seed, device) for n in plan.eval_lengths}
    for n, result in evals.items():
        print(f"length {n}: digits {result['digits']}, whole numbers {result['numbers']:.3f}")
    write_result("phonebook_digits", {
        "family": args.family, "plan": {"options": options, "train_length": args.length, "steps": args.steps,
                                        "lr": args.lr, "batch_size": plan.batch_size, "n_layer": args.n_layer,
                                        "same_depth": args.same_depth, "layers": model.config.n_layer}, "final_loss": train["final_loss"],
        "curve": train["curve"],
        "wall_s": time.perf_counter() - start, "eval": evals}, args.out)


if __name__ == "__main__":
    main()
