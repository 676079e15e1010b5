"""The export choices as plain values: formats, int8 quantizations, ONNX opset and the default
model's size budget. The command line builds ``bloodcell export --help`` from them without loading
PyTorch, which the export itself needs."""

#: What ``bloodcell export`` writes: an ``.onnx`` file, or the packaged default model folder.
FORMATS = ("onnx", "default")
#: int8 quantization of the ONNX model.
QUANTIZATIONS = ("none", "dynamic", "static")
#: ONNX opset of the exported graph.
OPSET = 17
#: Size budget of the packaged default model in MB: a two-member ensemble with float16 weights,
#: PyTorch and ONNX, and its int8 ONNX twin.
MAX_MB = 50.0
#: Images sampled for static int8 calibration of an ``.onnx`` export.
CALIBRATION_IMAGES = 256
#: Training images per class the packaged model's out-of-distribution checks are fitted on.
PER_CLASS = 300
