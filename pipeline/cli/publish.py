"""``filterlens publish``: the dataset as a Hugging Face Hub dataset repo (incremental, resumable, card last)."""

from __future__ import annotations

import argparse
import json
import sys

HELP = """\
Publish the committed models of a filter dataset to a Hugging Face Hub dataset
repo, readable with datasets.load_dataset("ORG/NAME", "models"|"layers"|"filters"),
DuckDB and Polars (hf://datasets/ORG/NAME/...), and filterlens itself.

The repo is created if needed. Only new or changed files are sent, in commits of
at most 100 files; files of models removed from the dataset are deleted; the
dataset card (README.md) and the models table go in the last commit, so an
interrupted upload is never presented as complete. Rerun the same command to
resume. The token comes from --token, HF_TOKEN or `hf auth login`; HF_ENDPOINT
selects another hub.

  filterlens publish dataset/ --repo my-lab/robust-filters
  filterlens publish dataset/ --repo my-lab/robust-filters --revision v2 --message "Add ImageNet models"
  filterlens publish dataset/ --repo my-lab/robust-filters --stage-only staged/   # inspect, no upload
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("publish", help="publish the dataset to a Hugging Face Hub dataset repo",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help="dataset root (directory or URI)")
    p.add_argument("--repo", required=True, metavar="ORG/NAME", help="the Hub dataset repo (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo as private (an existing repo keeps "
                                                          "its visibility)")
    p.add_argument("--revision", metavar="BRANCH", help="branch to publish to (created from main if missing)")
    p.add_argument("--token", help="Hub token with write access (default: HF_TOKEN, then the saved login)")
    p.add_argument("--message", help="commit message (default: 'Publish filterlens dataset version N (M models)')")
    p.add_argument("--license", metavar="ID", help="licence id for the card's YAML (e.g. cc-by-4.0); default: "
                                                   "derived from the models' known licences")
    p.add_argument("--stage-only", metavar="DIR", help="only write the tree that would be uploaded into DIR "
                                                       "(new or empty); no token or network needed")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.publish.stage import stage
    from pipeline.publish.sync import check_repo_id, publish

    if args.stage_only:
        check_repo_id(args.repo)
        tree = stage(args.dataset, args.stage_only, args.repo, revision=args.revision, license=args.license)
        summary = {"staged": tree.root, "models": tree.n_models, "rows": tree.rows, "files": len(tree.files),
                   "bytes": tree.bytes, "rechunked": tree.rechunked, "snapshot": tree.snapshot}
        if args.json:
            print(json.dumps(summary, indent=2))
        else:
            print(f"staged {len(tree.files)} files ({tree.bytes / 1e6:.1f} MB) for {args.repo} in {tree.root}: "
                  f"{tree.n_models} models, {tree.rows['layers']} layers, {tree.rows['filters']} filters"
                  + (f"; re-chunked {len(tree.rechunked)} models" if tree.rechunked else ""))
        return 0
    result = publish(args.dataset, args.repo, token=args.token, revision=args.revision, private=args.private,
                     message=args.message, license=args.license, progress=sys.stderr.isatty())
    summary = {"repo": result.repo_id, "revision": result.revision, "url": result.url,
               "commits": result.commits, "uploaded": len(result.uploaded), "uploaded_bytes": result.uploaded_bytes,
               "unchanged": result.unchanged, "deleted": len(result.deleted), "snapshot": result.staged.snapshot,
               "up_to_date": result.up_to_date}
    if args.json:
        print(json.dumps(summary, indent=2))
    elif result.up_to_date:
        print(f"{result.url} is up to date ({result.unchanged} files, snapshot {result.staged.snapshot[:12]})")
    else:
        print(f"published {len(result.uploaded)} files ({result.uploaded_bytes / 1e6:.1f} MB) in "
              f"{len(result.commits)} commits to {result.url}; {result.unchanged} unchanged, "
              f"{len(result.deleted)} deleted")
    return 0
