"""The report of scripts/bench.py: the table's rows and targets, the medians and ratios
over the repetitions (added to the JSON report), and the table printed on stdout."""

import statistics

import bench_servers  # (RSS, LOGS: peak RSS and logged warnings of every stopped server)


# ---------------------------------------------------------------- table

def rows(assocs):
    """(key, label, unit field, higher is better, target ratio)."""
    out = []
    targets = {1: 1.5, 4: 2.0}
    for k in assocs:
        out.append((f"cstore64-a{k}", f"C-STORE 64x64 CT, {k} assoc. (inst/s)", "inst_s", True, targets.get(k)))
    out += [("cstore512", "C-STORE 512x512 CT, 1 assoc. (MB/s)", "mb_s", True, 2.0),
            ("cstore-nagle", "C-STORE 64x64, storescu with Nagle (inst/s)", "inst_s", True, None),
            ("stow64", "STOW-RS 64x64, 50/request (inst/s)", "inst_s", True, 4.0),
            ("stow512", "STOW-RS 512x512, 10/request (MB/s)", "mb_s", True, 2.5),
            ("qido", "QIDO-RS PatientName=D* (ms)", "median_ms", False, 10.0),
            ("wado-study", "WADO-RS study 100 x CT512 (MB/s)", "mb_s", True, 3.0),
            ("wado-small", "WADO-RS study 20 x 64x64 (ms)", "median_ms", False, 2.0),
            ("wado-instance", "WADO-RS instance CT512 (ms)", "median_ms", False, 3.0),
            ("wado-frame", "WADO-RS frame CT512 (ms)", "median_ms", False, 3.0),
            ("metadata", "WADO-RS metadata, 20 inst. (ms)", "median_ms", False, 10.0)]
    return out


def fmt(v, field):
    if v is None:
        return "-"
    if field == "inst_s":
        return f"{v:.0f}"
    if field == "median_ms" and v < 10:
        return f"{v:.2f}"
    return f"{v:.1f}"


def median_of(reps, field):
    vals = [r[field] for r in reps if "error" not in r and r.get(field) is not None]
    return statistics.median(vals) if vals else None


def summarize_report(report, names, assocs, selected):
    medians, ratios, met = {}, {}, {}
    for key, label, field, higher, target in rows(assocs):
        if key not in report["raw"]:
            continue
        for name in names:
            reps = report["raw"][key].get(name, [])
            medians.setdefault(key, {})[name] = median_of(reps, field)
        o, p = medians[key].get("Orthanc"), medians[key].get("pacs-lite")
        if o and p:
            ratios[key] = p / o if higher else o / p
            if target:
                met[key] = ratios[key] >= target
    pacs_rss = [r for n, w, r in bench_servers.RSS if n == "pacs-lite"]
    orth_rss = [r for n, w, r in bench_servers.RSS if n == "Orthanc"]
    if pacs_rss:
        medians["rss"] = {"pacs-lite": max(pacs_rss), "Orthanc": max(orth_rss) if orth_rss else None}
        if orth_rss:
            ratios["rss"] = max(orth_rss) / max(pacs_rss)
        met["rss"] = max(pacs_rss) < 300
    mr = report["machine_runs"]
    machine = {}
    for f in ("dd_dsync_mb_s", "sha256_mb_s", "file_create_us"):
        vals = [m[f] for m in mr if m.get(f) is not None]
        machine[f] = statistics.median(vals) if vals else None
    fractions = {}
    for key, _, _, _, _ in rows(assocs):
        if key.startswith(("cstore", "stow")) and key in report["raw"]:
            for name in names:
                mb = median_of(report["raw"][key].get(name, []), "mb_s")
                if mb is not None:
                    fractions.setdefault(key, {})[name] = {
                        "mb_s": mb,
                        "of_dd": mb / machine["dd_dsync_mb_s"] if machine["dd_dsync_mb_s"] else None,
                        "of_sha256": mb / machine["sha256_mb_s"] if machine["sha256_mb_s"] else None}
    report.update(medians=medians, ratios=ratios, met=met, machine_medians=machine, ingest_fractions=fractions,
                  targets={k: t for k, _, _, _, t in rows(assocs) if t} | {"rss": "< 300 MB"},
                  rss_processes=[{"server": n, "workload": w, "vmhwm_mb": r} for n, w, r in bench_servers.RSS],
                  server_log_warnings=[{"server": n, "workload": w, "lines": k, "sample": s}
                                       for n, w, k, s in bench_servers.LOGS])


