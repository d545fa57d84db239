"""Blend the shards of several sources by weight into the training mixture (GPT-3 Table 2.2).

    python data_tools/build_mixture.py data/mixtures/gpt3.yaml

Checks that every shard exists and is whole, counts tokens per source, builds the blended sample
index (cached under a hash of the spec and the shards, reused while neither changes) and prints
the report: tokens, weight, samples and epochs per source. Exit status 2 on a bad spec.
"""
import argparse
import json
import sys

from megagpt.config import ConfigError
from megagpt.data import mixture


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("spec", help="mixture spec (YAML)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    try:
        spec = mixture.load_spec(args.spec)
        report = mixture.build(spec)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else mixture.format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
