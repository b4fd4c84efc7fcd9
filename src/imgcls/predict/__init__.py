"""Prediction: the :class:`Classifier` and streaming, resumable batched inference.

- :mod:`~imgcls.predict.inputs`: the files that inputs (files, folders, globs, lists) name;
- :mod:`~imgcls.predict.decode`: decoding in worker processes, ahead of the model;
- :mod:`~imgcls.predict.classifier`: the model on PyTorch or ONNX Runtime, logits to rows;
- :mod:`~imgcls.predict.runner`: the one runner that streams items (files, or detection crops
  from :mod:`imgcls.cameratrap`) through decoding and the model into a writer, resumably.
"""

from imgcls.predict.classifier import Classifier, OnnxBackend, TorchBackend, exported_onnx, onnx_info
from imgcls.predict.decode import decode_crop, decode_crops, decode_for_model, decode_stream, die_with_parent
from imgcls.predict.inputs import check_inputs, count_inputs, image_suffixes, iter_inputs, not_an_image_name
from imgcls.predict.runner import PredictSummary, predict_files, run_predict, run_settings

__all__ = [
    "Classifier",
    "OnnxBackend",
    "PredictSummary",
    "TorchBackend",
    "check_inputs",
    "count_inputs",
    "decode_crop",
    "decode_crops",
    "decode_for_model",
    "decode_stream",
    "die_with_parent",
    "exported_onnx",
    "image_suffixes",
    "iter_inputs",
    "not_an_image_name",
    "onnx_info",
    "predict_files",
    "run_predict",
    "run_settings",
]
