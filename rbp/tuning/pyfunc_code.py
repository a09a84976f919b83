"""The code of an rbp MLflow Model (MLflow's "models from code"): MLflow copies this file into the
model and runs it when the model is loaded, instead of unpickling an object."""

from mlflow.models import set_model

from rbp.tuning.mlflow_model import RbpPyfunc

set_model(RbpPyfunc())
