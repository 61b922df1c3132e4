"""Shared helpers of the label pipeline: one import point for the scripts of ``simple_kmeans``.

Every script goes through these helpers so that the on-disk contract (fairseq's
``{split}_{rank}_{nshard}.npy/.len/.km`` layout), the error messages and the "write to a
temporary name, rename when complete" rule live in one place. They are defined, one concept per
module, in:

- :mod:`simple_kmeans.cli`: ``PipelineError``, logging, ``run_cli``, progress bars;
- :mod:`simple_kmeans.shards`: shard ranges, NSHARD/RANK from the environment, shard file names,
  reading feature shards;
- :mod:`simple_kmeans.manifest_io`: manifests and audio reading;
- :mod:`simple_kmeans.atomic`: atomic outputs, ``NpyStreamWriter``, temporary-file cleanup;
- :mod:`simple_kmeans.skip_bad`: ``--skip-bad`` reports and the kept-files manifest.

This module re-exports all of them (``from simple_kmeans.common import ...`` keeps working).
"""

from __future__ import annotations

from simple_kmeans.cli import (  # noqa: F401
    LOG_FORMAT, PipelineError, setup_logging, run_cli, progress,
)
from simple_kmeans.shards import (  # noqa: F401
    shard_range, SHARD_ENV, FROM_ENV, ShardArg, shard_arg, _from_env, _env_int, resolve_shard, shard_stem,
    feat_paths, label_path, read_lengths, load_feat_shard,
)
from simple_kmeans.manifest_io import (  # noqa: F401
    ManifestEntry, Manifest, read_manifest, manifest_path, read_audio,
)
from simple_kmeans.atomic import (  # noqa: F401
    _WRITE_HINTS, WRITE_ERRNOS, output_error, make_dirs, atomic_output, atomic_tmp_path, temp_files,
    remove_dead_temp_files, begin_shard, check_writable_dir, NpyStreamWriter,
)
from simple_kmeans.skip_bad import (  # noqa: F401
    SKIPPED_HEADER, skipped_path, BadAudio, read_skipped, read_skipped_lines, kept_entries, count_skipped,
    write_kept_manifest,
)
