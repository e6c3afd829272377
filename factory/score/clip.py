"""CLIPScore with open_clip: max(cos(image, prefix + caption), 0), the raw cosine."""
from __future__ import annotations

import open_clip
import torch
import torch.nn.functional as F

from factory.devices import torch_dtype


def load_open_clip(arch: str, pretrained: str | None, device: str, dtype: str = "float32"):
    """An open_clip model and tokenizer. `pretrained`: a tag ('openai'), a hub id or a local file."""
    model = open_clip.create_model(arch, pretrained=pretrained, device=device, require_pretrained=bool(pretrained))
    model = model.to(device=device, dtype=torch_dtype(dtype, "scorer.dtype")).eval()
    return model, open_clip.get_tokenizer(arch)


class ClipScore:
    """Image and text towers of one open_clip model; images come in as uint8 on the device.

    With `compile`, the image path (preprocessing, vision tower, normalisation) is one
    torch.compile graph; callers then keep the batch size fixed (the scorer pads its chunks).
    """

    def __init__(self, arch: str, pretrained: str | None, device: str, dtype: str = "float32", prefix: str = "A photo depicts ",
                 compile: bool = False, compile_mode: str = "default"):
        self.model, self.tokenizer = load_open_clip(arch, pretrained, device, dtype)
        self.device, self.dtype, self.prefix = device, torch_dtype(dtype, "scorer.dtype"), prefix
        cfg = self.model.visual.preprocess_cfg
        self.size = cfg["size"][0] if isinstance(cfg["size"], (tuple, list)) else cfg["size"]
        self.mean = torch.tensor(cfg["mean"], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg["std"], device=device).view(1, 3, 1, 1)
        self._image_features = self._image_features_eager
        if compile:
            self._image_features = torch.compile(self._image_features_eager, mode=compile_mode, fullgraph=True, dynamic=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """open_clip's eval transform in torch: bicubic resize of the short side, centre crop, normalize."""
        x = images.permute(0, 3, 1, 2).float() / 255.0
        h, w = x.shape[-2:]
        scale = self.size / min(h, w)
        nh, nw = max(self.size, round(h * scale)), max(self.size, round(w * scale))
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        top, left = (nh - self.size) // 2, (nw - self.size) // 2
        x = x[..., top : top + self.size, left : left + self.size]
        return ((x - self.mean) / self.std).to(self.dtype)

    def _image_features_eager(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_image(self.preprocess(images)).float(), dim=-1)

    @torch.inference_mode()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-length image embeddings of (N,H,W,3) uint8 images (queued on the device, not awaited)."""
        return self._image_features(images)

    @torch.inference_mode()
    def text_features(self, captions: list[str]) -> torch.Tensor:
        """Unit-length text embeddings, one row per caption. Each distinct caption is encoded once:
        with synth.repeat = N a batch holds every caption N times over."""
        unique = list(dict.fromkeys(captions))
        tokens = self.tokenizer([self.prefix + c for c in unique]).to(self.device)  # truncated to 77 tokens
        features = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
        if len(unique) == len(captions):
            return features
        row = {c: i for i, c in enumerate(unique)}
        return features[torch.tensor([row[c] for c in captions], device=features.device)]

    def scores(self, image_features: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """CLIPScore of each (image, caption) pair: max(cos, 0). Called once the images' device work
        is queued, so the host tokenises the captions meanwhile."""
        return (image_features * self.text_features(captions)).sum(dim=-1).clamp_min(0.0)
