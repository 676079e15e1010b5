"""Export a model folder to ONNX, optionally quantized to int8.

The exported graph takes the normalized float32 batch ``input``
``(N, 3, S, S)`` (dynamic ``N``) and returns ``logits`` ``(N, C)`` and, when
the model folder holds out-of-distribution statistics (:mod:`bloodcell.ood.score`),
``ood_score`` ``(N,)``, and ``familiarity`` ``(N,)`` when it also holds the familiarity check
(``familiar.safetensors``). Everything else a runtime needs travels in the file's
``metadata_props``:

``bloodcell.format``        the format tag (:data:`bloodcell.core.model_folder.ONNX_FORMAT`)
``bloodcell.preprocess``    :meth:`PreprocessConfig.to_dict` as JSON (crop, size, mean/std, class names)
``bloodcell.class_names``   the output classes, as a JSON list
``bloodcell.calibration``   temperature and abstention threshold (``{}`` if never calibrated)
``bloodcell.ood``           the out-of-distribution threshold and its evaluation (``{}`` if none)
``bloodcell.model``         the rest of ``model.json`` (architecture, metrics, model card), as JSON
``bloodcell.quantization``  ``none``, ``dynamic-int8`` or ``static-int8``
``bloodcell.weights_sha256`` digest of the weights it was exported from

Quantization: ``dynamic`` stores the weights of the linear layers in int8 and
quantizes their activations at run time (no data needed); convolutions stay in
float32, because onnxruntime's dynamic int8 convolution (``ConvInteger``)
destroyed the accuracy of the networks tried (EfficientNet-Lite0: 10% argmax
agreement with float32). ``static`` writes QDQ int8 for every layer with
activation ranges measured on calibration images, with 7-bit weights
(``reduce_range``): on x86 CPUs without VNNI, onnxruntime multiplies uint8
activations by int8 weights with an instruction whose 16-bit sums saturate,
and full 8-bit weights cost the default model 3.7% argmax agreement with
float32 on held-out cells (96.3%, against 99.7% with 7-bit weights). The
out-of-distribution head stays in float32 either way.

``half_storage`` stores a float32 graph's large weight tensors as float16,
each followed by a ``Cast`` back to float32: the file is half the size and
onnxruntime folds the casts when it loads the graph, so inference still runs
in float32 at the same speed. It is lossless for weights that are already
float16 values (``bloodcell export --format default --half-weights``) and
rounds the others to about three significant digits.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from bloodcell.core import __version__
from bloodcell.core.errors import ConfigError, DataError, ModelError
from bloodcell.core.files import atomic_write_with, check_writable_file
from bloodcell.core.model_folder import ONNX as ONNX_FILE
from bloodcell.core.model_folder import ONNX_FORMAT as FORMAT
from bloodcell.core.model_folder import weights_digest
from bloodcell.core.preprocess import normalize
from bloodcell.networks.loading import LoadedModel, load_model
from bloodcell.ood import score as ood
from bloodcell.packaging.choices import OPSET, QUANTIZATIONS


def metadata_for(meta: dict, folder: Path, quantization: str) -> dict[str, str]:
    """The ``metadata_props`` of an exported model (see the module docstring)."""
    rest = {k: v for k, v in meta.items() if k not in ("history", "calibration", "ood", "preprocess")}
    tag = {"none": "none", "dynamic": "dynamic-int8", "static": "static-int8"}[quantization]
    return {
        "bloodcell.format": FORMAT,
        "bloodcell.version": __version__,
        "bloodcell.preprocess": json.dumps(meta["preprocess"]),
        "bloodcell.class_names": json.dumps(list(meta["preprocess"]["class_names"])),
        "bloodcell.calibration": json.dumps(meta.get("calibration") or {}),
        "bloodcell.ood": json.dumps(meta.get("ood") or {}),
        "bloodcell.model": json.dumps(rest),
        "bloodcell.quantization": tag,
        "bloodcell.weights_sha256": weights_digest(folder),
    }


def _set_metadata(model_proto, props: dict[str, str]) -> None:
    del model_proto.metadata_props[:]
    for key, value in props.items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value
    model_proto.producer_name = "bloodcell"
    model_proto.producer_version = __version__
    model_proto.doc_string = (
        "Blood-cell classifier exported by bloodcell. Input: normalized float32 NCHW batch; see the "
        "bloodcell.preprocess metadata for crop, size and mean/std."
    )


def _export_float(loaded, path: Path, opset: int, keep_batchnorm: bool = False) -> list[str]:
    head, familiar = ood.load_head(loaded.path), ood.load_familiar(loaded.path)
    n = len(loaded.class_names)
    if head is not None:
        module = ood.ScoredModel(loaded.module, n, head, familiar, split=True).eval()
        outputs = ["logits", "ood_score"] + (["familiarity"] if familiar is not None else [])
    else:
        module = loaded.module.eval()
        outputs = ["logits"]
    size = loaded.preprocess.image_size
    dummy = torch.zeros(2, 3, size, size)
    axes = {"input": {0: "batch"}, **{o: {0: "batch"} for o in outputs}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            _torch_export(module, dummy, path, outputs, axes, opset, keep_batchnorm)
        except Exception as e:  # noqa: BLE001 - the exporter raises many types
            first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise ModelError(f"{loaded.path}: ONNX export of {loaded.meta.get('architecture')!r} failed: {first[:400]}") from None
    return outputs


def _torch_export(module, dummy, path: Path, outputs: list[str], axes: dict, opset: int,
                  keep_batchnorm: bool = False) -> None:
    # keep_batchnorm leaves batch norm as its own (inference-mode) node instead of folding it into the
    # convolution's weights, so the stored weights stay exactly the model's; onnxruntime fuses them at load.
    extra = {"training": torch.onnx.TrainingMode.PRESERVE} if keep_batchnorm else {}
    torch.onnx.export(
        module,
        (dummy,),
        str(path),
        dynamo=False,
        input_names=["input"],
        output_names=outputs,
        dynamic_axes=axes,
        opset_version=opset,
        do_constant_folding=True,
        **extra,
    )


def _store_half(proto, min_elements: int = 1024) -> int:
    """Store the network's float32 weight matrices (at least ``min_elements`` values) as float16 + Cast.

    Only multi-dimensional weights of convolutions and matrix products are
    stored in half precision; biases and the out-of-distribution head
    (``/head/`` nodes, whose whitening needs float32) stay as they are.
    Returns how many tensors were converted.
    """
    graph = proto.graph
    users: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    taken = {n for node in graph.node for n in (*node.input, *node.output)} | {i.name for i in graph.initializer}
    kept, casts = [], []
    for init in graph.initializer:
        weight = users.get(init.name) and all(
            u.op_type in ("Conv", "Gemm", "MatMul") and not u.name.startswith("/head/") for u in users[init.name])
        if (not weight or init.data_type != TensorProto.FLOAT or len(init.dims) < 2
                or int(np.prod(init.dims)) < min_elements):
            kept.append(init)
            continue
        name = f"{init.name}__float16"
        while name in taken:
            name += "_"
        taken.add(name)
        kept.append(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), name))
        casts.append(helper.make_node("Cast", [name], [init.name], to=TensorProto.FLOAT, name=f"{name}_cast"))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    return len(casts)


class _Calibration:
    """onnxruntime ``CalibrationDataReader`` over prepared uint8 images."""

    def __init__(self, images: np.ndarray, preprocess, batch_size: int = 16):
        self._batches = iter(
            [normalize(images[i : i + batch_size], preprocess) for i in range(0, len(images), batch_size)]
        )

    def get_next(self):
        batch = next(self._batches, None)
        return None if batch is None else {"input": batch}

    def rewind(self):  # pragma: no cover - called by some onnxruntime versions only
        pass


def _head_nodes(model_path: Path) -> list[str]:
    """The scoring heads' nodes (the cell check and the familiarity check), kept in float32: quantized, their
    distances would be clipped at the range calibration images span, where the far cells they exist for lie."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    return [n.name for n in graph.node if n.name.startswith(("/head/", "/familiar/"))]


