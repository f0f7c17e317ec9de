"""The visual report of a pruned model folder: ``report.html``, ``report.md`` and their plots."""

from optimum_blockprune.output.report.build import ReportFiles, build_report

__all__ = ["ReportFiles", "build_report"]
