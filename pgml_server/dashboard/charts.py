"""Charts drawn on the server as SVG: no JavaScript, no vendored library, nothing from a CDN.

Every function returns `Markup` (safe to put in a template) built only from numbers formatted
here and text passed through `escape`, so a label taken from the database cannot inject markup.
Colours are presentation attributes, not `style=`, so the strict CSP (no inline style) holds.
"""
from __future__ import annotations

import math
from typing import Sequence

from markupsafe import Markup, escape

W, H = 640, 300
PAD_L, PAD_R, PAD_T, PAD_B = 56, 16, 16, 40
ACCENT, MUTED, MARK = "#2563eb", "#94a3b8", "#dc2626"


def _fmt(v: float) -> str:
    if v == 0 or not math.isfinite(v):
        return "0"
    if abs(v) >= 1000 or abs(v) < 0.01:
        return f"{v:.3g}"
    return f"{v:.3f}".rstrip("0").rstrip(".")


def _range(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    pad = (hi - lo) * 0.05
    return lo - pad, hi + pad


class _Frame:
    """Maps data coordinates into the plot area and draws axes with a few ticks."""

    def __init__(self, xr, yr, w=W, h=H):
        self.xr, self.yr, self.w, self.h = xr, yr, w, h

    def x(self, v: float) -> float:
        lo, hi = self.xr
        return PAD_L + (v - lo) / (hi - lo) * (self.w - PAD_L - PAD_R)

    def y(self, v: float) -> float:
        lo, hi = self.yr
        return self.h - PAD_B - (v - lo) / (hi - lo) * (self.h - PAD_T - PAD_B)

    def axes(self, x_label: str, y_label: str, x_ticks: bool = True) -> list[str]:
        out = [f'<line x1="{PAD_L}" y1="{self.h - PAD_B}" x2="{self.w - PAD_R}" y2="{self.h - PAD_B}" '
               f'stroke="{MUTED}"/>',
               f'<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{self.h - PAD_B}" stroke="{MUTED}"/>']
        for i in range(5):
            v = self.yr[0] + (self.yr[1] - self.yr[0]) * i / 4
            out.append(f'<text x="{PAD_L - 6}" y="{self.y(v) + 4:.1f}" text-anchor="end" font-size="11" '
                       f'fill="#475569">{_fmt(v)}</text>')
            if x_ticks:
                xv = self.xr[0] + (self.xr[1] - self.xr[0]) * i / 4
                out.append(f'<text x="{self.x(xv):.1f}" y="{self.h - PAD_B + 16}" text-anchor="middle" '
                           f'font-size="11" fill="#475569">{_fmt(xv)}</text>')
        out.append(f'<text x="{(self.w + PAD_L) / 2:.0f}" y="{self.h - 6}" text-anchor="middle" font-size="12" '
                   f'fill="#334155">{escape(x_label)}</text>')
        out.append(f'<text x="14" y="{(self.h - PAD_B) / 2:.0f}" text-anchor="middle" font-size="12" '
                   f'fill="#334155" transform="rotate(-90 14 {(self.h - PAD_B) / 2:.0f})">{escape(y_label)}</text>')
        return out


def _svg(parts: list[str], title: str, kind: str, w: int = W, h: int = H) -> Markup:
    return Markup(f'<svg class="chart" data-chart="{escape(kind)}" viewBox="0 0 {w} {h}" width="{w}" height="{h}" '
                  f'role="img" aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">'
                  f'<title>{escape(title)}</title>' + "".join(parts) + "</svg>")


def metric_over_models(points: Sequence[tuple[int, float | None, bool]], metric: str) -> Markup:
    """Key metric of each model in training order (x = model number); the deployed one marked."""
    pts = [(i, mid, v, dep) for i, (mid, v, dep) in enumerate(points) if v is not None and math.isfinite(v)]
    if not pts:
        return Markup('<p class="muted">No scored models yet.</p>')
    f = _Frame((-0.5, max(len(points) - 0.5, 0.5)), _range([p[2] for p in pts]))
    parts = f.axes("models in training order", metric, x_ticks=False)
    path = " ".join(f"{'M' if k == 0 else 'L'}{f.x(i):.1f},{f.y(v):.1f}" for k, (i, _, v, _) in enumerate(pts))
    parts.append(f'<path d="{path}" fill="none" stroke="{ACCENT}" stroke-width="1.5"/>')
    dense = len(pts) > 200
    for i, mid, v, dep in pts:
        if dep:
            continue
        if not dense:
            parts.append(f'<circle cx="{f.x(i):.1f}" cy="{f.y(v):.1f}" r="3" fill="{ACCENT}">'
                         f'<title>model {int(mid)}: {_fmt(v)}</title></circle>')
    for i, mid, v, dep in pts:
        if dep:
            parts.append(f'<circle class="deployed" cx="{f.x(i):.1f}" cy="{f.y(v):.1f}" r="6" fill="{MARK}">'
                         f'<title>model {int(mid)} (deployed): {_fmt(v)}</title></circle>'
                         f'<text x="{f.x(i) + 8:.1f}" y="{f.y(v) - 8:.1f}" font-size="11" fill="{MARK}">deployed</text>')
    return _svg(parts, f"{metric} over models", "metric")


def scatter(xs: Sequence[float], ys: Sequence[float], x_label: str, y_label: str, *, diagonal: bool = False,
            zero_line: bool = False, kind: str = "scatter") -> Markup:
    if not xs:
        return Markup('<p class="muted">No points.</p>')
    xr = _range(list(xs) + (list(ys) if diagonal else []))
    yr = xr if diagonal else _range(list(ys) + ([0.0] if zero_line else []))
    f = _Frame(xr, yr)
    parts = f.axes(x_label, y_label)
    if diagonal:
        parts.append(f'<line x1="{f.x(xr[0]):.1f}" y1="{f.y(xr[0]):.1f}" x2="{f.x(xr[1]):.1f}" '
                     f'y2="{f.y(xr[1]):.1f}" stroke="{MUTED}" stroke-dasharray="4 3"/>')
    if zero_line:
        parts.append(f'<line x1="{PAD_L}" y1="{f.y(0):.1f}" x2="{W - PAD_R}" y2="{f.y(0):.1f}" stroke="{MUTED}" '
                     'stroke-dasharray="4 3"/>')
    for x, y in zip(xs, ys):
        parts.append(f'<circle cx="{f.x(x):.1f}" cy="{f.y(y):.1f}" r="2.5" fill="{ACCENT}" fill-opacity="0.6"/>')
    return _svg(parts, f"{y_label} vs {x_label}", kind)


def bars(labels: Sequence[str], values: Sequence[float], title: str, kind: str = "bars") -> Markup:
    """Horizontal bars, one per label (feature importance, top categories)."""
    if not labels:
        return Markup('<p class="muted">No values.</p>')
    row, left = 20, 160
    h = PAD_T + row * len(labels) + 24
    top = max((abs(v) for v in values), default=1.0) or 1.0
    parts = []
    for k, (label, v) in enumerate(zip(labels, values)):
        y = PAD_T + k * row
        width = abs(v) / top * (W - left - 70)
        text = str(label)
        parts.append(f'<text x="{left - 6}" y="{y + 14}" text-anchor="end" font-size="12" fill="#334155">'
                     f'{escape(text if len(text) <= 24 else text[:23] + "…")}</text>'
                     f'<rect x="{left}" y="{y + 3}" width="{width:.1f}" height="{row - 6}" fill="{ACCENT}"/>'
                     f'<text x="{left + width + 4:.1f}" y="{y + 14}" font-size="11" fill="#475569">{_fmt(v)}</text>')
    return _svg(parts, title, kind, W, h)


def histogram(edges: Sequence[float], counts: Sequence[float], x_label: str, *, density: bool = False) -> Markup:
    """Vertical bars over [edges[i], edges[i+1]); with `density`, heights are count / width (pg_stats bounds)."""
    if len(edges) < 2 or not counts:
        return Markup('<p class="muted">No histogram.</p>')
    heights = []
    for i, c in enumerate(counts):
        width = edges[i + 1] - edges[i]
        heights.append(c / width if density and width > 0 else float(c))
    w, h = 320, 140
    f = _Frame((edges[0], edges[-1]) if edges[-1] > edges[0] else (edges[0] - 0.5, edges[0] + 0.5),
               (0.0, max(heights) or 1.0), w, h)
    parts = [f'<line x1="{PAD_L}" y1="{h - PAD_B}" x2="{w - PAD_R}" y2="{h - PAD_B}" stroke="{MUTED}"/>',
             f'<text x="{PAD_L}" y="{h - PAD_B + 16}" font-size="10" fill="#475569">{_fmt(edges[0])}</text>',
             f'<text x="{w - PAD_R}" y="{h - PAD_B + 16}" font-size="10" text-anchor="end" fill="#475569">'
             f'{_fmt(edges[-1])}</text>',
             f'<text x="{(w + PAD_L) / 2:.0f}" y="{h - 6}" text-anchor="middle" font-size="11" fill="#334155">'
             f'{escape(x_label)}</text>']
    for i, v in enumerate(heights):
        x0, x1 = f.x(edges[i]), f.x(edges[i + 1])
        parts.append(f'<rect x="{x0:.1f}" y="{f.y(v):.1f}" width="{max(x1 - x0 - 1, 1):.1f}" '
                     f'height="{max(f.y(0) - f.y(v), 0):.1f}" fill="{ACCENT}"><title>{_fmt(edges[i])} – '
                     f'{_fmt(edges[i + 1])}: {_fmt(counts[i])}</title></rect>')
    return _svg(parts, f"histogram of {x_label}", "histogram", w, h)


def confusion_matrix(labels: Sequence[str], matrix: Sequence[Sequence[int]]) -> Markup:
    n = len(labels)
    if not n:
        return Markup('<p class="muted">No predictions.</p>')
    cell, left, top = min(60, 360 // n), 110, 40
    w, h = left + cell * n + 20, top + cell * n + 40
    peak = max((max(r) for r in matrix), default=1) or 1
    parts = [f'<text x="{left + cell * n / 2:.0f}" y="14" text-anchor="middle" font-size="12" fill="#334155">'
             'predicted</text>',
             f'<text x="12" y="{top + cell * n / 2:.0f}" font-size="12" fill="#334155" '
             f'transform="rotate(-90 12 {top + cell * n / 2:.0f})" text-anchor="middle">actual</text>']
    for j, label in enumerate(labels):
        parts.append(f'<text x="{left + j * cell + cell / 2:.0f}" y="{top - 6}" text-anchor="middle" font-size="11" '
                     f'fill="#475569">{escape(str(label)[:10])}</text>')
        parts.append(f'<text x="{left - 6}" y="{top + j * cell + cell / 2 + 4:.0f}" text-anchor="end" font-size="11" '
                     f'fill="#475569">{escape(str(label)[:14])}</text>')
    for i, r in enumerate(matrix):
        for j, v in enumerate(r):
            shade = 0.08 + 0.92 * v / peak
            parts.append(f'<rect x="{left + j * cell}" y="{top + i * cell}" width="{cell - 2}" height="{cell - 2}" '
                         f'fill="{ACCENT}" fill-opacity="{shade:.2f}"/>'
                         f'<text x="{left + j * cell + cell / 2 - 1:.0f}" y="{top + i * cell + cell / 2 + 4:.0f}" '
                         f'text-anchor="middle" font-size="12" fill="{"#fff" if shade > 0.5 else "#0f172a"}">'
                         f'{int(v)}</text>')
    return _svg(parts, "confusion matrix", "confusion", w, h)


def roc_curve(fpr: Sequence[float], tpr: Sequence[float], auc: float | None) -> Markup:
    f = _Frame((0.0, 1.0), (0.0, 1.0), 360, 320)
    parts = f.axes("false positive rate", "true positive rate")
    parts.append(f'<line x1="{f.x(0):.1f}" y1="{f.y(0):.1f}" x2="{f.x(1):.1f}" y2="{f.y(1):.1f}" stroke="{MUTED}" '
                 'stroke-dasharray="4 3"/>')
    path = " ".join(f"{'M' if k == 0 else 'L'}{f.x(x):.1f},{f.y(y):.1f}" for k, (x, y) in enumerate(zip(fpr, tpr)))
    parts.append(f'<path d="{path}" fill="none" stroke="{ACCENT}" stroke-width="2"/>')
    if auc is not None:
        parts.append(f'<text x="{f.x(0.55):.0f}" y="{f.y(0.1):.0f}" font-size="12" fill="#334155">AUC {_fmt(auc)}</text>')
    return _svg(parts, "ROC curve", "roc", 360, 320)


def roc_points(y_true: Sequence[int], scores: Sequence[float]) -> tuple[list[float], list[float], float | None]:
    """(fpr, tpr, auc) of binary labels against scores of the positive class."""
    pairs = sorted(zip(scores, y_true), key=lambda p: -p[0])
    pos = sum(1 for _, y in pairs if y)
    neg = len(pairs) - pos
    if not pos or not neg:
        return [0.0, 1.0], [0.0, 1.0], None
    fpr, tpr, tp, fp, k = [0.0], [0.0], 0, 0, 0
    while k < len(pairs):
        score = pairs[k][0]
        while k < len(pairs) and pairs[k][0] == score:
            tp += bool(pairs[k][1])
            fp += not pairs[k][1]
            k += 1
        fpr.append(fp / neg)
        tpr.append(tp / pos)
    auc = sum((fpr[i] - fpr[i - 1]) * (tpr[i] + tpr[i - 1]) / 2 for i in range(1, len(fpr)))
    return fpr, tpr, auc
