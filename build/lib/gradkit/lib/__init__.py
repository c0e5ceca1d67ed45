"""The math and the nets the demonstrations use: functions, derivatives, curvature, models, data, training, diagnostics."""
