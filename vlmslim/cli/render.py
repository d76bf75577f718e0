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


def plan_text(plan) -> str:
    """`vlmslim sweep --dry-run`: one line per step with its artifact and status (done / will run / ...)."""
    rows = plan.rows()
    counts: dict[str, int] = {}
    for row in rows:
        status = row[3].split(" (")[0]
        counts[status] = counts.get(status, 0) + 1
    head = (f"{plan.recipe.name}: {len(rows)} steps -> {plan.out} on {plan.device}: "
            + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return head + "\n" + table(rows, ["step", "what", "artifact", "status"], left=4)
