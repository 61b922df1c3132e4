#!/usr/bin/env python3
"""Usage: python scripts/run_shards.py NSHARD [--jobs J] [--ranks 0-3,7] [--log-dir DIR] [--fail-fast] -- COMMAND...

Local parallel runner of sharded jobs: the same program as ``fairseq-ext-run-shards``
(simple_kmeans/run_shards.py documents it), runnable from a checkout without installing.

Example: python scripts/run_shards.py 4 -- python -m simple_kmeans.dump_mfcc_feature man/ train env env feat/
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's simple_kmeans

from simple_kmeans.run_shards import cli  # noqa: E402

if __name__ == "__main__":
    cli()
