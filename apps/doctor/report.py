"""The dataset doctor's text report (analyze_dataset.py prints it before its JSON line).

Inputs are what dataset/lint.py and model/anchor_stats.py compute: the annotation table, its statistics
and suspicious findings, the coverage report of the preset's anchors, the boxes only a forced match
trains, and the anchor fit when one was asked for.
"""


def fmt(value, digits=3):
    return "-" if value is None else f"{value:.{digits}f}"


def summary_lines(table, stats, findings, counts, report, config, forced, fit=None, max_listed=50):
    """The doctor's text report, a list of lines: counts per class, suspicious boxes (at most
    `max_listed` per kind), anchor coverage by size and class, the forced-only boxes, the fit."""
    lines = [f"Dataset: {table.source}: {stats['images']} images, {stats['boxes']} boxes "
             f"({stats['difficult']} difficult, {stats['crowd']} crowd), {len(table.class_names)} classes, "
             f"{stats['images_without_boxes']} images without boxes"]
    if table.skipped or table.notes:
        lines.append(f"  {len(table.skipped)} unreadable files skipped, {len(table.notes)} boxes repaired "
                     f"or dropped as the converter would")
        lines += [f"    {where}: {why}" for where, why in table.skipped[:max_listed]]
    bpi = stats["boxes_per_image"]
    lines.append(f"Boxes per image: mean {fmt(bpi['mean'], 2)}, max {bpi['max']}")
    lines.append(f"  {'class':<16}{'images':>8}{'boxes':>8}{'diff.':>7}{'crowd':>7}"
                 f"{'median w x h px':>18}{'median h/w':>12}")
    for name, c in stats["classes"].items():
        w, h, a = c["width_px"], c["height_px"], c["aspect_h_over_w"]
        size = f"{w['p50']:.0f} x {h['p50']:.0f}" if w else "-"
        lines.append(f"  {name:<16}{c['images']:>8}{c['boxes']:>8}{c['difficult']:>7}{c['crowd']:>7}"
                     f"{size:>18}{fmt(a['p50'] if a else None, 2):>12}")
    lines.append("Suspicious: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    shown = {}
    for f in findings:
        shown[f.kind] = shown.get(f.kind, 0) + 1
        if shown[f.kind] <= max_listed:
            lines.append(f"  {f.kind:<15} {f.image_id}  boxes {list(f.boxes)}  {f.detail}")
    lines.append(f"Anchor coverage ({config.name}, {config.num_anchors} anchors, best IoU >= "
                 f"{report['threshold']:g}): {fmt(report['coverage'])} ({report['covered']}/{report['boxes']}), "
                 f"mean best IoU {fmt(report['mean_best_iou'])}")
    lines.append("  by sqrt(area), net px: " + ", ".join(
        f"{n} {fmt(v['coverage'], 2)} ({v['boxes']})" for n, v in report["by_size"].items()))
    lines.append("  by class: " + ", ".join(
        f"{n} {fmt(v['coverage'], 2)}" for n, v in report["by_class"].items()))
    lines.append(f"  forced match only: {report['forced_only']} boxes; lowest best IoU first:")
    lines += [f"    {b['image_id']} box {b['box']} {b['class']} best IoU {b['best_iou']:.3f}" for b in forced]
    if fit:
        lines.append(f"Fitted anchors -> {fit['file']}: coverage {fmt(fit['coverage_before'])} -> "
                     f"{fmt(fit['coverage_after'])}, mean best IoU {fmt(fit['mean_best_iou_before'])} -> "
                     f"{fmt(fit['mean_best_iou_after'])} (all {report['boxes']} boxes)")
        for before, after in zip(config.feature_maps, fit["feature_maps"]):
            lines.append(f"  {before.source:<13} min {before.min_size:g} -> {after['min_size']:g}, max "
                         f"{before.max_size:g} -> {after['max_size']:g}, ratios "
                         f"{list(before.aspect_ratios)} -> {after['aspect_ratios']}")
    return lines
