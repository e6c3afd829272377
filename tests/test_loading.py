"""Real loading code on tiny models: save_pretrained / safetensors, then the same path real weights take."""
import numpy as np
import open_clip
import torch
from open_clip.tokenizer import bytes_to_unicode as open_clip_bytes_to_unicode

from factory.score.clip import load_open_clip
from factory.score.tiny import TINY_CLIP_NAME, ensure_tiny_clip, register_tiny_clip
from factory.synth.diffusion import SDXL, load_text_to_image
from factory.synth.tiny import build_tiny_sdxl, bytes_to_unicode


def test_tiny_sdxl_round_trip_through_from_pretrained(tmp_path):
    pipe = build_tiny_sdxl()
    pipe.save_pretrained(tmp_path / "sdxl")
    loaded = load_text_to_image(str(tmp_path / "sdxl"), "float32", "cpu")  # the model=sdxl code path
    assert type(loaded).__name__ == "StableDiffusionXLPipeline"
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        a, b = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    # the tokenizer built offline from open_clip's merges tokenizes exactly like open_clip
    text = "A photo depicts a red car"
    ours = loaded.tokenizer(text).input_ids
    theirs = open_clip.get_tokenizer("ViT-B-32")([text])[0].tolist()
    assert ours == theirs[: len(ours)]


def test_synth_stage_loads_a_saved_folder(tmp_path):
    build_tiny_sdxl().save_pretrained(tmp_path / "m")
    stage = SDXL(path=str(tmp_path / "m"), device="cpu", steps=2)
    out = stage({"id": np.array(["a"], dtype=object), "caption": np.array(["a red car"], dtype=object),
                 "sample": np.array([0], np.int32), "seed": np.array([7])})
    assert out["image"].dtype == np.uint8 and out["image"].shape == (1, 64, 64, 3)


def test_tiny_open_clip_round_trip_through_pretrained_file(tmp_path):
    path = ensure_tiny_clip(tmp_path / "clip" / "open_clip_model.safetensors")
    register_tiny_clip()
    model, tokenizer = load_open_clip(TINY_CLIP_NAME, str(path), "cpu")  # same call as scorer=clip_l14_336 with a local file
    torch.manual_seed(0)
    fresh = open_clip.create_model(TINY_CLIP_NAME, pretrained=None)
    saved = model.state_dict()
    assert all(torch.equal(saved[k], v) for k, v in fresh.state_dict().items())
    assert tokenizer(["x"]).shape == (1, 77)


def test_the_tiny_tokenizers_byte_map_is_open_clips():
    """The tiny pipeline's CLIP vocabulary starts from GPT-2's byte map, taken from transformers so
    that a generator's worker need not import open_clip: it must be open_clip's own, entry for
    entry and in the same order (the order numbers the vocabulary)."""
    assert list(bytes_to_unicode().items()) == list(open_clip_bytes_to_unicode().items())
