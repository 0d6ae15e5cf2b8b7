"""polytask.balance: turn T task losses into one update, usable in any training loop.

    import polytask.balance as balance
    balancer = balance.get("pcgrad")                 # or balance.get("mgda", update_every=3)
    balancer.setup(task_names)
    result = balance.backward(losses_by_task, shared_params, balancer)   # fills .grad
    optimizer.step()
    log(result.weights, result.gramian)

Methods are pure (`polytask.balance.base`: loss weightings, Gramian weightings, Jacobian
aggregators) and every concrete class is exported here (`balance.PCGrad()` can be passed
to `balance.backward` directly, with `options=balance.Options(...)`); the engine
(`polytask.balance.engine`) does the gradient work.
"""

from polytask.balance import aggregation, weighting
from polytask.balance.aggregation.aligned_mtl import AlignedMTL
from polytask.balance.aggregation.cagrad import CAGrad
from polytask.balance.aggregation.config import ConFIG
from polytask.balance.aggregation.dualproj import DualProj
from polytask.balance.aggregation.graddrop import GradDrop
from polytask.balance.aggregation.gradvac import GradVac
from polytask.balance.aggregation.imtl_g import IMTLG
from polytask.balance.aggregation.m_config import MomentumConFIG
from polytask.balance.aggregation.mgda import MGDA
from polytask.balance.aggregation.nash_mtl import NashMTL
from polytask.balance.aggregation.pcgrad import PCGrad
from polytask.balance.aggregation.upgrad import UPGrad
from polytask.balance.base import (
    BALANCERS,
    GramianWeighting,
    JacobianAggregator,
    LossWeighting,
    Method,
    names,
)
from polytask.balance.engine import (
    OPTION_NAMES,
    Balancer,
    BalanceResult,
    EngineState,
    Options,
    backward,
    get,
)
from polytask.balance.weighting.dwa import DynamicWeightAverage
from polytask.balance.weighting.ew import EqualWeighting
from polytask.balance.weighting.famo import FAMO
from polytask.balance.weighting.fixed import FixedWeighting
from polytask.balance.weighting.gls import GeometricLoss
from polytask.balance.weighting.gradnorm import GradNorm
from polytask.balance.weighting.igb import ImprovableGapBalancing
from polytask.balance.weighting.imtl_l import ImpartialLossWeighting
from polytask.balance.weighting.rlw import RandomLossWeighting
from polytask.balance.weighting.uw import UncertaintyWeighting

#: Short names, as in the papers and in torchjd / LibMTL.
EW = EqualWeighting
UW = UncertaintyWeighting
DWA = DynamicWeightAverage
RLW = RandomLossWeighting
GLS = GeometricLoss
IMTLL = ImpartialLossWeighting
IGB = ImprovableGapBalancing
MConFIG = MomentumConFIG

__all__ = [
    "BALANCERS", "DWA", "EW", "FAMO", "GLS", "IGB", "IMTLG", "IMTLL", "MGDA", "OPTION_NAMES",
    "RLW", "UW", "AlignedMTL", "BalanceResult", "Balancer", "CAGrad", "ConFIG", "DualProj",
    "DynamicWeightAverage", "EngineState", "EqualWeighting", "FixedWeighting",
    "GeometricLoss", "GradDrop", "GradNorm", "GradVac", "GramianWeighting",
    "ImpartialLossWeighting", "ImprovableGapBalancing", "JacobianAggregator",
    "LossWeighting", "MConFIG", "Method", "MomentumConFIG", "NashMTL", "Options", "PCGrad",
    "RandomLossWeighting", "UPGrad", "UncertaintyWeighting", "aggregation", "backward", "get",
    "names", "weighting",
]
