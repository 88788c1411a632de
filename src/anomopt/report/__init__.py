"""A self-contained HTML report (matplotlib figures inlined as PNG) of an optimization run."""

from anomopt.report.html import ReportVariant, write_report

__all__ = ["ReportVariant", "write_report"]
