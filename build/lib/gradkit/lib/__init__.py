"""The math and the nets the demonstrations use: functions, derivatives, curvature, models,
data, training, the weight cache, diagnostics and the activation-memory meter."""
