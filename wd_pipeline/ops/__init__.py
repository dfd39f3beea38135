"""Running the servers: the local Prefect + MLflow stack, its commands, deployments and MLflow basic auth.
Never imports Prefect or MLflow at module load: the stack commands stay fast."""
