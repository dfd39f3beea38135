"""MLflow: where runs go and how a pipeline run is laid out in them, the model registry and its gate,
and the lock that lets one run at a time move @champion."""