def _quantize(float_path: Path, out: Path, quantization: str, calibration: np.ndarray | None, preprocess) -> None:
    # deferred: onnxruntime's quantization tools are large and only int8 exports need them
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    exclude = _head_nodes(float_path)
    if quantization == "dynamic":
        quantize_dynamic(
            str(float_path),
            str(out),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
            nodes_to_exclude=exclude,
        )
        return
    if calibration is None or len(calibration) == 0:
        raise ConfigError(
            "Static int8 quantization needs calibration images: pass --calibration-data with a folder, "
            ".npz or manifest of real cells (a few hundred are enough), or use --quantize dynamic."
        )
    from onnxruntime.quantization.shape_inference import quant_pre_process  # deferred, as above

    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        pre = Path(tmp) / "pre.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(float_path), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(out),
            _Calibration(calibration, preprocess),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=True,  # 7-bit weights: u8 x s8 products cannot saturate on CPUs without VNNI (see above)
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=exclude,
        )


def export_onnx(
    model: str | Path,
    out: str | Path | None = None,
    *,
    quantize: str = "none",
    calibration: np.ndarray | None = None,
    opset: int = OPSET,
    half_storage: bool = False,
) -> Path:
    """Export a model folder to ONNX.

    Parameters
    ----------
    model : str or Path
        A model folder (``model.json`` + weights; ensembles included).
    out : str or Path, optional
        Output file (default ``<model>/model.onnx``).
    quantize : {"none", "dynamic", "static"}
        int8 quantization (see the module docstring).
    calibration : ndarray of uint8, optional
        Prepared images ``(N, S, S, 3)`` for ``quantize="static"``.
    opset : int
        ONNX opset (at least 17).
    half_storage : bool
        Store the float32 weights as float16 (see the module docstring);
        ignored for int8 graphs.

    Returns
    -------
    Path
        The written file (replaced atomically).
    """
    _check_options(quantize, opset)
    loaded = load_model(model, "cpu")
    out = Path(out) if out is not None else loaded.path / ONNX_FILE
    if out.suffix != ".onnx":
        raise ConfigError(f"{out}: the output file name should end in .onnx.")
    check_writable_file(out, "ONNX file", "-o")
    _check_calibration(calibration, loaded.preprocess.image_size)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as tmp:
        proto = _graph(loaded, Path(tmp), quantize, calibration, opset, half_storage)
        atomic_write_with(out, lambda path: onnx.save(proto, path))
    return out


