"""`edgeas conformance`: reproduce tensors recorded from the official UniAS code.

Relative error = max abs error / max abs expected value. Maps must also meet an
absolute bound, since they feed thresholds directly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeas.errors import ArtifactError

REL_TOL = 1e-4
MAP_ABS_TOL = 1e-5
MAP_PREFIXES = ("dist_", "anomaly_map", "image_score")
# Recorded for documentation only (the official sign bug), or inputs.
SKIPPED = {"loss_eval_official_signbug", "image", "image_uint8_rgb"}
INPUTS = tuple(f"feat_raw_res{i}" for i in range(1, 5))


@dataclass
class Comparison:
    name: str
    shape: tuple[int, ...]
    max_abs: float
    rel: float
    ok: bool


def _is_map(name: str) -> bool:
    return name.startswith(MAP_PREFIXES)


def compare(name: str, got: np.ndarray, want: np.ndarray) -> Comparison:
    if got.shape != want.shape:
        return Comparison(name, tuple(want.shape), float("inf"), float("inf"), False)
    err = float(np.max(np.abs(got.astype(np.float64) - want))) if want.size else 0.0
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    rel = err / scale if scale > 0 else err
    ok = rel <= REL_TOL and (err <= MAP_ABS_TOL if _is_map(name) else True)
    return Comparison(name, tuple(want.shape), err, rel, ok)


def run_conformance(directory: Path, tensors: Path | None = None) -> tuple[dict, dict]:
    """Return (computed tensors by recorded name, recorded tensors)."""
    import torch

    from edgeas.aggregate import reference_stages
    from edgeas.train.model.unias import UniASDecoder, reconstruction_loss
    from edgeas.train.official import (
        channels_from_state,
        load_decoder_state,
        official_to_config,
        strip_official_prefix,
    )

    directory = Path(directory)
    config_path = directory / "config.json"
    try:
        meta = json.loads(config_path.read_text())
        state_npz = np.load(directory / "state_dict.npz")
        recorded = dict(np.load(tensors or directory / "tensors.npz"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read conformance data in {directory}: {exc}") from exc
    cfg = official_to_config(meta["model_config_used"], str(config_path))
    state, _ = strip_official_prefix({k: state_npz[k] for k in state_npz.files}, str(directory))
    channels = channels_from_state(state)
    h, w = cfg.input_size
    sizes = [(h // s, w // s) for s in (2, 4, 8, 16)]
    decoder = UniASDecoder(cfg.model, channels, sizes, cfg.grid)
    load_decoder_state(decoder, state, str(directory / "state_dict.npz"))
    decoder.eval()

    record: dict = {}
    with torch.no_grad():
        if "feat_raw_res1" in recorded:
            feats = [torch.from_numpy(recorded[f"feat_raw_res{i}"]) for i in range(1, 5)]
            out = decoder(feats, record)
        else:
            inputs = [torch.from_numpy(recorded[f"decoder_in_res{i}"]) for i in range(1, 5)]
            targets = [x[:, :c] for x, c in zip(inputs, channels)]
            out = decoder.decode(targets, inputs, record)
        loss = reconstruction_loss(out, cfg.model.loss_weight)
        for i in range(4):
            record[f"recon_res{i + 1}"] = out.recons[i]
            record[f"dist_res{i + 1}"] = out.dists[i]
        record["loss_eval"] = loss
        record["loss_per_level_mse"] = torch.stack(
            [torch.nn.functional.mse_loss(r, t) for r, t in zip(out.recons, out.targets)]
        )
        record["loss_per_level_cos"] = torch.stack([d.mean() for d in out.dists])
        record["attn_mask_7x7"] = decoder.predictor.attn_mask.float()
    computed = {k: v.detach().cpu().numpy() for k, v in record.items()}
    computed.update(reference_stages([computed[f"dist_res{i}"] for i in range(1, 5)], (h, w)))
    return computed, recorded


def conformance_command(directory: Path, tensors: Path | None, save: Path | None) -> bool:
    from rich.console import Console
    from rich.table import Table

    from edgeas.fileio import atomic_open

    computed, recorded = run_conformance(directory, tensors)
    if save is not None:
        with atomic_open(save, "wb") as handle:
            np.savez(handle, **computed)
    # Whichever tensors were the inputs are not checked against themselves.
    inputs = (
        set(INPUTS) if "feat_raw_res1" in recorded else {f"decoder_in_res{i}" for i in range(1, 5)}
    )
    rows = [
        compare(name, computed[name], want)
        for name, want in recorded.items()
        if name not in SKIPPED | inputs and name in computed
    ]
    not_checked = sorted(set(recorded) - set(computed) - SKIPPED - inputs)
    table = Table(title=f"conformance: {directory}")
    for col in ("tensor", "shape", "max abs err", "rel err", ""):
        table.add_column(col)
    for row in rows:
        table.add_row(
            row.name,
            str(row.shape),
            f"{row.max_abs:.2e}",
            f"{row.rel:.2e}",
            "[green]ok[/]" if row.ok else "[red]FAIL[/]",
        )
    console = Console()
    console.print(table)
    failed = [r.name for r in rows if not r.ok]
    if not_checked:
        console.print(f"recorded but not computed: {', '.join(not_checked)}")
    if save is not None:
        console.print(f"saved {len(computed)} tensors to {save}")
    if failed:
        console.print(
            f"[red]{len(failed)} of {len(rows)} tensors out of tolerance:[/] {', '.join(failed)}"
        )
        return False
    console.print(
        f"[green]all {len(rows)} recorded tensors match[/] (rel <= {REL_TOL}, "
        f"maps abs <= {MAP_ABS_TOL})"
    )
    return True
