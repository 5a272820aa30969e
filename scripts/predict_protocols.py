"""The score of `fewshot predict`'s answers on the fixed, seeded test tasks `fewshot eval` draws:
each task's support set adapted as `Learner.adapt` does, its query set given in one call to
`Adapted.outputs`, by default each query on its own (predict's protocol), with --transductive
all the queries of a task together (fewshot eval's protocol, and its figure).

    python scripts/predict_protocols.py RUN_DIR_OR_CHECKPOINT [--tasks 600] [--transductive]

Prints {"mean", "ci95", "tasks", "transductive"}. (Until issue 19 this was
fewshot.predict.evaluate_predict, which only this measurement and a test called.)
"""
import argparse
import json

import fewshot
from fewshot import data
from fewshot.config import eval_query, eval_ways
from fewshot.evaluate import confidence


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target")
    parser.add_argument("--tasks", type=int, default=None, help="test tasks (default: the run's eval_tasks)")
    parser.add_argument("--transductive", action="store_true")
    args = parser.parse_args(argv)
    learner = fewshot.load(args.target)
    config = learner.config
    dataset, refs = data.load(config, progress=False)
    sampler = data.sampler(config, dataset, refs, "test", config.eval_seed, query=eval_query(config),
                           ways=eval_ways(config))
    count = config.eval_tasks if args.tasks is None else args.tasks
    scores = []
    for index in range(count):
        task = sampler.batch(index, 1)[0]
        adapted = learner.adapt(task.support_x, task.support_y)
        scores.append(learner.algorithm.family.metric(adapted.outputs(task.query_x, args.transductive), task.query_y))
    mean, ci95 = confidence(scores)
    print(json.dumps({"mean": mean, "ci95": ci95, "tasks": count, "transductive": args.transductive}))


if __name__ == "__main__":
    main()
