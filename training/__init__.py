"""Training of MedScreen's shipped models (TensorFlow/Keras; never imported by the app).

One command per model (``python -m training.train_tb``, ``training.train_pneumonia``,
``training.train_modality``) writes a run folder (Keras model, split CSV, curves,
evaluation JSON) that ``python -m export.export_model`` turns into ``assets/models/<id>.*``.
Input arrays are always built with the engine's preprocessing (``training.data``), so the
model is trained on exactly what the app will feed it.
"""
