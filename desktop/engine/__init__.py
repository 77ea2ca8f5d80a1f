"""The Qt-free, TensorFlow-free screening engine.

Everything the GUI, the command line, training and export share lives here: loading scans,
the one preprocessing definition, model manifests and ONNX Runtime sessions, the screening
pipeline, the batch runner, the results store and the reports.
"""
