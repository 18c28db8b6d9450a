"""Self-contained HTML pages and figures (see :mod:`featurelens.report.html`)."""

from featurelens.report.html import (
    Raw,
    Section,
    badge,
    data_uri,
    error_box,
    escape,
    figure,
    gallery,
    page,
    table,
)

__all__ = ["Raw", "Section", "badge", "data_uri", "error_box", "escape", "figure", "gallery", "page", "table"]