def print_table(report, names, assocs, selected, out_path):
    med, ratios, met = report["medians"], report["ratios"], report["met"]
    info = report["machine"]
    runs = report["options"]["runs"]
    print()
    title = "pacs-lite vs Orthanc" if "Orthanc" in names else "pacs-lite (Orthanc not measured)"
    print(f"{title}, {info['date']}, {info['nproc']} cores ({info['cpu_model']}), "
          f"median of {runs} run(s){'' if report['complete'] else ' — INTERRUPTED, partial'}")
    head = f"{'workload':40} {'Orthanc':>10} {'pacs-lite':>10} {'ratio':>8} {'target':>8} {'met?':>5}"
    print(head)
    print("-" * len(head))
    for key, label, field, higher, target in rows(assocs):
        if key not in med:
            continue
        o, p = med[key].get("Orthanc"), med[key].get("pacs-lite")
        def cell(name, v):
            if name not in names:
                return ""
            if v is not None:
                return fmt(v, field)
            return "error" if report["raw"][key].get(name) else "n/m"  # failed, or not measured
        os_, ps = cell("Orthanc", o), cell("pacs-lite", p)
        r = ratios.get(key)
        m = met.get(key)
        print(f"{label:40} {os_:>10} {ps:>10} {(f'{r:.2f}x' if r else ''):>8} "
              f"{(f'>={target:g}x' if target else ''):>8} {('' if m is None else 'yes' if m else 'NO'):>5}")
    if "rss" in med:
        o, p = med["rss"].get("Orthanc"), med["rss"].get("pacs-lite")
        r = ratios.get("rss")
        o_cell = fmt(o, "mb") if "Orthanc" in names else ""
        print(f"{'peak RSS, largest VmHWM (MB)':40} {o_cell:>10} {fmt(p, 'mb'):>10} "
              f"{(f'{r:.2f}x' if r else ''):>8} {'<300 MB':>8} {'yes' if met['rss'] else 'NO':>5}")
    mm = report["machine_medians"]
    if mm.get("sha256_mb_s"):
        dd = mm["dd_dsync_mb_s"]
        print(f"\nmachine ({info['tmpdir']}: {info.get('tmpdir_fs') or '?'}):")
        print(f"  durable write (dd bs=512K oflag=dsync) {dd or float('nan'):.1f} MB/s, "
              f"SHA-256 {mm['sha256_mb_s']:.0f} MB/s, file creation {mm['file_create_us']:.0f} us")
    if report["ingest_fractions"]:
        print("ingest MB/s (Part-10 bytes), as % of the durable write rate and % of SHA-256 throughput:")
        for key, per in report["ingest_fractions"].items():
            cells = []
            for n in names:
                if n in per:
                    f = per[n]
                    cells.append(f"{n} {f['mb_s']:.1f} MB/s ({100 * (f['of_dd'] or 0):.1f}% dd, "
                                 f"{100 * (f['of_sha256'] or 0):.1f}% SHA)")
            print(f"  {key:14} " + "   ".join(cells))
    notes = []
    for key, per in report["raw"].items():
        for n, reps in per.items():
            for r in reps:
                if "error" in r:
                    notes.append(f"{key} {n} run {r['rep'] + 1}: {r['error'][:300]}")
                    continue
                if r.get("check_ok") is False:
                    notes.append(f"{key} {n}: answer check failed "
                                 f"({ {k: r[k] for k in r if k.startswith(('parts', 'expected', 'results'))} })")
                if r.get("errors"):
                    notes.append(f"{key} {n}: {r['errors']} timed requests failed (not 200, or another size)")
                if r.get("stored") is not None and r.get("stored") != r.get("n"):
                    notes.append(f"{key} {n} run {r['rep'] + 1}: {r['stored']} instances held after storing {r['n']}")
                if r.get("failed_associations") or r.get("non_200") or r.get("failed_sops"):
                    fields = ("failed_associations", "non_200", "failed_sops", "statuses", "storescu_error")
                    notes.append(f"{key} {n} run {r['rep'] + 1}: failures { {k: r[k] for k in fields if r.get(k)} }")
    for n, w, k, s in bench_servers.LOGS:
        notes.append(f"{n} ({w}) logged {k} warning/error line(s), e.g. {s[0][:200]}")
    if notes:
        print("notes:")
        for line in dict.fromkeys(notes):
            print("  " + line)
    print(f"JSON: {out_path}")
