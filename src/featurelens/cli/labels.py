"""``featurelens labels process`` and ``featurelens report``: crowd labels → explanations → HTML.

    featurelens labels process --bundle B --labels labels.csv [--model NAME] [--group-by guessed|true]
                               [--legacy] --out DIR
    featurelens report --bundle B --labels DIR --out report/

Both work from the bundle and the game's export alone (the CNN is never loaded); ``labels process``
loads the Sentence-BERT model (offline) to embed the label texts.
"""

from __future__ import annotations

import argparse
import sys

from featurelens.labels.pipeline import CHOICES, LabelParams
from featurelens.labels.stopwords import STOP_LISTS


def _process(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from featurelens.labels.io import read_labels
    from featurelens.labels.pipeline import process_labels
    from featurelens.labels.score import ScoreParams
    from featurelens.labels.stopwords import stop_word_list
    from featurelens.network.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    records = read_labels(args.labels)
    base = LabelParams.legacy() if args.legacy else LabelParams()
    chosen = {k: getattr(args, k) for k in CHOICES if getattr(args, k) is not None}
    stop = stop_word_list(args.stop_words) if args.stop_words else base.group.stop_words
    params = replace(
        base,
        score=ScoreParams(step_penalty=args.step_penalty, wrong_divisor=args.wrong_divisor),
        group=replace(
            base.group,
            single_group_distance=args.single_group_distance,
            context_weight=args.context_weight,
            stop_words=stop,
        ),
        fix_typos=not args.no_typo_fix,
        top_labels_global=args.top,
        **chosen,
    )
    print(
        f"processing {len(records)} label row(s) against {len(bundle.images)} image(s) ...", file=sys.stderr
    )
    processed = process_labels(bundle, records, model=args.model, params=params)
    paths = processed.save(args.out)
    c = processed.counts
    print(
        f"{c['kept']} of {c['rows']} label(s) used ({c['empty']} empty, {c['unknown_image']} unknown image, "
        f"{c['unknown_cluster']} unknown cluster); {c['groups']} group(s) in {c['classes']} class(es)"
    )
    for problem in processed.problems:
        print(f"note: {problem}", file=sys.stderr)
    for p in paths:
        print(p)
    return 0


def _report(args: argparse.Namespace) -> int:
    from featurelens.labels.pipeline import load_processed
    from featurelens.labels.report import write_report
    from featurelens.network.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    processed = load_processed(args.labels)
    page = write_report(bundle, processed, args.out, title=args.title)
    print(page)
    return 0


_CHOICE_HELP = {
    "group_by": "group labels per guessed class (give-ups under the true class) or per true class",
    "merge": "how clusters merge in local explanations",
    "merged_score": "score of a merged cluster (weighted-mean: Σ w·s / Σ w)",
    "global_from": "global labels from the best labels of merged clusters or from all labels",
    "trend": "trend rule",
    "typo_scope": "fix typos against the labels of the image's class or of the grouping class",
}


def register(sub: argparse._SubParsersAction) -> None:
    d = LabelParams()
    labels = sub.add_parser("labels", help="turn crowd labels from the game into explanations")
    lsub = labels.add_subparsers(dest="labels_command", metavar="ACTION")
    p = lsub.add_parser("process", help="normalise, group (Sentence-BERT), name and score a game export")
    p.add_argument("--bundle", required=True, help="explanation bundle folder")
    p.add_argument("--labels", required=True, help="game export (.csv or .jsonl)")
    p.add_argument(
        "--model",
        default=None,
        help="any installed sentence-transformers model: a local folder or a name in the local Hugging Face "
        "cache (default: the offline all-MiniLM-L6-v2; the authors used all-mpnet-base-v2)",
    )
    for name, what in _CHOICE_HELP.items():
        p.add_argument(
            "--" + name.replace("_", "-"), dest=name, choices=CHOICES[name], default=None,
            help=f"{what} (default {CHOICES[name][0]})",
        )
    p.add_argument(
        "--stop-words", dest="stop_words", choices=STOP_LISTS, default=None,
        help="stop-word list (default nltk+positional; sklearn = featurelens before issue 13)",
    )
    p.add_argument(
        "--legacy", action="store_true",
        help="featurelens's aggregation before issue 13 (options given explicitly still win)",
    )
    p.add_argument(
        "--out", required=True, help="output folder for labels.csv, scores.csv, groups.csv, labels.json"
    )
    p.add_argument(
        "--step-penalty",
        type=float,
        default=d.score.step_penalty,
        help="score factor 1 − PENALTY × mean reveal step",
    )
    p.add_argument(
        "--wrong-divisor",
        type=float,
        default=d.score.wrong_divisor,
        help="score divisor when nobody guessed right",
    )
    p.add_argument(
        "--single-group-distance",
        type=float,
        default=d.group.single_group_distance,
        help="cosine distance under which a whole tiny label set is one group",
    )
    p.add_argument(
        "--context-weight",
        type=float,
        default=d.group.context_weight,
        help="λ in [0, 1]: mix co-occurrence on the same cluster maps into the label distance (0 = paper)",
    )
    p.add_argument(
        "--no-typo-fix", action="store_true", help="do not replace likely typos by frequent close words"
    )
    p.add_argument(
        "--top",
        type=int,
        default=d.top_labels_global,
        help="labels per class and layer in global explanations",
    )
    p.set_defaults(func=_process)
    labels.set_defaults(func=lambda a: (labels.print_help(), 2)[1])

    r = sub.add_parser("report", help="HTML report of a bundle with processed labels")
    r.add_argument("--bundle", required=True, help="explanation bundle folder")
    r.add_argument("--labels", required=True, help="folder written by `featurelens labels process`")
    r.add_argument("--out", required=True, help="output folder (index.html + figures/)")
    r.add_argument("--title", default="Labelled network explanations")
    r.set_defaults(func=_report)
