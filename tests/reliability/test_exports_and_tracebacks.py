"""Issue 17, sections 4, 6 and 8: an ONNX export is tied to its own file (a swapped, truncated or non-ONNX model.onnx
is refused), and inputs that ended in a traceback (a text file as .pth weights, a read-only run under `sft eval`, a
zero-byte or broken image, an FPN too narrow for its GroupNorm) end in exit 2 and one message naming the file."""

import io
import json
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sft.errors import UserError
from tests.conftest import sft, tiny_args

EXPORTS = ("export*", "eval*")


def one_line(result) -> str:
    return " ".join(result.output.split())


def copy_run(run: Path, to: Path) -> Path:
    """A private copy of a trained run (its exports and evaluations left out): tests may damage it."""
    shutil.copytree(run, to, ignore=shutil.ignore_patterns(*EXPORTS))
    return to


def png_bytes(seed: int = 0, size: int = 32) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def broken_deflate_png(path: Path, seed: int = 0) -> Path:
    """A PNG whose compressed pixels are damaged but whose chunk checksums are right: PIL's verify() passes it (so the
    data loads), decoding it fails (in a loader worker)."""
    data = bytearray(png_bytes(seed))
    at = data.index(b"IDAT")
    length, start = int.from_bytes(data[at - 4:at], "big"), at + 4
    for k in range(start + 2 + length // 2, start + length):
        data[k] ^= 0x55
    data[start + length:start + length + 4] = zlib.crc32(bytes(data[at:start + length])).to_bytes(4, "big")
    path.write_bytes(bytes(data))
    return path


def image_folder(root: Path, classes=("cat", "dog"), per_class=6) -> Path:
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            (root / name / f"{k}.png").write_bytes(png_bytes(10 * c + k))
    return root


def refuse_writes_under(monkeypatch, folder: Path) -> None:
    """Temporary files and folders under `folder` fail as in a read-only folder (tests run as root, whom chmod does
    not stop); every atomic write of sft starts with one."""
    folder = folder.resolve()
    for name in ("mkstemp", "mkdtemp"):
        real = getattr(tempfile, name)

        def refuse(*args, _real=real, **kwargs):
            where = kwargs.get("dir")
            if where is not None and (Path(where).resolve() == folder or folder in Path(where).resolve().parents):
                raise PermissionError(13, "Permission denied", str(where))
            return _real(*args, **kwargs)
        monkeypatch.setattr(tempfile, name, refuse)


@pytest.fixture(scope="module")
def exported_run(tiny_image_run, tmp_path_factory) -> Path:
    """A copy of the tiny image run with its ONNX export (RUN/export)."""
    run = copy_run(tiny_image_run, tmp_path_factory.mktemp("exported") / "run")
    result = sft("export", run)
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture
def image_file(tmp_path) -> Path:
    path = tmp_path / "shoe.png"
    path.write_bytes(png_bytes())
    return path


# -- 4: the export's model.onnx is the file its model.json describes ----------------------------------------------

def test_a_swapped_onnx_file_is_refused_by_predict_and_serve(exported_run, tmp_path, image_file):
    import onnx
    from sft.tasks import task_of_run
    run = copy_run(exported_run, tmp_path / "run")
    shutil.copytree(exported_run / "export", run / "export")
    assert sft("predict", run, image_file, "--engine", "onnx").exit_code == 0
    other = onnx.load(str(run / "export" / "model.onnx"))  # the same graph with other weights: another run's export
    weights = next(t for t in other.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.raw_data))
    weights.raw_data = (np.frombuffer(weights.raw_data, np.float32) + 1).astype(np.float32).tobytes()
    onnx.save(other, str(run / "export" / "model.onnx"))
    result = sft("predict", run, image_file, "--engine", "onnx")
    assert result.exit_code == 2, result.output
    assert f"{run / 'export' / 'model.onnx'}: not the file this export wrote" in one_line(result)
    assert f"sft export {run} --format onnx --overwrite" in one_line(result)
    with pytest.raises(UserError, match="not the file this export wrote"):
        task = task_of_run(run)  # `sft serve --engine onnx` loads it so, before it listens
        task.predictor(run, task.options["serve"](engine="onnx"))


def test_a_truncated_or_non_onnx_model_file_is_an_error_naming_it(exported_run, tmp_path, image_file):
    from sft.models.export import OnnxModule
    run = copy_run(exported_run, tmp_path / "run")
    shutil.copytree(exported_run / "export", run / "export")
    model = run / "export" / "model.onnx"
    model.write_bytes(model.read_bytes()[:1000])
    result = sft("predict", run, image_file, "--engine", "onnx")
    assert result.exit_code == 2 and f"{model}: not the file this export wrote" in one_line(result), result.output
    for damage in (model.read_bytes(), b"notes, not a model\n"):  # onnxruntime itself: InvalidProtobuf
        (tmp_path / "other.onnx").write_bytes(damage)
        with pytest.raises(UserError, match=r"other\.onnx: not an ONNX model onnxruntime can load .*export again"):
            OnnxModule(tmp_path / "other.onnx")


# -- 6: tracebacks that become one message -------------------------------------------------------------------------

def test_a_text_file_named_pth_as_weights(tmp_path, fashion_slice, recipe_file):
    for i, text in enumerate(("some notes about the run\nline 2\n", "hello notes\n")):  # IndexError, KeyError
        notes = tmp_path / f"notes{i}.pth"
        notes.write_text(text)
        result = sft("train", recipe_file, *tiny_args(tmp_path, fashion_slice), f"model.weights={notes}")
        assert result.exit_code == 2, result.output
        assert f"{notes}: damaged or not a PyTorch file" in one_line(result)


