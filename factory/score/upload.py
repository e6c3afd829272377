"""Host uint8 images → device tensors, chunk by chunk, without making the device wait on the copy."""
from __future__ import annotations

import numpy as np
import torch


class HostToDevice:
    """Copies (n,H,W,3) uint8 arrays to the device, optionally padded to a fixed row count.

    On CUDA each chunk goes through one of two pinned host buffers and a copy stream: the host
    copy of chunk k+1 runs while the device transfers and scores chunk k, and the transfer itself
    runs at pinned speed on the copy engine (a pageable 3 MB image per copy is what held the
    measured stage at half of CLIP's own rate). Elsewhere it is a plain copy.
    """

    def __init__(self, device: str, slots: int = 2):
        self.device = device
        self.cuda = device.startswith("cuda")
        self._buffers: list[torch.Tensor | None] = [None] * slots
        self._events = [None] * slots
        self._next = 0
        self._stream = torch.cuda.Stream(device=device) if self.cuda else None

    def __call__(self, images: np.ndarray, pad_to: int | None = None) -> torch.Tensor:
        """`images` on the device; rows past len(images) up to `pad_to` are zeros."""
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
            # e.g. an object array of rows of different shapes: say so, not "can't convert numpy.object_"
            raise TypeError(f"HostToDevice needs one (n,H,W,C) uint8 array, got {getattr(images, 'dtype', type(images))} "
                            f"of shape {np.shape(images)}: stack rows of one shape first")
        n = len(images)
        rows = max(n, pad_to or 0)
        if not self.cuda:
            x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
            return x if rows == n else torch.cat([x, x.new_zeros((rows - n, *x.shape[1:]))])
        slot = self._next
        self._next = (slot + 1) % len(self._buffers)
        if self._events[slot] is not None:
            self._events[slot].synchronize()  # this buffer's previous transfer is done: safe to refill
        buf = self._buffers[slot]
        if buf is None or buf.shape[0] < n or buf.shape[1:] != images.shape[1:]:
            buf = self._buffers[slot] = torch.empty(images.shape, dtype=torch.uint8, pin_memory=True)
        np.copyto(buf.numpy()[:n], images)
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self._stream):
            out = torch.empty((rows, *images.shape[1:]), dtype=torch.uint8, device=self.device)
            out[:n].copy_(buf[:n], non_blocking=True)
            if rows > n:
                out[n:].zero_()
            event = torch.cuda.Event()
            event.record(self._stream)
        self._events[slot] = event
        compute.wait_event(event)
        out.record_stream(compute)  # made on the copy stream, used on the compute stream
        return out
