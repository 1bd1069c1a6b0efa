"""LTX-Video nodes beyond text-to-video: guides (images or clips at chosen frames), encoding a video (for
video-to-video) and the latent upsampler."""

from __future__ import annotations

from dataclasses import dataclass

from .. import lumina_core
from ..lumina_core.multiscale import upsample_latent
from ..lumina_core.vae import VideoGuide, encode_video
from ..lumina_core.validation import check_float, check_int
from . import comfy_bridge as bridge
from .handles import Handle, decoding_memory, upsampling_memory

CATEGORY = "Lumina"


@dataclass(frozen=True)
class VideoGuides:
    """LUMINA_VIDEO_GUIDES: images or clips at chosen frames, in pixels, and the LTX-Video VAE that encodes them.

    Flow Sampler encodes them at its own size, so one chain of guides serves the small and the refined pass of
    the multi-scale recipe alike.
    """

    vae: Handle
    items: tuple[VideoGuide, ...]


class LTXVideoGuide:
    DISPLAY_NAME = "LTX-Video Guide"
    DESCRIPTION = ("Puts an image (or a clip: an 8k + 1 frame IMAGE batch) at a frame of the video, for LTX-Video "
                   "0.9.5 and later: the first frame, the last frame (-1), keyframes in between. Chain several and "
                   "connect the last to Flow Sampler's guides. Frame 0 replaces the video's first latent frame; "
                   "any other frame adds the item as extra tokens at that position (an image may go on any frame, "
                   "a clip on a multiple of 8), as the original LTX-Video pipeline does.")  # fmt: skip
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LUMINA_VIDEO_GUIDES",)
    RETURN_NAMES = ("guides",)
    FUNCTION = "add"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae": ("LUMINA_VAE", {"tooltip": "The LTX-Video VAE, which encodes the image at the sampler's size."}),
                "image": ("IMAGE", {"tooltip": "One image, or a clip of 8k + 1 frames (longer ones keep their first "
                                    "8k + 1). Another size is centre-cropped and resized to the video's."}),
                "frame_index": ("INT", {"default": 0, "min": -9999, "max": 9999, "tooltip": "The video frame the "
                                "image (or the clip's first frame) becomes: 0 the first, -1 the last, negative "
                                "counts from the end."}),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": "1 keeps "
                             "it exactly; lower starts it re-noised to 1 - strength and lets the model change it."}),
            },
            "optional": {
                "guides": ("LUMINA_VIDEO_GUIDES", {"tooltip": "Guides added before this one (chain them)."}),
            },
        }  # fmt: skip

    def add(self, vae: Handle, image, frame_index: int, strength: float, guides: VideoGuides | None = None):
        if vae.family != "ltxv":
            raise lumina_core.InvalidInputError(
                f"{vae.source} is not an LTX-Video VAE: a video guide is encoded with the LTX-Video VAE."
            )
        check_int("frame_index", frame_index, rule="the video frame, negative from the end")
        check_float("strength", strength, 0.0, 1.0, rule="1 keeps the image exactly")
        if guides is not None and guides.vae.source != vae.source:
            raise lumina_core.InvalidInputError(
                f"this guide's VAE ({vae.source}) is not the one of the guides before it ({guides.vae.source}): "
                "connect the same LTX-Video VAE to every guide."
            )
        pixels = image.permute(0, 3, 1, 2)  # ComfyUI's (N, H, W, 3) -> (N, 3, H, W)
        media = pixels[:1] if len(pixels) == 1 else pixels.transpose(0, 1)[None]  # an image, or a (1, 3, N, H, W) clip
        earlier = guides.items if guides is not None else ()
        return (VideoGuides(vae, (*earlier, VideoGuide(media, frame_index, strength))),)


