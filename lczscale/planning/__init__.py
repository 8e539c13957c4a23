"""Plan a map run before anything is written: its tiles, their provenance, what is already done.

``prepare(cfg)`` gives the ``MapPlan`` the executors run; ``lineage`` refuses to mix two
provenances in one cube; ``blocks`` plans the 100 m products pass.
"""

from lczscale.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "lczscale.planning.map_plan": ["MapPlan", "prepare"],
        "lczscale.planning.lineage": ["check_lineage"],
        "lczscale.planning.blocks": ["BlockTask", "plan_blocks"],
    },
)
