"""The model doctor's text report (eval_ssd.py --analysis_dir writes it as report.txt and logs its head).

The first lines say in words which error kind costs the most AP and where it is, then the rest in
order; the tables follow (best-F1 thresholds, AP by size and aspect, the confusion matrix, the worst
images). Input: metrics/analysis.analyze's numbers.
"""

from metrics import tide

# "<words> cost X AP50": what fixing the kind alone would give.
KIND_PHRASES = {
    tide.CLS: "classification errors (right place, wrong class)",
    tide.LOC: "localization errors (right class, box IoU 0.1-0.5)",
    tide.BOTH: "detections with the wrong class and a poor box",
    tide.DUPE: "duplicate detections (the object was already found)",
    tide.BKG: "detections on background (IoU <= 0.1 with every box)",
    tide.MISS: "missed objects",
}


def _fmt(value, digits=3):
    return "n/a" if value is None else f"{value:.{digits}f}"


def where_phrase(kind, where):
    """Where the errors of `kind` are, in words, e.g. '70 % of them are under 32 px; most in circle (9 of 13)'."""
    w = where[kind]
    if not w["count"]:
        return "none found"
    parts = []
    if kind == tide.MISS and w.get("small_fraction") is not None:
        parts.append(f"{100 * w['small_fraction']:.0f} % of them are under 32 px")
    if kind == tide.CLS and "top_confusion" in w:
        detected, true = w["top_confusion"]
        parts.append(f"most often {true} taken for {detected} ({w['top_confusion_count']} of {w['count']})")
    elif w["top_class"] is not None:
        parts.append(f"most in {w['top_class']} ({w['top_class_count']} of {w['count']})")
    return "; ".join(parts)


def headline(numbers):
    """The first lines: the largest error kind and where it is, the others, and the oracle bounds."""
    t = numbers["tide"]
    largest = t["largest"]
    lines = [f"{KIND_PHRASES[largest][0].upper()}{KIND_PHRASES[largest][1:]} cost {t['dAP'][largest]:.3f} "
             f"AP50 (TIDE AP50 {t['AP50']:.3f}, {t['counts'][largest]} of them); "
             f"{where_phrase(largest, t['where'])}."]
    rest = sorted((k for k in tide.ERROR_KINDS if k != largest), key=lambda k: -t["dAP"][k])
    lines.append("Then: " + ", ".join(f"{KIND_PHRASES[k].split(' (')[0]} {t['dAP'][k]:.3f} "
                                      f"({t['counts'][k]})" for k in rest) + ".")
    lines.append(f"Every false positive removed would add {t['special_dAP']['FalsePos']:.3f} AP50, every "
                 f"object found {t['special_dAP']['FalseNeg']:.3f} (TIDE's FalsePos / FalseNeg).")
    return lines


def report_lines(numbers, class_names, source):
    """The whole report, a list of lines."""
    lines = headline(numbers) + ["", f"Model doctor of {source}", ""]
    lines.append("Where the AP50 goes (TIDE, dAP = AP gained by fixing one kind alone):")
    for kind in tide.ERROR_KINDS:
        t = numbers["tide"]
        lines.append(f"  {kind:<5} {t['dAP'][kind]:.3f}  {t['counts'][kind]:>6}  "
                     f"{where_phrase(kind, t['where'])}")
    width = max(len("all"), *(len(n) for n in class_names))
    for key, iou in (("iou50", "0.5"), ("iou75", "0.75")):
        lines += ["", f"Best F1 at IoU {iou}: class, AP (101-point), best F1, its score threshold, "
                      "precision, recall"]
        entries = {**numbers["pr"][key]["per_class"], "all": numbers["pr"][key]["overall"]}
        for name, e in entries.items():
            lines.append(f"  {name:<{width}} {_fmt(e['AP'])} {_fmt(e['best_f1'])} @ {_fmt(e['best_threshold'])}"
                         f"  P {_fmt(e['precision_at_best'])} R {_fmt(e['recall_at_best'])}"
                         f"  ({e['num_gt']} boxes, {e['num_detections']} detections)")
    for key, title in (("ap_by_size", "AP50 by object size (px area)"), ("ap_by_aspect", "AP50 by aspect (h/w)")):
        buckets = numbers[key]
        lines += ["", f"{title}: " + ", ".join(f"{b} {_fmt(v['AP'])} ({v['num_gt']} boxes)"
                                               for b, v in buckets.items())]
        for name in class_names:
            lines.append(f"  {name:<{width}} " + "  ".join(
                f"{b} {_fmt(v['per_class'][name])}" for b, v in buckets.items()))
    conf = numbers["confusion"]
    labels = conf["labels"]
    cell = max(6, *(len(n) for n in labels))
    lines += ["", f"Confusion matrix at score >= {conf['score_threshold']:g}, IoU >= {conf['iou_threshold']:g} "
                  "(rows: true class, columns: detected; background row: detections on nothing, "
                  "background column: missed)",
              " " * (cell + 2) + "".join(f"{n[:cell]:>{cell + 1}}" for n in labels)]
    for name, row in zip(labels, conf["matrix"]):
        lines.append(f"  {name[:cell]:<{cell}}" + "".join(f"{v:>{cell + 1}d}" for v in row))
    lines += ["", f"Worst images at score >= {conf['score_threshold']:g} (false positives, missed):"]
    lines += [f"  {w['image_id']}: {w['false_positives']}, {w['missed']}" for w in numbers["worst_images"]]
    return lines