class LTXVideoEncode:
    DISPLAY_NAME = "LTX-Video Encode"
    DESCRIPTION = ("Encodes frames (an IMAGE batch) with the LTX-Video VAE into a video LATENT, for video-to-video: "
                   "connect it to Flow Sampler's latent and set denoise below 1 (how much the video may change). "
                   "Frames past the last 8k + 1 are dropped and another size is centre-cropped and resized, each "
                   "said once in the console.")  # fmt: skip
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": ("LUMINA_VAE", {"tooltip": "The LTX-Video VAE."}),
            "frames": ("IMAGE", {"tooltip": "The video's frames, e.g. from a video loader; 8k + 1 of them are used."}),
            "width": ("INT", {"default": 768, "min": 32, "max": 4096, "step": 32, "tooltip": "The video's width in "
                      "pixels, a multiple of 32."}),
            "height": ("INT", {"default": 512, "min": 32, "max": 4096, "step": 32, "tooltip": "The video's height in "
                       "pixels, a multiple of 32."}),
        }}  # fmt: skip

    def encode(self, vae: Handle, frames, width: int, height: int):
        if vae.family != "ltxv":
            raise lumina_core.InvalidInputError(f"{vae.source} is not an LTX-Video VAE: encode videos with the "
                                                "LTX-Video VAE (the LTX-Video checkpoint's vae.* part).")  # fmt: skip
        ratio = vae.model.spatial_ratio
        for name, size in (("width", width), ("height", height)):
            check_int(name, size, ratio, rule=f"pixels, a multiple of {ratio}")
            if size % ratio:
                raise lumina_core.InvalidInputError(f"{name} {size} is not a multiple of {ratio}.")
        video = frames.permute(3, 0, 1, 2)[None]  # ComfyUI's (T, H, W, 3) -> (1, 3, T, H, W)
        latent_frames = (len(frames) - 1) // vae.model.temporal_ratio + 1
        shape = (1, vae.model.latent_channels, latent_frames, height // ratio, width // ratio)
        device = vae.load(decoding_memory(vae.model, shape))
        latent = encode_video(vae.model, video, height, width, "the input video", device=device)
        return ({"samples": latent.to(bridge.intermediate_device())},)


class LTXVideoLatentUpsample:
    DISPLAY_NAME = "LTX-Video Latent Upsample"
    DESCRIPTION = ("Upsamples an LTX-Video latent with the 0.9.7/0.9.8 latent upsampler (x2 in width and height with "
                   "the spatial one), as Lightricks' multi-scale recipe does between its passes: the VAE's latent "
                   "statistics are undone and redone around it, and AdaIN matches the result to the input. Then "
                   "refine it with Flow Sampler: recipe ltxv-0.9.8-distilled-refine for a distilled model, or a few "
                   "steps at a low denoise.")  # fmt: skip
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "upsample"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "upsampler": ("LUMINA_LATENT_UPSAMPLER", {"tooltip": "From Load LTX-Video Latent Upsampler."}),
            "vae": ("LUMINA_VAE", {"tooltip": "The LTX-Video VAE: the upsampler works on its un-normalised latent."}),
            "samples": ("LATENT", {"tooltip": "An LTX-Video latent, e.g. Flow Sampler's small first pass."}),
            "adain_factor": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": "Match the "
                             "result's per-channel statistics to the input's: 1 as the original recipe, 0 off."}),
        }}  # fmt: skip

    def upsample(self, upsampler: Handle, vae: Handle, samples: dict, adain_factor: float):
        if vae.family != "ltxv":
            raise lumina_core.InvalidInputError(
                f"{vae.source} is not an LTX-Video VAE: the latent upsampler needs the LTX-Video VAE's statistics."
            )
        latent = samples["samples"]
        if latent.ndim != 5:
            raise lumina_core.InvalidInputError(
                f"LTX-Video Latent Upsample takes a video latent (B, 128, T, H, W); got {tuple(latent.shape)}."
            )
        device = upsampler.load(upsampling_memory(upsampler.model, tuple(latent.shape)))
        upsampled = upsample_latent(upsampler.model, latent, vae.model, adain_factor, device=device)
        out = {"samples": upsampled.to(bridge.intermediate_device())}
        if "frame_rate" in samples:
            out["frame_rate"] = samples["frame_rate"]
        return (out,)
