"""Pre- and post-processing compiled into a package: camera frames in, class names and boxes out.

* :mod:`.spec` - what the user asks for (``--preprocess``, ``--postprocess``, ``--labels``, a TOML file);
* :mod:`.preprocess` - frame -> model input, as an ONNX graph and in NumPy;
* :mod:`.classify` - softmax / top-k, as an ONNX graph and in NumPy;
* :mod:`.detect` - YOLO decoding and non-maximum suppression, as an ONNX graph and in NumPy;
* :mod:`.stages` - the device side: runs the graphs around the model, whatever its backend.

Nothing here imports onnx at import time: the device runtime reads only :mod:`.stages`.
"""
