"""Where `plan_keyframes` puts images and clips (tokens in place or appended, their RoPE frame positions and noise
levels), and how images and clips of other sizes and lengths become conditions."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from lumina_core import tiny
from lumina_core.errors import InvalidInputError
from lumina_core.media import read_frames
from lumina_core.models.ltxv_keyframes import VideoCondition, plan_keyframes
from lumina_core.vae import VideoGuide, encode_condition

SHAPE = (2, 4, 5, 2, 3)  # 33 pixel frames


def latent(frames: int, value: float) -> torch.Tensor:
    return torch.full((1, 4, frames, 2, 3), value)


def test_frame_zero_is_written_in_place_and_other_frames_are_appended():
    image, clip = VideoCondition(latent(1, 1.0)), VideoCondition(latent(3, 2.0), frame_index=8, strength=0.75)
    middle = VideoCondition(latent(1, 3.0), frame_index=13)
    plan = plan_keyframes([image, clip, middle], SHAPE, causal=True)
    # appended: the clip's first 2 latent frames, then the middle image; the video's 5 frames after them
    assert plan.guide_frames == 3 and plan.guide_noise_frames == (2, 1)
    assert plan.frame_positions.tolist() == [8.0, 9.0, 13.0, 0.0, 1.0, 9.0, 17.0, 25.0]
    assert [plan.init[0, 0, f, 0, 0].item() for f in range(8)] == [2.0, 2.0, 3.0, 1.0, 0.0, 0.0, 2.0, 0.0]
    assert [plan.levels[0, 0, f, 0, 0].item() for f in range(8)] == [0.25, 0.25, 0.0, 0.0, 1.0, 1.0, 0.25, 1.0]


def test_positions_follow_the_models_convention():
    plan = plan_keyframes([VideoCondition(latent(3, 1.0), frame_index=16)], SHAPE, causal=False)
    assert plan.frame_positions.tolist() == [16.0, 24.0, 0.0, 8.0, 16.0, 24.0, 32.0]


def test_init_latent_and_levels_are_kept_where_nothing_is_placed():
    init, levels = torch.randn(SHAPE), torch.full((2, 1, 5, 2, 3), 0.5)
    plan = plan_keyframes([VideoCondition(latent(1, 1.0), -1)], SHAPE, True, init_latent=init, levels=levels)
    assert torch.equal(plan.init[:, :, 1:], init) and torch.equal(plan.levels[:, :, 1:], levels)
    assert plan.frame_positions[0].item() == 32.0  # -1: the last of 33 frames


def test_a_clip_that_is_not_8k_plus_1_keeps_its_first_frames_and_sizes_are_fitted(tmp_path):
    vae = tiny.make_ltx_vae(0)
    clip = torch.rand(1, 3, 12, 50, 70)
    with pytest.warns(UserWarning) as caught:
        condition = encode_condition(vae, VideoGuide(clip, 8), 64, 96, number=2)
    assert [str(w.message) for w in caught] == [
        "condition 2 has 12 frames; LTX-Video encodes 8k + 1, so its first 9 are used",
        "condition 2 is 70x50; it was centre-cropped to the video's aspect ratio and resized to 96x64",
    ]
    assert condition.latent.shape == (1, 128, 2, 2, 3) and condition.frame_index == 8


def test_bad_items_are_named():
    with pytest.raises(InvalidInputError, match=r"condition 1 has a latent of shape \(1, 4, 1, 3, 3\)"):
        plan_keyframes([VideoCondition(torch.zeros(1, 4, 1, 3, 3))], SHAPE, True)
    with pytest.raises(InvalidInputError, match="condition 1 is a tuple; pass VideoCondition items"):
        plan_keyframes([(latent(1, 0.0), 0)], SHAPE, True)
    with pytest.raises(InvalidInputError, match="longer than the 33-frame video: use at most 33 frames"):
        plan_keyframes([VideoCondition(latent(6, 0.0))], SHAPE, True)


def test_read_frames_reads_stills_animations_and_videos(tmp_path):
    Image.new("RGB", (8, 6), (255, 0, 0)).save(tmp_path / "a.png")
    frames = [Image.new("RGB", (8, 6), (0, 20 * i, 0)) for i in range(4)]
    frames[0].save(tmp_path / "b.webp", save_all=True, append_images=frames[1:], lossless=True)
    assert read_frames(tmp_path / "a.png").shape == (1, 3, 6, 8)
    assert read_frames(tmp_path / "b.webp").shape == (4, 3, 6, 8)
    assert read_frames(tmp_path / "b.webp", max_frames=2).shape == (2, 3, 6, 8)
    av = pytest.importorskip("av")
    with av.open(str(tmp_path / "c.mp4"), mode="w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for _ in range(3):
            container.mux(stream.encode(av.VideoFrame.from_image(Image.new("RGB", (16, 16)))))
        container.mux(stream.encode())
    assert read_frames(tmp_path / "c.mp4").shape == (3, 3, 16, 16)
    (tmp_path / "d.mp4").write_text("hello")
    with pytest.raises(InvalidInputError, match=r"d.mp4 is neither an image nor a video"):
        read_frames(tmp_path / "d.mp4")