def _check_options(quantize: str, opset: int) -> None:
    if quantize not in QUANTIZATIONS:
        raise ConfigError(f"quantize must be one of {list(QUANTIZATIONS)}, got {quantize!r}.")
    if opset < 17:
        raise ConfigError(f"opset must be 17 or newer, got {opset}.")


def _check_calibration(calibration: np.ndarray | None, size: int) -> None:
    if calibration is not None and (calibration.dtype != np.uint8 or calibration.shape[1:] != (size, size, 3)):
        raise DataError(f"Calibration images must be prepared uint8 (N, {size}, {size}, 3), "
                        f"got {calibration.dtype} {calibration.shape}.")


def _graph(loaded: LoadedModel, tmp: Path, quantize: str, calibration, opset: int, half_storage: bool):
    """The checked ONNX graph of ``loaded``, quantized or with half-precision storage, with its metadata."""
    float_path = tmp / "float.onnx"
    _export_float(loaded, float_path, opset, keep_batchnorm=half_storage and quantize == "none")
    final = float_path
    if quantize != "none":
        final = tmp / "int8.onnx"
        _quantize(float_path, final, quantize, calibration, loaded.preprocess)
    proto = onnx.load(str(final))
    if half_storage and quantize == "none":
        _store_half(proto)
    _set_metadata(proto, metadata_for(loaded.meta, loaded.path, quantize))
    onnx.checker.check_model(proto)
    return proto


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict (no inference session needed)."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - any parse failure is the file's fault
        raise ModelError(f"{path}: not a readable ONNX file ({e}).") from None
    return {p.key: p.value for p in proto.metadata_props}
