"""Write the model card of each shipped backbone: fields in checkpoints/shipped/<name>.json and <name>.md.

Reads the pretraining json the run exported, the pool's SOURCES.csv (image counts per source) and the
evaluation of `bench/shipped_backbones.py` (results.json, probe and finetune rows), then adds to the
json: `rank` (1 = best: the registry lists and defaults to it), `provenance`, `data` (sources,
counts, licences), `rebuild` (the commands), `evaluation` (the paired table), `evaluation_summary`,
`intended_use`; and writes the markdown card beside it.

    python scripts/model_card.py --eval artifacts/shipped_backbones/results.json [--eval more.json ...]
    python scripts/model_card.py --relabel   # rewrite the cards' tables from the evaluation already in the json

Every evaluation row carries `uncertainty` (engine.fewshot.metrics.RESAMPLED or FIXED); rows from a
results.json written before it existed are labelled FIXED ("test split fixed: episode variance only")
and keep their old meaning; the card prints each method's sentence under the table.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from engine.fewshot.modes import RECIPE_VERSION, current_mode, recipe_version  # noqa: E402

SHIPPED = ROOT / "checkpoints" / "shipped"
POOL = ROOT.parent / "shared" / "data" / "cxr_pool"

LICENCES = {  # ../shared/data/README.md, "Attribution for cxr_pool/"
    "siimcovid": ("SIIM-FISABIO-RSNA COVID-19 Detection (Kaggle 2021); images from BIMCV-COVID19+ and MIDRC-RICORD",
                  "competition terms; BIMCV-COVID19+ CC BY 4.0, MIDRC-RICORD CC BY-NC 4.0"),
    "covidrd": ("COVID-19 Radiography Database, COVID class (Chowdhury et al. 2020; Rahman et al. 2021)",
                "terms vary by original source (BIMCV, SIRM, Eurorad, GitHub collections)"),
    "tbx11k": ("TBX11K, TB-positive images (Liu et al., CVPR 2020)", "CC BY 4.0 (Kaggle copy); authors: research use"),
    "cxnet": ("COVID-CXNet collection (Haghanifar et al. 2020), adult images", "CC BY 4.0"),
    "covidcxr": ("COVID-19 image data collection (Cohen et al. 2020), adult PA/AP with a licence",
                 "per image: CC BY, CC BY-SA, CC BY-NC-SA, CC BY-NC-ND, Apache-2.0"),
    "hannover": ("COVID-19 Image Repository, Hannover Medical School (Winther et al. 2020)", "CC BY 3.0"),
    "actualmed": ("Actualmed COVID-19 Chest X-ray Dataset Initiative (COVID-Net team)", "research purposes only"),
    "figure1": ("Figure 1 COVID-19 Chest X-ray Dataset Initiative (COVID-Net team)", "research purposes only"),
}
INTENDED_USE = ("Research and decision-support prototyping: a starting backbone for few-shot chest X-ray classifiers "
                "whose quality is then measured on the user's own labeled images. Not a medical device; not for "
                "diagnosis. Pretrained on adult frontal radiographs, mostly of the COVID-19 era; several sources are "
                "research-only or non-commercial, so commercial use needs the sources' permission.")
METHOD_NAME = {"moco_v2": "MoCo v2", "barlow_twins": "BarlowTwins"}


def pool_counts() -> dict[str, int]:
    with open(POOL / "SOURCES.csv") as f:
        return dict(Counter(r["source"] for r in csv.DictReader(f)).most_common())


def rebuild(info: dict) -> list[str]:
    c = info["config"]
    return ["python scripts/device_pretrain.py --pack ../shared/data/cxr_pool .gpu/pool   # 224 px JPEG q70 copy",
            f"python -m engine pretrain --method {info['method']} --preset long --arch {info['arch']} --data .gpu/pool "
            f"--image-size {info['image_size']} --batch-size {c['batch_size']} --epochs 100000 "
            f"--max-steps {info['steps']} --seed {c['seed']} --device cuda --out {info['name']}",
            "# or, on one GPU within a time budget as it was made: python scripts/device_pretrain.py --data .gpu/pool"]


def labelled(row: dict, version: int = RECIPE_VERSION) -> dict:
    """The row with its `uncertainty` (rows written before the field: metrics.FIXED, their old meaning) and its
    mode under the current name (results of recipe `version` 1: `finetune` was the whole network, now
    `full_finetune`; engine.fewshot.modes)."""
    from engine.fewshot.metrics import FIXED

    return {**row, "uncertainty": row.get("uncertainty") or FIXED, "mode": current_mode(row["mode"], version)}


def eval_rows(paths: list[Path], name: str) -> list[dict]:
    rows = []
    for p in paths:
        data = json.loads(p.read_text())
        rows += [labelled(r, recipe_version(data)) for r in data["rows"] if r["init"] == name]
    return sorted(rows, key=lambda r: (r["task"], r["mode"], r["shots"]))


def interval(r: dict) -> str:
    """'[lo, hi]' of a row's 95% interval for d ('' for rows written before it existed), ending in
    metrics.WIDENED_MARK when the small-sample floor widened it (the row's `ci_note`, said under the table)."""
    from engine.fewshot.metrics import WIDENED_MARK

    lo, hi = r.get("ci_low"), r.get("ci_high")
    return f"[{lo:+.3f}, {hi:+.3f}]" + (WIDENED_MARK if r.get("ci_note") else "") if lo is not None and lo == lo else ""


def score(rows: list[dict]) -> float:
    """Mean paired difference to random over the probe rows at 5-20 shots (the issue's range)."""
    ds = [r["diff"] for r in rows if r["mode"] == "probe" and 5 <= r["shots"] <= 20]
    return sum(ds) / len(ds) if ds else float("-inf")


def summary(rows: list[dict]) -> str:
    parts = []
    for task, label in (("kermany224", "paediatric pneumonia (Kermany)"), ("nih_pneumonia", "adult pneumonia (NIH)")):
        r = {x["shots"]: x for x in rows if x["task"] == task and x["mode"] == "probe"}
        if 5 in r and 20 in r:
            parts.append(f"{label}: linear-probe AUC {r[5]['auc']:.2f} at 5 and {r[20]['auc']:.2f} at 20 images per "
                         f"class (random weights {r[5]['auc_random']:.2f} and {r[20]['auc_random']:.2f})")
    return "; ".join(parts) + (" (20 paired trials; bench/shipped_backbones.py)." if parts else "")


def card(info: dict, rows: list[dict], others: dict[str, list[dict]], others_md: str = "") -> str:
    """The markdown card; `others_md`: an earlier card's "Also trained, not shipped" section kept as it was."""
    from engine.fewshot.metrics import WIDENED_MARK, interval_notes, uncertainty_text

    d = info["data"]
    col = info["collapse"]["history"]
    lines = [f"# {info['name']}", "", info["provenance"] + ".", "",
             "## Intended use", "", info["intended_use"], "",
             "## Recipe", "",
             f"- method: {METHOD_NAME.get(info['method'], info['method'])} (`--preset long`, engine/ssl/presets.py), "
             f"arch {info['arch']}, {info['image_size']} px, batch {info['config']['batch_size']}, "
             f"lr {info['config']['lr']}, seed {info['config']['seed']}",
             f"- steps {info['steps']} = {info['epochs']:.1f} epochs = {info['images_seen']:,} images seen; "
             f"{info['train_seconds'] / 60:.1f} min of training on {info['device']} (torch {info['torch']}, "
             "bf16 autocast, channels_last), two runs sharing the GPU",
             f"- stored as {info['storage']}; sha256 {info['sha256']}",
             "- rebuild:", "", "```bash", *rebuild(info), "```", "",
             "## Data", "",
             f"{d['n_images']:,} unlabeled adult frontal chest radiographs, {d['note']}", "",
             "| source | images | collection | licence |", "|---|---|---|---|"]
    for s in d["sources"]:
        lines.append(f"| {s['source']} | {s['images']:,} | {s['collection']} | {s['licence']} |")
    lines += ["", f"Data fingerprint (sha256 of the image contents at {info['image_size']} px): "
                  f"`{info['data_fingerprint']}`.", "",
              "## Collapse monitor (256 training images, eval mode)", "",
              "| step | head std | head cos | head erank | backbone std | backbone erank |", "|---|---|---|---|---|---|"]
    for h in col[:: max(1, len(col) // 8)] + ([col[-1]] if len(col) % 8 else []):
        lines.append(f"| {h['step']} | {h['std']:.3f} | {h['cos']:.3f} | {h['erank']:.1f} | {h['backbone_std']:.3f} | "
                     f"{h['backbone_erank']:.1f} |")
    lines += ["", "## Few-shot evaluation (real labeled X-rays never pretrained on)", "",
              "Paired against random weights: trial t of a shot count trains both on the same images and tests both "
              "on the same images; d = AUC minus random's AUC (mean over trials), SE its standard error, 95% interval "
              "d ± t·SE (blank where the run predates it); target d >= 0.05 with d > 2 SE. Test sets: each manifest's "
              "patient-level split=test images. `python bench/shipped_backbones.py` prints it.", "",
              "| task | mode | shots | AUC | random | d | SE | 95% interval | wins | uncertainty | notes |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in map(labelled, rows):
        lines.append(f"| {r['task']} | {r['mode']} | {r['shots']} | {r['auc']:.3f} | {r['auc_random']:.3f} | "
                     f"{r['diff']:+.3f} | {r['se']:.3f} | {interval(r)} | {r['wins']}/{r['n']} | {r['uncertainty']} | "
                     f"{r.get('note', 'CPU, 20 trials')} |")
    lines += [f"{WIDENED_MARK.strip()} {n}." for n in interval_notes(r.get("ci_note") for r in rows)]
    lines += [""] + [uncertainty_text(m) for m in sorted({labelled(r)["uncertainty"] for r in rows})]
    if others:
        lines += ["", "## Also trained, not shipped", ""]
        for name, rs in others.items():
            lines.append(f"- {name}: same pool, data and GPU run; mean paired d over the probe rows at 5-20 shots "
                         f"{score(rs):+.3f} (this backbone: {score(rows):+.3f}), so it is not shipped.")
    elif others_md:
        lines += ["", others_md.strip()]
    return "\n".join(lines) + "\n"


def relabel() -> None:
    """Rewrite each shipped card from the evaluation rows already in its json, each row labelled with its
    `uncertainty` (old rows: metrics.FIXED); the card's "Also trained, not shipped" section is kept."""
    for j in sorted(SHIPPED.glob("*.json")):
        info = json.loads(j.read_text())
        info["evaluation"] = [labelled(r) for r in info.get("evaluation", [])]
        md = j.with_suffix(".md")
        old = md.read_text() if md.exists() else ""
        kept = old[old.index("## Also trained, not shipped"):] if "## Also trained, not shipped" in old else ""
        j.write_text(json.dumps(info, indent=1) + "\n")
        md.write_text(card(info, info["evaluation"], {}, kept))
        print(f"{info['name']}: {len(info['evaluation'])} evaluation rows relabelled")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--eval", action="append", type=Path, help="bench/shipped_backbones.py results.json")
    ap.add_argument("--relabel", action="store_true", help="only rewrite the cards from the json's evaluation rows")
    args = ap.parse_args()
    if args.relabel:
        relabel()
        return
    if not args.eval:
        ap.error("give --eval results.json (bench/shipped_backbones.py), or --relabel")
    counts = pool_counts()
    infos = {j.stem: json.loads(j.read_text()) for j in sorted(SHIPPED.glob("*.json"))}
    rows = {n: eval_rows(args.eval, n) for n in infos}
    tried = sorted({r["init"] for p in args.eval for r in json.loads(p.read_text())["rows"]})
    order = sorted(infos, key=lambda n: -score(rows[n]))
    for rank, name in enumerate(order, 1):
        info = infos[name]
        info["rank"] = rank
        info["provenance"] = (f"{METHOD_NAME.get(info['method'], info['method'])} {info['arch']} pretrained by "
                              f"scarce-cxr on {info['n_images']:,} real adult chest X-rays from 8 public sources "
                              f"({info['epochs']:.0f} epochs at {info['image_size']} px on one GPU)")
        info["data"] = {
            "n_images": sum(counts.values()),
            "note": "../shared/data/cxr_pool (8-bit JPEG, longer side 256 px), copied as JPEG q70 with the longer "
                    "side 224 px for the GPU machine (scripts/device_pretrain.py --pack; its 64 MiB transfer "
                    "limit); the data_fingerprint is of that copy. No NIH ChestX-ray14, JSRT or Kermany images.",
            "sources": [{"source": s, "images": n, "collection": LICENCES[s][0], "licence": LICENCES[s][1]}
                        for s, n in counts.items()],
        }
        info["rebuild"] = rebuild(info)
        info["evaluation"] = rows[name]
        info["evaluation_summary"] = summary(rows[name])
        info["intended_use"] = INTENDED_USE
        (SHIPPED / f"{name}.json").write_text(json.dumps(info, indent=1) + "\n")
        others = {n: eval_rows(args.eval, n) for n in tried if n not in infos}
        (SHIPPED / f"{name}.md").write_text(card(info, rows[name], {n: r for n, r in others.items() if r}))
        print(f"{rank}. {name}: score {score(rows[name]):+.3f}; {info['evaluation_summary']}")


if __name__ == "__main__":
    main()
