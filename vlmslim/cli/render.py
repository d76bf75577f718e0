"""Human-readable renderings of library results (the CLI prints these; the library returns dicts)."""

from __future__ import annotations


def table(rows: list[list], header: list[str], left: int = 1) -> str:
    """Plain-text columns: the first `left` left-aligned (names), the rest right-aligned (numbers)."""
    cells = [[str(c) for c in r] for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join(line.rstrip() for line in [fmt(cells[0]), "  ".join("-" * w for w in widths), *map(fmt, cells[1:])])


def describe_text(info: dict) -> str:
    out = [f"{info['source']}  ({info['architecture']}, model_type {info['model_type']})"]
    if info["bytes_on_disk"] is not None:
        out.append(f"on disk: {info['bytes_on_disk'] / 1e6:,.1f} MB")
    if info["quantization_config"]:
        q = info["quantization_config"]
        q = q if isinstance(q, dict) else q.to_dict()
        out.append(f"quantization: {q.get('quant_method')} "
                   f"{'4-bit ' + str(q.get('bnb_4bit_quant_type')) if q.get('load_in_4bit') else '8-bit'}")
    for part, shape in info["shapes"].items():
        if part == "language_layers":
            out += [f"  layer {i}: " + ", ".join(f"{k}={v}" for k, v in layer.items()) for i, layer in enumerate(shape)]
        else:
            out.append(f"{part}: " + ", ".join(f"{k}={v}" for k, v in shape.items()))
    c = info["census"]
    rows = [[comp, f"{v['params']:,}", f"{v['bytes'] / 1e6:,.2f}",
             ", ".join(f"{k}:{n}" for k, n in sorted(v["linear"].items())) or "-"]
            for comp, v in c["components"].items()]
    rows.append(["total", f"{c['total_params']:,}", f"{c['total_bytes'] / 1e6:,.2f}", ""])
    out += ["", table(rows, ["component", "params", "MB", "Linear layers"])]
    if c.get("tied"):
        out.append("tied: " + "; ".join(" = ".join(t) for t in c["tied"]))
    m = info["manifest"]
    if m:
        out += ["", f"vlmslim manifest: base {m['base']['model']}, created {m.get('created')}, "
                    f"stock-loadable {m.get('stock_loadable', True)}"]
        for i, step in enumerate(m.get("steps") or [], 1):
            out.append(f"  step {i}: {step.get('kind')} {step.get('method', '')} {step.get('params', {})}")
    return "\n".join(out)


def _pct(kept: int, before: int) -> str:
    return f"{1 - kept / before:.1%}" if before else "-"


def plan_text(report: dict) -> str:
    """`vlmslim prune --plan-only`: the per-layer plan, then parameters and bytes before/after."""
    plan = report["plan"]
    glu, heads = plan["glu"], plan["heads"]
    cap = f", max layer ratio {plan['max_layer_ratio']:g}" if plan["max_layer_ratio"] is not None else ""
    out = [f"plan: allocation {plan['allocation']}{cap}"]
    header, rows = ["layer"], []
    if glu:
        header += ["GLU kept", "removed"]
    if heads:
        header += ["heads q/kv", "removed"]
    for part in (glu, heads):
        if part and part.get("layer_scores") is not None:
            header.append(("GLU " if part is glu else "heads ") + part["layer_score"])
    for i, layer in enumerate(plan["layers"]):
        row = [layer["layer"]]
        if glu:
            row += [f"{layer['intermediate_size']}/{layer['intermediate_before']}",
                    _pct(layer["intermediate_size"], layer["intermediate_before"])]
        if heads:
            row += [f"{layer['num_attention_heads']}/{layer['num_key_value_heads']} of "
                    f"{layer['heads_before']}/{layer['kv_heads_before']}",
                    _pct(layer["num_attention_heads"], layer["heads_before"])]
        for part in (glu, heads):
            if part and part.get("layer_scores") is not None:
                row.append(f"{part['layer_scores'][i]:.4g}")
        rows.append(row)
    if glu or heads:
        out.append(table(rows, header))
    units = {"kv_group": "attention KV groups", "query_head_per_group": "attention query heads per group"}
    for name, part in (("GLU neurons", glu), (units.get((heads or {}).get("unit")), heads)):
        if part:
            out.append(f"{name}: keep {part['kept_total']:,} of {part['total']:,} "
                       f"({_pct(part['kept_total'], part['total'])} removed; budget {part['budget']:,})")
    if report.get("dropped_layers"):
        out.append(f"dropped decoder layers: {report['dropped_layers']}")
    if report.get("vision_layers_removed"):
        out.append(f"removed vision layers: {report['vision_layers_removed']}")
    before, after = report["before"], report["after"]
    rows = [[comp, f"{before[comp]['params']:,}", f"{after[comp]['params']:,}",
             _pct(after[comp]["params"], before[comp]["params"]), f"{after[comp]['bytes'] / 1e6:,.2f}"]
            for comp in before]
    total = lambda d, k: sum(v[k] for v in d.values())  # noqa: E731
    rows.append(["total", f"{total(before, 'params'):,}", f"{total(after, 'params'):,}",
                 _pct(total(after, "params"), total(before, "params")), f"{total(after, 'bytes') / 1e6:,.2f}"])
    out += ["", table(rows, ["component", "params before", "params after", "removed", f"MB after ({report['dtype']})"]),
            f"bytes: {total(before, 'bytes') / 1e6:,.2f} MB -> {total(after, 'bytes') / 1e6:,.2f} MB "
            f"({report['dtype']}); nothing was written"]
    return "\n".join(out)


def sweep_plan_text(plan) -> str:
    """`vlmslim sweep --dry-run`: one line per step with its artifact and status (done / will run / ...)."""
    rows = plan.rows()
    counts: dict[str, int] = {}
    for row in rows:
        status = row[3].split(" (")[0]
        counts[status] = counts.get(status, 0) + 1
    head = (f"{plan.recipe.name}: {len(rows)} steps -> {plan.out} on {plan.device}: "
            + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return head + "\n" + table(rows, ["step", "what", "artifact", "status"], left=4)
