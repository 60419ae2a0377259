"""KServe model server of the Titanic model: predictor and transformer (`python -m pipeline.serving`)."""
