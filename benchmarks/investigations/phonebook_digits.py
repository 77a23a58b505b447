"""Which digits of a phone-book number does a trained model get wrong? One family trained as `mambalab compare`
trains it (the standard preset's matched size, the given plan), then the accuracy of each digit position of
the asked number, and of the whole number, on held-out books at each length.

    PYTHONPATH=. python3 benchmarks/investigations/phonebook_digits.py --length 128 --steps 3000 --lr 1e-3 \\
        --train-queries 8 --eval-lengths 128 256 --out $OUT

A first digit right and the rest near chance (10 %) says the lookup works and the copy after it does not; all
digits alike says the lookup itself fails.
"""

from __future__ import annotations

import logging
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
def held_out_logits(model, task, plan, length, seed, device):
    """Yield (logits (b, l, v) on the CPU, batch) for the held-out batches at `length`, the model in eval mode."""
    model.eval()
    for batch in eval_batches(task, plan, length, seed):
        with autocast_for(device):
            yield model(batch["input_ids"].to(device)).float().cpu(), batch
    model.train()


def digit_accuracy(model, task, plan, length, seed, device) -> dict:
    """Accuracy per digit position of the asked number (teacher-forced) and of whole numbers at `length`."""
    right, whole, examples = torch.zeros(task.number_len), 0, 0
    for logits, batch in held_out_logits(model, task, plan, length, seed, device):
        labels = batch["labels"]  # (b, l): the number's digits scored, the rest IGNORE_INDEX
        scored = labels != IGNORE_INDEX
        correct = (logits.argmax(-1) == labels) & scored
        per_digit = correct[scored].view(-1, task.number_len)  # (b, number_len), one lookup per example
        right += per_digit.float().sum(0)
        whole += int(per_digit.all(-1).sum())
        examples += per_digit.shape[0]
    return {"digits": [round(v, 4) for v in (right / examples).tolist()], "numbers": whole / examples,
            "examples": examples}


def trained_model(family: str, task, plan: TaskPlan, seed: int, device: torch.device) -> tuple:
    """`family` at the standard preset's size for `plan` (its n_layer, same_depth), trained on `task` as `compare`
    trains it; returns (model, the trainer's summary)."""
    check_lengths(task, plan)
    torch.manual_seed(seed)
    size = get_compare_preset("standard").size_for(plan)
    model = LanguageModel(family_config(family, size, task.vocab_size, same_depth=plan.same_depth)).to(device)
    return model, train_model(model, TaskBatches(task, plan, seed), plan, device, seed, progress=False)


def add_model_arguments(parser) -> None:
    """The training flags the phone-book and its MQAR control share."""
    parser.add_argument("--family", default="transformer")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--eval-lengths", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-layer", type=int, default=None,
                        help="depth of the Mamba reference the family is matched to (default: the preset's)")
    parser.add_argument("--same-depth", action="store_true", help="the family at the reference's depth (TaskPlan)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the preset's phone-book plan's")


def plan_from(args, options: dict) -> TaskPlan:
    """The standard preset's phone-book plan with the flags of `add_model_arguments` and task `options`."""
    base = get_compare_preset("standard").tasks["phonebook"]
    return TaskPlan(options, args.length, tuple(args.eval_lengths), steps=args.steps,
                    batch_size=args.batch_size or base.batch_size, lr=args.lr, weight_decay=base.weight_decay,
                    eval_examples=base.eval_examples, n_layer=args.n_layer, same_depth=args.same_depth)


def plan_record(args, plan: TaskPlan, model) -> dict:
    return {"options": plan.options, "train_length": plan.train_length, "steps": plan.steps, "lr": plan.lr,
            "batch_size": plan.batch_size, "n_layer": args.n_layer, "same_depth": args.same_depth,
            "layers": model.config.n_layer}


def run_and_record(name: str, args, task_name: str, options: dict, evaluate, describe) -> None:
    """Train `args.family` on `task_name` with `options` by the flags' plan, score each evaluation length with
    `evaluate(model, task, plan, length, seed, device)`, print `describe(score)` per length and write the
    result `name` (plan, loss curve, wall time, scores) to `args.out`."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the trainer's "step N: loss …" lines, 50 a run
    device = resolve_device(args.device)
    plan = plan_from(args, options)
    task = build_task(task_name, **options)
    start = time.perf_counter()
    model, train = trained_model(args.family, task, plan, args.seed, device)
    evals = {str(n): evaluate(model, task, plan, n, args.seed, device) for n in plan.eval_lengths}
    for n, result in evals.items():
        print(f"length {n}: {describe(result)}")
    write_result(name, {
        "family": args.family, "task": task_name, "plan": plan_record(args, plan, model),
        "final_loss": train["final_loss"], "curve": train["curve"], "wall_s": time.perf_counter() - start,
        "eval": evals}, args.out)


def main() -> None:
    parser = base_parser(__doc__, raw_description=True, device="auto")
    add_model_arguments(parser)
    parser.add_argument("--train-queries", type=int, default=8)
    parser.add_argument("--number-len", type=int, default=4)
    parser.add_argument("--name-len", type=int, default=2)
    parser.add_argument("--n-letters", type=int, default=26)
    parser.add_argument("--n-digits", type=int, default=10, help="the base of the numbers (PhoneBook n_digits)")
    parser.add_argument("--no-colon", action="store_true", help="entries `name number ,` (PhoneBook colon=False)")
    args = parser.parse_args()
    options = {**get_compare_preset("standard").tasks["phonebook"].options, "train_queries": args.train_queries,
               "number_len": args.number_len, "name_len": args.name_len, "n_letters": args.n_letters,
               "colon": not args.no_colon, "n_digits": args.n_digits}
    run_and_record("phonebook_digits", args, "phonebook", options, digit_accuracy,
                   lambda r: f"digits {r['digits']}, whole numbers {r['numbers']:.3f}")


if __name__ == "__main__":
    main()
