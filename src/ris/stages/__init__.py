"""Thin DVC entry points: each reads params.yaml, calls the library, writes its outputs.

dvc.yaml runs them as ``python -m ris.stages.NAME`` (``ris stage NAME`` is the same for people).
"""

STAGES = ("download", "split", "extract", "pca_sweep", "reduce", "index", "evaluate", "report", "finetune",
          "finetune_report")
