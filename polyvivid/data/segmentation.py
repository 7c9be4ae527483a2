"""Subject segmentation for curation: SAM2 prompted with a grounding box, the largest object kept,
the subject cut out onto a clean background.

transformers' Sam2ImageProcessor needs torchvision, which this project does not install, so the
preprocessing is ours and SAM2's own: resize to the model's square input, ImageNet mean/std.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def tiny_sam2(seed: int = 0):
    """Random SAM2 with a 64 px input (no download), whose masks fill most of the prompt box: its mask
    hypernetworks answer a constant (random ones give nearly empty masks, and a smoke test of curation
    would then have no cut-out to carry through the later stages)."""
    from transformers import Sam2Config, Sam2Model
    from transformers.models.sam2.configuration_sam2 import (
        Sam2HieraDetConfig, Sam2MaskDecoderConfig, Sam2PromptEncoderConfig, Sam2VisionConfig,
    )

    size = 64
    backbone = Sam2HieraDetConfig(
        hidden_size=8, num_attention_heads=1, image_size=[size, size], patch_kernel_size=[7, 7], patch_stride=[4, 4],
        patch_padding=[3, 3], query_stride=[2, 2], window_positional_embedding_background_size=[2, 2],
        num_query_pool_stages=3, blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=[8, 16, 32, 64],
        num_attention_heads_per_stage=[1, 1, 2, 2], window_size_per_stage=[4, 4, 4, 2], global_attention_blocks=[3],
        mlp_ratio=2.0)
    vision = Sam2VisionConfig(backbone_config=backbone, backbone_channel_list=[64, 32, 16, 8],
                              backbone_feature_sizes=[[size // 4] * 2, [size // 8] * 2, [size // 16] * 2],
                              fpn_hidden_size=32, num_feature_levels=3, fpn_top_down_levels=[2, 3])
    torch.manual_seed(seed)
    model = Sam2Model(Sam2Config(
        vision_config=vision,
        prompt_encoder_config=Sam2PromptEncoderConfig(hidden_size=32, image_size=size, patch_size=16, mask_input_channels=4),
        mask_decoder_config=Sam2MaskDecoderConfig(hidden_size=32, mlp_dim=64, num_hidden_layers=1, num_attention_heads=2,
                                                  iou_head_hidden_dim=32))).eval()
    with torch.no_grad():
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.proj_out.weight.zero_()
            mlp.proj_out.bias.fill_(-1.0)
    return model


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of a boolean mask (the whole mask if it has one region)."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    best_label, best_size, current = 0, 0, 0
    h, w = mask.shape
    for y, x in zip(*np.nonzero(mask)):
        if labels[y, x]:
            continue
        current += 1
        labels[y, x] = current
        queue, size = deque([(y, x)]), 0
        while queue:
            cy, cx = queue.popleft()
            size += 1
            for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = current
                    queue.append((ny, nx))
        if size > best_size:
            best_label, best_size = current, size
    return labels == best_label if best_size else mask.copy()


def cut_out(image: Image.Image, mask: np.ndarray, background=(255, 255, 255), margin: int = 2) -> Image.Image:
    """The masked subject, cropped to its extent, on a plain background."""
    pixels = np.array(image.convert("RGB"))
    pixels[~mask] = background
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        raise ValueError("empty mask")
    top, bottom = max(ys.min() - margin, 0), min(ys.max() + margin + 1, mask.shape[0])
    left, right = max(xs.min() - margin, 0), min(xs.max() + margin + 1, mask.shape[1])
    return Image.fromarray(pixels[top:bottom, left:right])


class Segmenter:
    def __init__(self, model):
        self.model = model
        self.size = model.config.vision_config.backbone_config.image_size[0]

    @classmethod
    def load(cls, uri: str | None = None, preset: str | None = None) -> "Segmenter":
        if preset == "tiny":
            return cls(tiny_sam2())
        from transformers import Sam2Model

        from ..storage import materialize_dir

        return cls(Sam2Model.from_pretrained(materialize_dir(uri)).eval())

    @torch.no_grad()
    def segment(self, image: Image.Image, box: list[float]) -> np.ndarray:
        """Boolean mask [H, W] of the largest object SAM2 finds in `box` (x1, y1, x2, y2 in pixels)."""
        w, h = image.size
        pixels = torch.from_numpy(np.asarray(image.convert("RGB").resize((self.size, self.size), Image.BILINEAR),
                                             dtype=np.float32) / 255.0)
        pixels = ((pixels - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)).permute(2, 0, 1)[None]
        scale = torch.tensor([self.size / w, self.size / h, self.size / w, self.size / h])
        boxes = (torch.tensor(box, dtype=torch.float32) * scale)[None, None]
        out = self.model(pixel_values=pixels.to(self.model.device, self.model.dtype),
                         input_boxes=boxes.to(self.model.device), multimask_output=False)
        logits = F.interpolate(out.pred_masks[0, :, :1].float(), size=(h, w), mode="bilinear", align_corners=False)
        mask = (logits[0, 0] > 0).cpu().numpy()
        # SAM2 may leak outside the prompt box; the subject is what lies inside it.
        inside = np.zeros_like(mask)
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        inside[max(y1, 0):y2, max(x1, 0):x2] = True
        return largest_component(mask & inside)
