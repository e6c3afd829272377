"""LLaVA pretraining format: dataset/llava.json plus the images as files under dataset/images/."""
from __future__ import annotations

import json

from factory import schema as S
from factory.export.common import dataset_batches, image_extension, pick, sample_name
from factory.io import files

IMAGES_PER_FOLDER = 10_000  # keeps any one folder listable on every filesystem


def image_path(rank: int, caption_id: str, ext: str) -> str:
    """`images/BUCKET/NAME.EXT`, relative to dataset/: ranks 1..10000 in bucket 0000, and so on."""
    return f"images/{(int(rank) - 1) // IMAGES_PER_FOLDER:04d}/{sample_name(rank, caption_id)}.{ext}"


def conversation(caption_id: str, image: str, caption: str, instructions: list[str]) -> dict:
    return {
        "id": str(caption_id),
        "image": image,
        "conversations": [
            {"from": "human", "value": "<image>\n" + pick(instructions, caption_id)},
            {"from": "gpt", "value": caption},
        ],
    }


def write_llava(dataset_dir: str, instructions: list[str]) -> dict:
    """Write every pair's image file and llava.json (in rank order); returns counts."""
    fs, root = files.resolve(dataset_dir)
    entries: list[tuple[int, dict]] = []  # text only: the images go to disk batch by batch
    made: set[str] = set()
    n_bytes = 0
    for batch in dataset_batches(dataset_dir, [S.ID, S.CAPTION, S.RANK, S.IMAGE]):
        ids, caps, ranks = (batch.column(c).to_pylist() for c in (S.ID, S.CAPTION, S.RANK))
        images = batch.column(S.IMAGE)
        for i, (cid, cap, rank) in enumerate(zip(ids, caps, ranks)):
            data = images[i].as_py()
            rel = image_path(rank, cid, image_extension(data))
            folder = rel.rsplit("/", 1)[0]
            if folder not in made:
                fs.create_dir(f"{root}/{folder}", recursive=True)
                made.add(folder)
            with fs.open_output_stream(f"{root}/{rel}") as f:
                f.write(data)
            n_bytes += len(data)
            entries.append((rank, conversation(cid, rel, cap, instructions)))
    entries.sort(key=lambda e: e[0])
    files.write_bytes_atomic(files.join(dataset_dir, "llava.json"), json.dumps([e for _, e in entries], ensure_ascii=False, indent=1).encode())
    return {"file": "llava.json", "rows": len(entries), "image_bytes": n_bytes}