def test_eval_of_a_run_that_cannot_be_written(tiny_image_run, tmp_path, monkeypatch):
    run = copy_run(tiny_image_run, tmp_path / "run")
    info = json.loads((run / "model.json").read_text())
    info.get("extra", {}).pop("temperature_fitted", None)  # sft eval fits the temperature and stores it here
    (run / "model.json").write_text(json.dumps(info))
    with monkeypatch.context() as mp:
        refuse_writes_under(mp, run)
        mp.setattr("sft.tasks.classification.calibration.collect_logits", lambda *a, **k: pytest.fail("worked"))
        result = sft("eval", run)
        assert result.exit_code == 2, result.output
        assert f"{run}: cannot be written (Permission denied)" in one_line(result) and "--out" in one_line(result)
        result = sft("eval", run, "--out", tmp_path / "elsewhere")  # the temperature still goes to the run
        assert result.exit_code == 2, result.output
        assert f"{run}: cannot be written (Permission denied)" in one_line(result)
        assert "model.json" in one_line(result) and "writable" in one_line(result)
    assert sft("eval", run).exit_code == 0  # writable: the temperature is stored
    with monkeypatch.context() as mp:
        refuse_writes_under(mp, run)
        result = sft("eval", run)  # the temperature is there; the evaluation folder cannot be
        assert result.exit_code == 2 and "--out" in one_line(result), result.output
        result = sft("eval", run, "--out", tmp_path / "elsewhere")
        assert result.exit_code == 0, result.output


def segmentation_folder(root: Path, count: int = 4) -> Path:
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for k in range(count):
        (root / "images" / f"{k}.png").write_bytes(png_bytes(k))
        Image.fromarray((np.arange(32 * 32).reshape(32, 32) % 2).astype(np.uint8)).save(root / "masks" / f"{k}.png")
    return root


def test_a_zero_byte_image_in_a_segmentation_split(tmp_path):
    from sft.tasks.segmentation.data import read_pairs
    data = segmentation_folder(tmp_path / "data")
    (data / "images" / "2.png").write_bytes(b"")
    with pytest.raises(UserError, match=rf"{data / 'images' / '2.png'}: not a readable image"):
        read_pairs(data, "folder", ["background", "thing"], 255, None)


def test_fpn_decoder_too_narrow_for_its_group_norm_is_a_recipe_error(tmp_path, recipe_file):
    from sft import load_recipe
    segmentation = ["task=segmentation", f"data.train={tmp_path}"]
    for width in (16, 96):
        with pytest.raises(UserError, match="model.decoder_channels: .*multiple of 64"):
            load_recipe(None, [*segmentation, "model.decoder=fpn", f"model.decoder_channels={width}"])
    load_recipe(None, [*segmentation, "model.decoder=fpn", "model.decoder_channels=64"])
    load_recipe(None, [*segmentation, "model.decoder=unet", "model.decoder_channels=16"])
    result = sft("train", recipe_file, "task=segmentation", "model.decoder=fpn", "model.decoder_channels=16",
                 f"data.train={tmp_path}", f"run_dir={tmp_path / 'run'}")
    assert result.exit_code == 2 and "multiple of 64" in one_line(result), result.output


@pytest.mark.parametrize("strategy", ["full", "linear-probe"])  # loader workers of training, of the feature cache
def test_a_broken_png_found_by_a_loader_worker(tmp_path, recipe_file, strategy):
    data = image_folder(tmp_path / "data")
    broken = broken_deflate_png(data / "dog" / "3.png")
    result = sft("train", recipe_file, f"data.train={data}", "data.image_size=32", "data.val_fraction=0.3",
                 "data.num_workers=1", "model.backbone=timm/test_efficientnet", "model.weights=none",
                 "trainer.epochs=1", "trainer.progress=false", f"strategy.name={strategy}",
                 f"run_dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}")
    assert result.exit_code == 2, result.output
    message = one_line(result)
    assert f"{broken}: cannot decode image" in message
    assert "worker" not in message and "File \"" not in message


# -- 8: a server's answer names the item, never a Python object ---------------------------------------------------

def test_serve_answer_for_an_unreadable_image_names_the_item(tiny_image_run):
    from sft.serve.server import _prepare_all
    from sft.tasks import task_of_run
    task = task_of_run(tiny_image_run)
    predictor = task.predictor(tiny_image_run, task.options["serve"]())
    with pytest.raises(UserError) as error:
        _prepare_all(predictor.prepare, [png_bytes(), b"hello, not an image"])
    assert str(error.value).startswith("item 1: not an image that can be read")
    assert "0x" not in str(error.value) and "BytesIO" not in str(error.value)


def test_every_write_into_a_folder_that_refuses_it_is_a_user_error(tmp_path, monkeypatch):
    """What no task checks up front (a segmentation run's temperature, a rebuilt report) still ends in a message."""
    from sft.core.atomic import atomic_write_dir, atomic_write_json
    refuse_writes_under(monkeypatch, tmp_path)
    for write in (lambda: atomic_write_json(tmp_path / "model.json", {}),
                  lambda: atomic_write_dir(tmp_path / "eval", lambda folder: None)):
        with pytest.raises(UserError, match=rf"{tmp_path}: cannot be written \(Permission denied\)"):
            write()
