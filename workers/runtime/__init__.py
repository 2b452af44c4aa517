"""The inference runtime: engines (ONNX Runtime, torch), preprocessing, the export check, the serving cache."""
