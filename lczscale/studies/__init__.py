"""What the researchers run with lczscale: evaluation, its report, the experiments, the demo."""

from lczscale.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "lczscale.studies.evaluate": ["evaluate", "scores"],
        "lczscale.studies.experiment": ["ExperimentConfig", "run_experiment"],
        "lczscale.studies.demo": ["run_demo"],
    },
)
