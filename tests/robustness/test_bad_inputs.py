"""Every bad input of the hardening issue, through the Python API and the CLI, in one table.

Each case is one thing a user can get wrong (a broken file, a setting off its rule, an output that cannot be
written). Through the API it must raise a LuminaCoreError whose message is one line naming the file or the rule;
through `python -m lumina_core` it must print that one line and exit with the documented code (2), leaving no file
under the output's name and no temporary file beside it. After every case the same process must still run a model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

import lumina_core as lc
from lumina_core import tiny
from lumina_core.__main__ import main
from lumina_core.conditioning import Conditioning
from lumina_core.errors import CheckpointError, DecodeError, InvalidInputError, SamplingError, UnsupportedModelError
from lumina_core.outputs import save_images, to_pil
from lumina_core.pipeline import ImageRequest, VideoRequest, text_to_image, text_to_video
from lumina_core.sampling import memory
from lumina_core.vae import first_frame_conditioning
from tests.fixtures import broken_files

EXIT_ERROR = 2  # README: "Errors print one line and exit with code 2"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return broken_files.build(tmp_path_factory.mktemp("robustness"))


@pytest.fixture(scope="module")
def model():
    return tiny.make_transformer(0)


@pytest.fixture(scope="module")
def video_model():
    return tiny.make_ltxv_transformer(0)


def prompts(width: int) -> tuple[Conditioning, Conditioning]:
    generator = torch.Generator().manual_seed(0)
    features = [torch.randn(1, n, width, generator=generator) for n in (5, 3)]
    return tuple(Conditioning(f, torch.ones(f.shape[:2], dtype=torch.bool)) for f in features)


LUMINA_PROMPTS, LTX_PROMPTS = prompts(32), prompts(tiny.TINY_T5["d_model"])


def sample_image(model, **settings):
    return lc.sample(model, *LUMINA_PROMPTS, **{"width": 64, "height": 48, "steps": 2, **settings})


def sample_video(model, **settings):
    settings = {"width": 64, "height": 64, "frames": 9, "steps": 2, "model_options": {"frame_rate": 25.0}, **settings}
    return lc.sample(model, *LTX_PROMPTS, **settings)


def image_request(**settings) -> ImageRequest:
    return ImageRequest(prompt="a fox", **{"width": 64, "height": 48, "steps": 2, **settings})


def image_pipeline(files, transformer="transformer", text_encoder="text_encoder", vae="vae", **settings):
    return text_to_image(files[transformer], files[text_encoder], files[vae], image_request(**settings))


def video_pipeline(files, vae="ltxv", **settings):
    request = VideoRequest(prompt="a fox runs", width=96, height=64, frames=9, frame_rate=12.0, steps=2,
                           tokenizer=str(files["t5"].parent / "t5_tokenizer"), **settings)  # fmt: skip
    return text_to_video(files["ltxv"], files["t5"], files[vae], request)


def generate_args(files, out: Path, transformer="transformer", text_encoder="text_encoder", vae="vae", *extra):
    return ["generate", "--transformer", str(files[transformer]), "--text-encoder", str(files[text_encoder]),
            "--vae", str(files[vae]), "--prompt", "a fox", "--steps", "2", "--width", "64", "--height", "48",
            "--out", str(out), *extra]  # fmt: skip


def generate_video_args(files, out: Path, vae="ltxv", *extra):
    return ["generate", "--transformer", str(files["ltxv"]), "--text-encoder", str(files["t5"]), "--tokenizer",
            str(files["t5"].parent / "t5_tokenizer"), "--vae", str(files[vae]), "--prompt", "a fox runs",
            "--steps", "2", "--width", "96", "--height", "64", "--frames", "9", "--frame-rate", "12",
            "--out", str(out.with_suffix(".webp")), *extra]  # fmt: skip


def with_settings(*extra: str):
    return lambda files, out: generate_args(files, out, "transformer", "text_encoder", "vae", *extra)


def before_loading(*extra: str):
    """A generate whose text encoder and VAE do not exist: the error must come before either is opened."""
    return lambda files, out: generate_args(files, out, "transformer", "missing", "missing", *extra)


def no_memory(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**10)  # 1 KiB free: the tiny models need more


@dataclass(frozen=True)
class Case:
    """A bad input. api(files, models, out) must raise `error`; cli(files, out) is the argv of the same mistake.
    `names` are the texts the one line must hold ({name} is replaced by the path of that file)."""

    id: str
    item: int  # of the hardening issue
    error: type[Exception]
    names: tuple[str, ...]
    api: Callable | None = None
    cli: Callable | None = None
    setup: Callable | None = None  # (monkeypatch) -> None, for both
    absent: tuple[str, ...] = field(default=())  # texts the line must not hold


CASES = [
    # 1: a NaN in the VAE's weights gave a black PNG and exit code 0 (in conv_out: a dead red channel)
    Case("vae_nan", 1, DecodeError, ("VAE decode ({vae_nan})", "decoder.conv_in.weight holds", "NaN"),
         api=lambda f, m, out: image_pipeline(f, vae="vae_nan"),
         cli=lambda f, out: generate_args(f, out, "transformer", "text_encoder", "vae_nan")),
    Case("vae_red_channel", 1, DecodeError, ("VAE decode ({vae_red})", "decoder.conv_out.weight holds"),
         api=lambda f, m, out: image_pipeline(f, vae="vae_red"),
         cli=lambda f, out: generate_args(f, out, "transformer", "text_encoder", "vae_red")),
    Case("vae_nan_direct_decode", 1, DecodeError, ("VAE decode ({vae_nan})", "from a finite latent"),
         api=lambda f, m, out: lc.load_vae(f["vae_nan"]).decode(torch.zeros(1, 16, 6, 8))),
    # 3: NaN switched truncation / renormalisation off; every float is finite, in range, the rule in the message
    Case("cfg_trunc_nan", 3, InvalidInputError, ("cfg_trunc must be a finite number", "Lumina time", "got nan"),
         api=lambda f, m, out: sample_image(m["image"], cfg_trunc=math.nan), cli=with_settings("--cfg-trunc", "nan")),
    Case("renorm_cfg_nan", 3, InvalidInputError, ("renorm_cfg must be a finite number", "0 turns it off", "got nan"),
         api=lambda f, m, out: sample_image(m["image"], renorm_cfg=math.nan), cli=with_settings("--renorm-cfg", "nan")),
    Case("cfg_inf", 3, InvalidInputError, ("cfg must be a finite number of at least 0", "got inf"),
         api=lambda f, m, out: sample_image(m["image"], cfg=math.inf), cli=with_settings("--cfg", "inf")),
    Case("shift_nan", 3, InvalidInputError, ("shift must be a finite number above 0", "got nan"),
         api=lambda f, m, out: sample_image(m["image"], shift=math.nan), cli=with_settings("--shift", "nan")),
    Case("denoise_nan", 3, InvalidInputError, ("denoise must be a finite number above 0 and at most 1", "got nan"),
         api=lambda f, m, out: sample_image(m["image"], denoise=math.nan)),
    Case("frame_rate_zero", 3, InvalidInputError, ("frame_rate must be a finite number above 0", "got 0"),
         api=lambda f, m, out: sample_video(m["video"], model_options={"frame_rate": 0.0}),
         cli=lambda f, out: generate_video_args(f, out, "ltxv", "--frame-rate", "0")),
    Case("watershed_nan", 3, InvalidInputError, ("scaling_watershed must be a finite number of at least 0", "got nan"),
         api=lambda f, m, out: lc.sample(tiny.make_lumina_next(0), *LUMINA_PROMPTS, width=64, height=48, steps=2,
                                         model_options={"scaling_watershed": math.nan})),
    Case("first_frame_strength_nan", 3, InvalidInputError, ("strength must be a finite number from 0 to 1",),
         api=lambda f, m, out: first_frame_conditioning(
             lc.load_vae(f["ltxv"]), torch.rand(1, 3, 64, 64), (1, 128, 2, 2, 2), strength=math.nan)),
    Case("decode_noise_scale_nan", 3, InvalidInputError, ("decode_noise_scale must be a finite number from 0 to 1",),
         api=lambda f, m, out: video_pipeline(f, decode_noise_scale=math.nan)),
    # 4: sizes beyond what the model addresses, runs that cannot fit in memory
    Case("width_100000", 4, InvalidInputError, ("width 100000 is too large", "512 patches", "8192 px"),
         api=lambda f, m, out: sample_image(m["image"], width=100000, height=64),
         cli=with_settings("--width", "100000", "--height", "64")),
    Case("size_100000_square", 4, InvalidInputError, ("width 100000 is too large", "8192 px"),
         api=lambda f, m, out: image_pipeline(f, width=100000, height=100000),
         cli=with_settings("--width", "100000", "--height", "100000")),
    Case("video_too_long", 4, InvalidInputError, ("1025 frames at 25 fps is too long", "20 s", "497 frames"),
         api=lambda f, m, out: sample_video(m["video"], frames=1025),
         cli=lambda f, out: generate_video_args(f, out, "ltxv", "--frames", "1025", "--frame-rate", "25")),
    Case("video_too_wide", 4, InvalidInputError, ("width 4096 is too large", "2048 px"),
         api=lambda f, m, out: sample_video(m["video"], width=4096)),
    Case("out_of_memory", 4, InvalidInputError, ("this run needs at least", "of cpu memory",
                                              "the activations for the latent (1, 16, 6, 8)",
                                              "but only 1.0 KiB is available"),
         api=lambda f, m, out: sample_image(m["image"]), cli=with_settings(), setup=no_memory),
    # 5: seeds exactly 0 .. 2**64 - 1, refused before loading anything; integers checked as integers
    Case("seed_2_64", 5, InvalidInputError, ("seed must be a whole number from 0 to 18446744073709551615",
                                            "got 18446744073709551616"),
         api=lambda f, m, out: sample_image(m["image"], seed=2**64), cli=before_loading("--seed", str(2**64))),
    Case("seed_minus_1", 5, InvalidInputError, ("seed must be a whole number", "-1 is not a random seed", "got -1"),
         api=lambda f, m, out: image_pipeline(f, seed=-1), cli=before_loading("--seed", "-1")),
    Case("steps_2_5", 5, InvalidInputError, ("steps must be a whole number from 1 to 10000", "got 2.5"),
         api=lambda f, m, out: sample_image(m["image"], steps=2.5)),
    Case("batch_size_float", 5, InvalidInputError, ("batch_size must be a whole number", "got 2.0"),
         api=lambda f, m, out: image_pipeline(f, batch_size=2.0)),
    Case("steps_not_a_number", 5, SystemExit, ("argument --steps: invalid int value: '2.5'",),
         cli=with_settings("--steps", "2.5")),
    # 6: the output location is checked before the models load
    Case("out_is_a_folder", 6, InvalidInputError, ("cannot write {folder}: it is a folder",),
         api=lambda f, m, out: save_images([], out.parent), cli=lambda f, out: generate_args(f, out.parent)),
    Case("out_under_a_file", 6, InvalidInputError, ("cannot write", "{transformer} is a file, not a folder"),
         api=lambda f, m, out: save_images(to_pil(torch.zeros(1, 3, 8, 8)), f["transformer"] / "x.png"),
         cli=lambda f, out: generate_args(f, f["transformer"] / "x.png")),
    Case("out_unwritable", 6, InvalidInputError, ("cannot write /proc/lumina/x.png: no such file or directory",),
         cli=lambda f, out: generate_args(f, Path("/proc/lumina/x.png"))),
    # 7: the first non-finite tensor, where, the family and dtype used, the causes in order
    Case("transformer_nan", 7, SamplingError, ("the Lumina-Image 2.0 transformer returned NaN/inf at step 1 of 2",
                                               "computing in float32", "layers.1.attention.qkv.weight holds",
                                               "{transformer_nan} is damaged"),
         api=lambda f, m, out: image_pipeline(f, transformer="transformer_nan"),
         cli=lambda f, out: generate_args(f, out, "transformer_nan"), absent=("float16", "bfloat16")),
    Case("text_encoder_nan", 7, SamplingError, ("the positive conditioning holds NaN/inf", "the text encoder"),
         api=lambda f, m, out: image_pipeline(f, text_encoder="text_encoder_nan"),
         cli=lambda f, out: generate_args(f, out, "transformer", "text_encoder_nan")),
    # 8: pickles that are not checkpoints: what they hold, the first offending global, never weights_only=False
    Case("pickle_runs_a_command", 8, CheckpointError, ("{runs_a_command} is a Python pickle", "posix.system"),
         api=lambda f, m, out: lc.load_transformer(f["runs_a_command"]),
         cli=lambda f, out: generate_args(f, out, "runs_a_command"), absent=("weights_only=False", "truncated")),
    Case("torch_zip_runs_a_command", 8, CheckpointError, ("{runs_a_command_zip}: refusing to unpickle",
                                                          "not tensors (the first is posix.system)"),
         api=lambda f, m, out: lc.load_transformer(f["runs_a_command_zip"]),
         cli=lambda f, out: generate_args(f, out, "runs_a_command_zip"), absent=("weights_only=False",)),
    Case("plain_pickle", 8, CheckpointError, ("{plain_pickle} is a Python pickle (pickle.dump)", "no tensors"),
         api=lambda f, m, out: lc.load_transformer(f["plain_pickle"]),
         cli=lambda f, out: generate_args(f, out, "plain_pickle"), absent=("truncated", "interrupted download")),
    # 9: one transposed weight is named alone, with its expected shape
    Case("transposed_weight", 9, CheckpointError, ("{transposed}", "Wrong shape: layers.0.feed_forward.w1.weight "
                                                   "(64, 256) (expected (256, 64))."),
         api=lambda f, m, out: lc.load_transformer(f["transposed"]),
         cli=lambda f, out: generate_args(f, out, "transposed"), absent=("layers.1", "refiner", "in all")),
    # 10: Lumina-Next's Gemma (v1) is recognised wherever a file is described
    Case("gemma1_as_transformer", 10, UnsupportedModelError, ("{gemma1} holds a Gemma (v1) text encoder",
                                                              "Load it with load_text_encoder"),
         api=lambda f, m, out: lc.load_transformer(f["gemma1"]),
         cli=lambda f, out: generate_args(f, out, "gemma1"), absent=("no model this package recognises",)),
    # 11: an LTX VAE whose decoder widths grow
    Case("ltx_vae_widths_grow", 11, CheckpointError, ("{ltx_vae_grows}", "decoder.up_blocks.1: the widths",
                                                      "the widths go from 1 to 32 channels"),
         api=lambda f, m, out: lc.load_vae(f["ltx_vae_grows"]),
         cli=lambda f, out: generate_video_args(f, out, "ltx_vae_grows"),
         absent=("ZeroDivisionError",)),
]  # fmt: skip


def expected_texts(case: Case, files: dict[str, Path], out: Path) -> list[str]:
    paths = {name: str(path) for name, path in files.items()} | {"folder": str(out.parent)}
    return [text.format(**paths) for text in case.names]


def assert_one_line(message: str, case: Case, files, out) -> None:
    assert "\n" not in message.strip() and "Traceback" not in message, message
    for text in expected_texts(case, files, out):
        assert text in message, f"{text!r} not in {message!r}"
    for text in case.absent:
        assert text not in message, f"{text!r} in {message!r}"


def assert_nothing_written(folder: Path) -> None:
    """No output under its final name and no temporary file beside it: the folder holds only what was there."""
    assert sorted(p.name for p in folder.iterdir()) == ["before.txt"]


def assert_still_usable(models) -> None:
    """The same process still samples after the failure."""
    assert torch.isfinite(sample_image(models["image"], steps=1)).all()


@pytest.fixture(scope="module")
def models(model, video_model):
    return {"image": model, "video": video_model}


@pytest.fixture
def out(tmp_path) -> Path:
    (tmp_path / "before.txt").write_text("a file that was there before the run")
    return tmp_path / "fox.png"


def ids(cases):
    return [f"{case.item:02d}-{case.id}" for case in cases]


API_CASES = [case for case in CASES if case.api is not None]
CLI_CASES = [case for case in CASES if case.cli is not None]


@pytest.mark.parametrize("case", API_CASES, ids=ids(API_CASES))
def test_api(case, files, models, out, monkeypatch):
    if case.setup:
        case.setup(monkeypatch)
    with pytest.raises(case.error) as caught:
        case.api(files, models, out)
    assert isinstance(caught.value, lc.LuminaCoreError)
    assert_one_line(str(caught.value), case, files, out)
    assert_nothing_written(out.parent)
    assert not files["command_ran"].exists()
    monkeypatch.undo()
    assert_still_usable(models)


@pytest.mark.parametrize("case", CLI_CASES, ids=ids(CLI_CASES))
def test_cli(case, files, models, out, monkeypatch, capsys):
    if case.setup:
        case.setup(monkeypatch)
    try:
        code = main(case.cli(files, out))
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    captured = capsys.readouterr()
    assert code == EXIT_ERROR
    # stderr: the sampler's progress bar (if sampling started), then the one error line
    lines = [line for line in re.split(r"[\r\n]+", captured.err) if line.strip()]
    error_lines = [line for line in lines if not line.startswith("sampling:")]
    assert len(error_lines) == 1 and error_lines[0].startswith("error: ") and captured.err.endswith("\n"), lines
    assert_one_line(error_lines[0], case, files, out)
    assert captured.out == ""
    assert_nothing_written(out.parent)
    assert not files["command_ran"].exists()
    monkeypatch.undo()
    assert_still_usable(models)


def test_every_item_has_a_case():
    assert {case.item for case in CASES} | {2, 12} == set(range(1, 13))  # 2: test_converter.py, 12: test_runner.py
