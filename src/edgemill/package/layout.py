"""Where things live inside a package (the directory and the `.emp` tar share one layout)."""

from __future__ import annotations

FORMAT = "edgemill.package/1"
SUFFIX = ".emp"
MANIFEST = "manifest.json"
REPORT = "report.json"
PARTITION = "partition.json"
BASELINE = "monitoring/baseline.json"  # the drift baseline (compiler/baseline.py), listed and signed
MODEL_DIR = "model"
PIPELINE_DIR = "pipeline"  # pre- and post-processing graphs (edgemill.pipeline), run around the model
SIGNATURE_DIR = "signature"
SIGNATURE = "signature/model.sig"

# Files the manifest cannot list by hash: the manifest itself (it would hash itself), the compile
# report (it holds measured timings, which differ between two otherwise identical compiles and would
# change the package id) and the signature (made after the manifest). The signature covers all three.
UNLISTED = frozenset({MANIFEST, REPORT, SIGNATURE})
