"""Stage 3, codes: fit OPQ quantizers on the lake's embeddings, code every item, commit.

The quantizer itself is :mod:`vqrec.core.quantizer`; this stage decides what each one is
fitted on and writes ``<lake>/codes/<version>/`` (docs/ARCHITECTURE.md).

* "Strict" fitting (the paper's): a quantizer sees only the items of the ``train`` rows of
  its domains' sequences (any item in a history or as a target), so items that occur only
  as valid/test targets never shape it. They are still coded, by the frozen quantizer.
* Determinism: domains and items are visited in sorted order (and see the quantizer's).
* Frozen quantizers: ``frozen_from`` (``--frozen-from``) names an earlier codes version
  whose quantizers are reused as they are; :func:`code_new_items` codes items that appear
  later with the quantizer of their domain. Neither refits.

    vqrec codes --lake L --version V --pretrain-domains Games,Beauty \\
        --target-domains Scientific [--strategy domain|shared] [--code-dim 32] [--bits 8]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vqrec.core.code_strategy import DEFAULT_STRATEGY, STRATEGIES, check_strategy
from vqrec.lake.store import (
    LakeError,
    default_version,
    read_success,
    resolve_version,
    staged_version,
    validate_name,
)
from vqrec.stages.flags import add_config_flags

if TYPE_CHECKING:
    import faiss
    import numpy as np

# faiss, numpy, pyarrow and the quantizer are imported inside the functions that use them:
# `vqrec codes --help` (and anything that only needs CodesConfig) must not load faiss.

log = logging.getLogger("vqrec.quantize")

PRETRAIN = "pretrain"  # name of the quantizer fitted jointly on the pre-training domains


# ---------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CodesConfig:
    """What the codes stage fits and writes. Lists are kept sorted: order never matters."""

    # Each field's help is its `vqrec codes` flag's help (vqrec.stages.flags).
    pretrain_domains: tuple[str, ...] = field(
        metadata={"help": "comma-separated pre-training domains (one joint quantizer)"}
    )
    target_domains: tuple[str, ...] = field(
        default=(), metadata={"help": "comma-separated target domains (see --strategy)"}
    )
    strategy: str = field(
        default=DEFAULT_STRATEGY,
        metadata={
            "help": "target domains: own strict quantizer, or the shared one",
            "choices": STRATEGIES,
        },
    )
    lake: str | None = field(
        default=None, metadata={"help": "lake root (default: $VQREC_LAKE or ./var/lake)"}
    )
    version: str | None = field(
        default=None, metadata={"help": "codes version to write (default: a UTC timestamp)"}
    )
    embeddings_version: str | None = field(
        default=None, metadata={"help": "embeddings version to code (default: CURRENT)"}
    )
    clean_version: str | None = field(
        default=None,
        metadata={
            "help": "clean version whose training items fit the quantizers (default: the "
            "embeddings' own, else CURRENT)"
        },
    )
    code_dim: int = field(default=32, metadata={"help": "D sub-vectors"})
    bits: int = field(default=8, metadata={"help": "M = 2**bits centroids per sub-vector"})
    seed: int = field(default=0, metadata={"help": "k-means / OPQ random seed"})
    niter: int | None = field(
        default=None, metadata={"help": "OPQ iterations (default: faiss's, 50)"}
    )
    normalize: bool = field(
        default=False,
        metadata={"help": "L2-normalise before OPQ (official: raw PLM vectors)"},
    )
    strict: bool = field(
        default=True,
        metadata={"help": "fit on training items only (--no-strict: on every item)"},
    )
    threads: int = field(default=1, metadata={"help": "faiss threads (fit and assignment)"})
    move_current: bool = field(
        default=True,
        metadata={"help": "move CURRENT here (--no-move-current: a one-domain backfill)"},
    )
    # An earlier codes version whose quantizers are frozen: every quantizer this run needs
    # ("pretrain", or a target domain's own) that it holds is reused as is, no refit; only
    # the missing ones are fitted (new-domain backfill on the champion's quantizer).
    frozen_from: str | None = field(
        default=None,
        metadata={
            "help": "codes version whose quantizers to reuse frozen (no refit) where it has "
            "them (default: none, fit all)"
        },
    )

    def __post_init__(self) -> None:
        pre = tuple(sorted(set(self.pretrain_domains)))
        tgt = tuple(sorted(set(self.target_domains)))
        for d in pre + tgt:
            validate_name(d, "domain")
        # Versions too, before any fitting: a bad one must fail in a second, not after OPQ.
        for v in (self.version, self.embeddings_version, self.clean_version, self.frozen_from):
            if v is not None:
                validate_name(v, "version")
        if not pre and not tgt:
            raise ValueError("no domains: give pretrain_domains and/or target_domains")
        both = sorted(set(pre) & set(tgt))
        if both:
            raise ValueError(f"domain(s) {both} are both pre-training and target domains")
        check_strategy(self.strategy, "strategy")
        if self.strategy == "domain" and PRETRAIN in tgt:
            raise ValueError(f"a target domain may not be named {PRETRAIN!r} (quantizer name)")
        if self.strategy == "shared" and tgt and not pre and not self.frozen_from:
            raise ValueError(
                "strategy 'shared' needs a pre-training quantizer: give pretrain_domains "
                "or frozen_from (a codes version holding one)"
            )
        object.__setattr__(self, "pretrain_domains", pre)
        object.__setattr__(self, "target_domains", tgt)


@dataclass
class _Domain:
    name: str
    item_idx: np.ndarray
    x: np.ndarray
    train_mask: np.ndarray  # rows of x that the quantizer may be fitted on


def _load_domain(cfg: CodesConfig, emb_dir: Path, clean_dir: Path, domain: str) -> _Domain:
    import numpy as np

    from vqrec.lake.tables import read_item_embeddings, training_items

    item_idx, x = read_item_embeddings(emb_dir, domain)
    if cfg.strict:
        train = training_items(clean_dir, domain)
        missing = np.setdiff1d(train, item_idx)
        if missing.size:
            raise LakeError(
                f"domain {domain!r}: {missing.size} training item(s) have no embedding in "
                f"{emb_dir} (e.g. item_idx {missing[:5].tolist()}); re-run encode on the "
                f"clean version {clean_dir.name}"
            )
        mask = np.isin(item_idx, train)
    else:
        mask = np.ones(len(item_idx), dtype=bool)
    log.info("domain %s: %d items, %d used for fitting", domain, len(item_idx), int(mask.sum()))
    return _Domain(domain, item_idx, x, mask)


def _fit(cfg: CodesConfig, name: str, domains: list[_Domain]) -> tuple[faiss.Index, dict]:
    import numpy as np

    from vqrec.core.quantizer import fit_quantizer

    x = np.concatenate([d.x[d.train_mask] for d in domains])
    log.info(
        "fitting quantizer %s on %d items (%s)", name, len(x), ",".join(d.name for d in domains)
    )
    t0 = time.perf_counter()
    try:
        index = fit_quantizer(
            x, cfg.code_dim, cfg.bits, cfg.seed, cfg.niter, cfg.normalize, cfg.threads
        )
    except ValueError as err:
        raise ValueError(f"quantizer {name!r} ({[d.name for d in domains]}): {err}") from None
    seconds = time.perf_counter() - t0
    log.info("fitted quantizer %s in %.1f s", name, seconds)
    info = {"domains": [d.name for d in domains], "n_train": int(len(x)), "fit_seconds": seconds}
    return index, info


def _write_codes(out: Path, dom: _Domain, codes: np.ndarray, quantizer: str) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = out / "codes" / f"domain={dom.name}" / "part-00000.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    code_dim = codes.shape[1]
    table = pa.table(
        {
            "item_idx": pa.array(dom.item_idx, type=pa.int32()),
            "code": pa.FixedSizeListArray.from_arrays(
                pa.array(codes.ravel(), type=pa.int16()), code_dim
            ).cast(pa.list_(pa.int16())),
            "quantizer": pa.array([quantizer] * len(dom.item_idx), type=pa.string()),
        }
    )
    pq.write_table(table, path)
    return path


def _input_versions(cfg: CodesConfig) -> tuple[Path, dict[str, Any], Path | None]:
    """The embeddings version to code and, when ``strict``, the clean version whose
    sequences decide the training items (by default the one the embeddings were made from)."""
    emb_dir = resolve_version(cfg.lake, "embeddings", cfg.embeddings_version)
    emb_meta = read_success(emb_dir)
    clean_dir = None
    if cfg.strict:
        # item_idx only means the same item within one clean version: by default read the
        # sequences of the clean version the embeddings were made from.
        clean_dir = resolve_version(
            cfg.lake, "clean", cfg.clean_version or emb_meta.get("clean_version")
        )
        if emb_meta.get("clean_version") not in (None, clean_dir.name):
            log.warning(
                "embeddings %s were made from clean version %s, not %s: item ids may differ",
                emb_dir.name,
                emb_meta["clean_version"],
                clean_dir.name,
            )
    log.info("embeddings %s, clean %s", emb_dir, clean_dir)
    return emb_dir, emb_meta, clean_dir


def _quantizers(
    cfg: CodesConfig,
    pretrain: list[_Domain],
    targets: list[_Domain],
    dims: dict[str, int],
    clean_dir_name: str | None,
) -> tuple[dict[str, faiss.Index], dict[str, dict], dict[str, str]]:
    """The quantizers this run codes with (fitted, or reused from ``frozen_from``), what is
    known of each (fit domains, sizes, seconds), and the quantizer of every domain."""
    from vqrec.core.quantizer import (
        check_fit_shape,
        is_normalizing,
        load_quantizer,
        quantizer_shape,
    )

    quantizers: dict[str, faiss.Index] = {}
    quantizer_info: dict[str, dict] = {}
    frozen_dir = resolve_version(cfg.lake, "codes", cfg.frozen_from) if cfg.frozen_from else None

    def get_quantizer(name: str, domains: list[_Domain]) -> None:
        """The frozen quantizer ``name`` of ``frozen_from`` if it has one, else fit it."""
        path = frozen_dir / "quantizers" / f"{name}.faiss" if frozen_dir else None
        if path is not None and path.is_file():
            index = load_quantizer(path)
            wanted = (next(iter(dims.values())), cfg.code_dim, cfg.bits, cfg.normalize)
            found = (*quantizer_shape(index), is_normalizing(index))
            if found != wanted:
                raise ValueError(
                    f"{path}: frozen quantizer has (d, code_dim, bits, normalize)={found}, "
                    f"this run needs {wanted}"
                )
            log.info("reusing frozen quantizer %s from codes version %s", name, frozen_dir.name)
            quantizers[name] = index
            quantizer_info[name] = {"frozen_from": frozen_dir.name, "domains": [], "n_train": 0}
            # Where it was fitted, carried along from version to version (drift: the share
            # of a domain's items it has never seen).
            stats = json.loads((frozen_dir / "stats.json").read_text())["quantizers"][name]
            for key in ("fit_clean_version", "fit_domains"):
                quantizer_info[name][key] = stats.get(key)
        elif domains:
            quantizers[name], quantizer_info[name] = _fit(cfg, name, domains)
            quantizer_info[name]["fit_clean_version"] = clean_dir_name
            quantizer_info[name]["fit_domains"] = [d.name for d in domains]
        else:
            raise LakeError(f"codes version {frozen_dir} has no quantizer {name!r} to reuse")

    # Every quantizer to fit is checked before any is fitted: a target domain too small for
    # its own OPQ must fail in a second, not after the pre-training quantizer's minutes.
    to_fit = [(PRETRAIN, pretrain)] if pretrain else []
    to_fit += [(d.name, [d]) for d in targets if cfg.strategy == "domain"]
    d = next(iter(dims.values()))
    for name, domains in to_fit:
        held = frozen_dir is not None and (frozen_dir / "quantizers" / f"{name}.faiss").is_file()
        if not held:
            n = int(sum(dom.train_mask.sum() for dom in domains))
            try:
                check_fit_shape(n, d, cfg.code_dim, cfg.bits)
            except ValueError as err:
                raise ValueError(f"quantizer {name!r}: {err}") from None
    if pretrain or (targets and cfg.strategy == "shared"):
        get_quantizer(PRETRAIN, pretrain)
    assignment = {d.name: PRETRAIN for d in pretrain}
    for dom in targets:
        if cfg.strategy == "domain":
            get_quantizer(dom.name, [dom])
            assignment[dom.name] = dom.name
        else:
            assignment[dom.name] = PRETRAIN
    return quantizers, quantizer_info, assignment


def _seen_at_fit(
    cfg: CodesConfig, clean_dir: Path | None, dom: _Domain, info: dict[str, Any]
) -> int | None:
    """How many of ``dom``'s items a frozen quantizer was fitted on (matched by raw item id:
    item_idx changes between clean versions); None when that is not known."""
    fit_version, fit_domains = info.get("fit_clean_version"), info.get("fit_domains") or []
    if dom.name not in fit_domains:
        return 0 if fit_version else None
    if clean_dir is None:
        return None
    import numpy as np

    from vqrec.lake.tables import read_item_ids, training_items

    fit_dir = resolve_version(cfg.lake, "clean", fit_version)
    seen = set(read_item_ids(fit_dir, dom.name)[training_items(fit_dir, dom.name)])
    return int(np.isin(read_item_ids(clean_dir, dom.name)[dom.item_idx], list(seen)).sum())


def _code_domain(
    cfg: CodesConfig, out: Path, dom: _Domain, name: str, index: faiss.Index, n_fit: int | None
) -> dict[str, Any]:
    """Code every item of ``dom`` with quantizer ``name``, write its codes table into the
    staged version ``out``; returns its code statistics (``n_fit``: how many of its items
    the quantizer was fitted on, None if not known)."""
    from vqrec.core.quantizer import assign_codes, code_stats, reconstruction_error

    t0 = time.perf_counter()
    codes = assign_codes(index, dom.x, cfg.threads)
    _write_codes(out, dom, codes, name)
    dstats = code_stats(codes, 2**cfg.bits)
    unseen = None if n_fit is None else int(len(dom.x) - n_fit)
    dstats.update(
        quantizer=name,
        n_fit_items=n_fit,
        n_unseen_at_fit=unseen,
        unseen_at_fit_share=None if unseen is None else round(unseen / max(len(dom.x), 1), 6),
        relative_reconstruction_error=reconstruction_error(index, dom.x),
    )
    log.info(
        "domain %s: coded %d items with %s in %.1f s; unique codes %.4f, "
        "collision groups %d, mean normalised entropy %.3f",
        dom.name,
        len(codes),
        name,
        time.perf_counter() - t0,
        dstats["unique_code_share"],
        dstats["collision_groups"],
        dstats["mean_entropy_normalized"],
    )
    return dstats


def run_codes(config: CodesConfig) -> dict[str, Any]:
    """Fit the quantizers, code every item, commit ``<lake>/codes/<version>/``.

    Returns a summary: version, path, the quantizer of each domain and its code statistics.
    """
    import faiss

    from vqrec.core.quantizer import factory_string, is_normalizing, quantizer_shape, save_quantizer

    cfg = config
    emb_dir, emb_meta, clean_dir = _input_versions(cfg)

    def load(domain: str) -> _Domain:
        return _load_domain(cfg, emb_dir, clean_dir, domain)  # type: ignore[arg-type]

    pretrain = [load(d) for d in cfg.pretrain_domains]
    targets = [load(d) for d in cfg.target_domains]
    dims = {d.name: d.x.shape[1] for d in pretrain + targets}
    if len(set(dims.values())) > 1:
        raise ValueError(f"embedding dimensions differ between domains: {dims}")
    clean_name = clean_dir.name if clean_dir else None
    quantizers, quantizer_info, assignment = _quantizers(cfg, pretrain, targets, dims, clean_name)

    # Which domains each quantizer was fitted on in this run (a frozen one: none).
    fitted_on = {name: set(info["domains"]) for name, info in quantizer_info.items()}
    version = validate_name(cfg.version or default_version(), "version")
    meta: dict[str, Any] = {
        "embeddings_version": emb_dir.name,
        "clean_version": clean_dir.name if clean_dir else None,
    }
    stats: dict[str, Any] = {"domains": {}, "quantizers": {}}
    with staged_version(cfg.lake, "codes", version, meta, cfg.move_current) as out:
        for name in sorted(quantizers):
            save_quantizer(quantizers[name], out / "quantizers" / f"{name}.faiss")
            # Timings go to _SUCCESS, not here: same inputs, same stats.json.
            info = {k: v for k, v in quantizer_info[name].items() if k != "fit_seconds"}
            _, code_dim, bits = quantizer_shape(quantizers[name])
            info["factory"] = factory_string(code_dim, bits, is_normalizing(quantizers[name]))
            stats["quantizers"][name] = info
        for dom in sorted(pretrain + targets, key=lambda d: d.name):
            name = assignment[dom.name]
            if dom.name in fitted_on[name]:  # fitted now, on this domain's training items
                n_fit: int | None = int(dom.train_mask.sum())
            else:
                n_fit = _seen_at_fit(cfg, clean_dir, dom, quantizer_info[name])
            stats["domains"][dom.name] = _code_domain(cfg, out, dom, name, quantizers[name], n_fit)
        config_doc = asdict(cfg)
        config_doc.update(
            meta,
            version=version,
            quantizer_of_domain=assignment,
            factory=factory_string(cfg.code_dim, cfg.bits, cfg.normalize),
            faiss_version=faiss.__version__,
            encoder=emb_meta.get("encoder"),
        )
        (out / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
        (out / "config.json").write_text(json.dumps(config_doc, indent=2, sort_keys=True) + "\n")
        meta["fit_seconds"] = {k: v.get("fit_seconds") for k, v in quantizer_info.items()}
        meta["quantizer_of_domain"] = assignment
    final = resolve_version(cfg.lake, "codes", version)
    return {
        "version": version,
        "path": str(final),
        "quantizer_of_domain": assignment,
        "stats": stats["domains"],
        "fit_seconds": meta["fit_seconds"],
    }


def code_new_items(
    codes_dir: str | Path, domain: str, embeddings: np.ndarray, quantizer: str | None = None
) -> np.ndarray:
    """Code items unseen at fit time with the frozen quantizer of ``domain`` (no refit).

    ``codes_dir`` is a committed codes version (``resolve_version(lake, "codes")``). The
    quantizer is the one that coded ``domain`` in that version; a domain that version has
    never seen needs ``quantizer`` ("pretrain" for the shared strategy, or a domain name).
    """
    from vqrec.core.quantizer import assign_codes, load_quantizer

    codes_dir = Path(codes_dir)
    config = json.loads((codes_dir / "config.json").read_text())
    known = config.get("quantizer_of_domain", {})
    if quantizer is None:
        if domain not in known:
            raise LakeError(
                f"{codes_dir}: domain {domain!r} has no quantizer in this version (domains: "
                f"{sorted(known)}); pass quantizer={PRETRAIN!r} to use the shared one"
            )
        quantizer = known[domain]
    index = load_quantizer(
        codes_dir / "quantizers" / f"{validate_name(quantizer, 'quantizer')}.faiss"
    )
    return assign_codes(index, embeddings, int(config.get("threads", 1)))


# ---------------------------------------------------------------------------------------
# CLI: vqrec codes
# ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``vqrec codes``: every CodesConfig field (``--pretrain-domains`` ...)."""
    p = argparse.ArgumentParser(
        prog="vqrec codes", description="Fit OPQ quantizers (strict) and write item codes."
    )
    add_config_flags(p, CodesConfig, {"pretrain_domains": ()})
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``vqrec codes``: run the stage; errors in the input are reported, not traced."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        cfg = CodesConfig(**vars(args))
        result = run_codes(cfg)
    except (ValueError, LakeError, FileNotFoundError) as err:
        print(f"vqrec codes: error: {err}", file=sys.stderr)
        return 2
    for domain, st in sorted(result["stats"].items()):
        print(
            f"{domain}: quantizer={st['quantizer']} items={st['n_items']} "
            f"unique={st['unique_code_share']:.4f} collisions={st['collision_groups']} "
            f"entropy={st['mean_entropy_normalized']:.3f}"
        )
    print(f"codes version {result['version']} at {result['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
