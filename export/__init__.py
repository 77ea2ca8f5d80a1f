"""Export of trained runs to ``assets/models`` (ONNX + manifest + model card)."""
