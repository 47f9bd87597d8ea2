"""The torch-free inference runtime: everything ``inspect`` and ``serve`` need to run an exported model
(``defectlab export onnx RUN``) with onnxruntime, numpy and Pillow only.

Nothing in this package imports torch, torchvision, scipy or matplotlib (a test runs it with those
blocked). The torch engine (``defectlab.anomaly.detector.Detector``) is built on the same core
(``runtime.detector.DetectorCore``): one implementation of the input geometry, decoding, the map's way
back to the original image (``runtime.geometry``), the defect boxes (``runtime.regions``) and the heatmap
colours (``runtime.colormap``). ``defectlab-runtime`` (``runtime.cli``) is the command.
"""
