"""Human-readable summary of a GLDv2 preparation.

The summary is the dict :func:`lmr_jax.datasets.gldv2.prepare.prepare` returns and writes to
``report.json``.
"""

from __future__ import annotations


def format_summary(summary: dict) -> str:
    """Human-readable table of a preparation summary."""
    lines = [f"GLDv2 at {summary['root']} -> {summary['out']}",
             f"{'list':<8}{'images':>12}{'labels':>10}{'noisy':>12}{'non-lmk':>9}{'no-country':>12}"
             f"{'lost (bad)':>12}"]
    for name, s in summary["lists"].items():
        lines.append(f"{name:<8}{s['images']:>12,}{s['labels']:>10,}{s['noisy']:>12,}"
                     f"{s['non_landmark']:>9,}{s['no_country']:>12,}"
                     f"{summary['losses'][name]['lost']:>12,}")
    v = summary["validation"]
    lines.append(f"validation: {v['queries']:,} queries, {v['index']:,} index images, "
                 f"{v['gt_pairs']:,} ground-truth pairs")
    n = summary["notes"]
    lines.append(f"countries from {summary['countries']}: {n['labels_without_country']:,} of "
                 f"{summary['lists']['full']['num_classes']:,} landmarks without country")
    lines.append("notes: " + ", ".join(f"{k} {v:,}" for k, v in n.items()
                                       if k != "labels_without_country"))
    st = summary["store"]
    reasons = ", ".join(f"{k} {v}" for k, v in summary["bad_by_reason"].items()) or "none"
    lines.append(f"store: {st['images']:,} images in shards of {st['shard_size']:,} "
                 f"({st['shards_written']} written now, {st['shards_skipped']} already done); "
                 f"{st['reencoded']:,} re-encoded; bad images {st['bad']:,} ({reasons})")
    sec = summary["seconds"]
    lines.append(f"time: lists {sec['lists']:.1f} s, store {sec['store']:.1f} s "
                 f"({sec['images_per_second']:,.0f} images/s this run)")
    return "\n".join(lines)
