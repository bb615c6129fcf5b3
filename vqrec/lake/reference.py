"""The published UniSRec/VQ-Rec reference splits (``<D>.{train,valid,test}.inter``).

Benchmarks and real-data tests compare against them; the pipeline itself reads the lake.
"""

from __future__ import annotations

import os
from pathlib import Path

from vqrec.core.sequences import SPLITS, DataError, DomainData, Sequences


def read_reference_domain(folder: str | os.PathLike[str], name: str | None = None) -> DomainData:
    """A domain from the published UniSRec/VQ-Rec files (``<D>.{train,valid,test}.inter``).

    Item indices in the files are 0-based: they become item_idx = index + 1 (0 = padding).
    ``source['item_ids']`` lists the raw item id of each item_idx (index 0 = padding), and
    ``source['texts']`` their texts, for encoding.
    """
    folder = Path(folder)
    name = name or folder.parent.name
    splits = {}
    for split in SPLITS:
        path = folder / f"{name}.{split}.inter"
        histories, targets, users = [], [], []
        with open(path) as f:
            next(f)  # header
            for lineno, line in enumerate(f, start=2):
                parts = line.rstrip("\n").split("\t")
                if len(parts) != 3 or not parts[1].strip():
                    raise DataError(f"{path}:{lineno}: expected user<TAB>history<TAB>target")
                users.append(int(parts[0]))
                histories.append([int(x) + 1 for x in parts[1].split()])
                targets.append(int(parts[2]) + 1)
        splits[split] = Sequences.from_lists(histories, targets, users)
    item_ids = [""]
    with open(folder / f"{name}.item2index") as f:
        pairs = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    pairs.sort(key=lambda p: int(p[1]))
    item_ids += [p[0] for p in pairs]
    texts: dict[str, str] = {}
    with open(folder / f"{name}.text") as f:
        next(f)
        for line in f:
            item, _, text = line.rstrip("\n").partition("\t")
            texts[item] = text
    data = DomainData(name, len(item_ids) - 1, splits)
    data.source = {
        "reference": str(folder),
        "item_ids": item_ids,
        "texts": [""] + [texts.get(i, "") for i in item_ids[1:]],
    }
    data.check()
    return data
