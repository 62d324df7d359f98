"""The one-screen table bench/compare.py prints after its JSON."""

from __future__ import annotations


def table(report: dict, sections) -> str:
    """One line per figure of a compare.py report (``sections``: the section names, in order)."""
    rows = [f"device: {report['device']} | torch {report['torch']} | torchvision {report['torchvision']}"]
    for name in sections:
        if "error" in report.get(name, {}):
            rows.append(f"{name:14} failed: {report[name]['error']}")
    report = {k: v for k, v in report.items() if not (isinstance(v, dict) and "error" in v)}
    for sec in ("train", "forward"):
        if sec in report:
            for d in report["flags"]["dtypes"]:
                r = report[sec]
                rows.append(f"{sec:8} {d:5} ours {r[f'ours.{d}']['img_s']:9.1f} img/s  torchvision "
                            f"{r[f'torchvision.{d}']['img_s']:9.1f}  ratio {r[f'ratio.{d}']:.2f}x  (batch {r['batch']})")  # fmt: skip
    if "post" in report:
        r = report["post"]
        rows.append(f"post           ours {r['ours']['img_s']:9.1f} img/s  torchvision {r['torchvision']['img_s']:9.1f}  "
                    f"ratio {r['ratio']:.2f}x  exact={r['identical_to_exact_reference']} same-as-tv={r['identical_to_torchvision']}")  # fmt: skip
    if "input" in report:
        r = report["input"]
        rows.append(f"input          {r['per_core']['img_s']:.1f} img/s per core; "
                    + ", ".join(f"{k}: {v['img_s']:.1f} img/s" for k, v in r.items() if k.startswith("workers_")))  # fmt: skip
    if "input_gpu" in report:
        r = report["input_gpu"]
        rows.append(f"input_gpu      on {r['device']}: "
                    + ", ".join(f"{k}: {v['img_s']:.1f} img/s" for k, v in r.items() if k.startswith("workers_"))
                    + f"; decode+render alone {r['decode_render_only']['img_s']:.1f} img/s")  # fmt: skip
    if "train" in report:
        rows.append(f"train    checks: {report['train']['checks']}")
        rows += [f"train    {k}: host syncs {v['host_syncs']}" for k, v in report["train"].items() if isinstance(v, dict) and "host_syncs" in v]
    if "train_compiled" in report:
        r, tv = report["train_compiled"], report.get("train", {}).get("torchvision.bf16", {}).get("img_s")
        for key in (k for k in r if k.startswith("ours_compiled_")):
            ratio = f"{r[key]['img_s'] / tv:.2f}x torchvision bf16" if tv else "torchvision not measured"
            rows.append(f"train    {key}: {r[key]['img_s']:9.1f} img/s ({ratio}; compile {r[key]['compile_s']} s; "
                        f"host syncs: {r[key]['host_syncs']})")  # fmt: skip
        rows.append(f"train    compiled checks: {r.get('checks')}")
    if "train_e2e" in report and report["train_e2e"].get("e2e"):
        r = report["train_e2e"]
        rows.append(f"train_e2e      from JPEG files {r['e2e']['img_s']:.1f} img/s, the step on tensors in memory "
                    f"{r['step_in_memory']['img_s']:.1f} img/s: {r['e2e_over_step']:.2f} (batch {r['batch']})")  # fmt: skip
    if "eval" in report:
        r = report["eval"]
        for key in (k for k in r if k.startswith("decode_")):
            rows.append(f"eval           {r['images']} images, {key}: {r[key]['seconds']:.1f} s ({r[key]['img_s']:.1f} img/s)")
    if "latency" in report:
        r = report["latency"]
        rows.append(f"latency        ours {r['ours_s'] * 1000:.1f} ms  torchvision {r['torchvision_s'] * 1000:.1f} ms  "
                    f"ratio {r['ratio']:.2f}; pre+post ours {r['ours_pre_post_s'] * 1000:.1f} ms vs "
                    f"{r['torchvision_pre_post_s'] * 1000:.1f} ms")  # fmt: skip
    if "batch" in report.get("int8", {}):
        r = report["int8"]
        rows.append(f"int8           batch {r['batch']}: {r['int8_over_fp32_throughput']:.2f}x our fp32 throughput; latency "
                    f"{r['ours_int8_latency_ms']:.0f} ms = {r['int8_over_torchvision_latency']:.2f}x torchvision's")  # fmt: skip
    return "\n".join(rows)
