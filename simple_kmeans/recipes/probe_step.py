"""The probe of every layer of a checkpoint as a resumable step: ``probe.json`` is redone only
for another checkpoint, manifest, speaker file, phone reference or K."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional

from fairseq_ext.base.steps import Runner, Unit, file_digest, file_fingerprint


def probe_report(tsv: str, ckpt: str, spk_file: str, phones: Optional[str], n_clusters: int,
                 json_path: str) -> Dict:
    """Probe every layer of ``ckpt`` on the manifest ``tsv``; prints the report and writes ``json_path``."""
    from fairseq_ext.probe import report_text, run_probe_report

    report = run_probe_report(tsv, ckpt, layers="all", spk_file=spk_file, phones=phones, n_clusters=n_clusters,
                              json_path=json_path)
    print(report_text(report), flush=True)
    return report


def probe_step(runner: Runner, ckpt: Path, tsv: Path, spk_file: Path, phones: Optional[Path], json_path: Path,
               n_clusters: int = 50) -> Dict:
    """Step ``probe``: :func:`probe_report` unless ``json_path`` already belongs to these inputs; when
    skipped, the table is printed again from ``json_path``. Returns the JSON report."""
    from fairseq_ext.probe import format_table

    inputs = {"ckpt": file_fingerprint(ckpt), "tsv": file_digest(tsv), "spk": file_digest(spk_file),
              "phones": file_digest(phones) if phones else None}
    kw = {"tsv": str(tsv), "ckpt": str(ckpt), "spk_file": str(spk_file), "phones": str(phones) if phones else None,
          "n_clusters": n_clusters, "json_path": str(json_path)}
    runner.run([Unit("probe", probe_report, kw, [json_path], inputs)])
    report = json.loads(Path(json_path).read_text())
    if "probe" not in runner.ran:
        print(format_table({int(k): v for k, v in report["layers"].items()}))
    return report
