"""Optimisers with PyTorch's exact update rules and defaults, and learning-rate schedulers.

Each optimiser updates `.data` in place in the parameter's own dtype, reads its hyper-parameters
from `param_groups` at every step, and saves / restores its state with PyTorch's state-dict layout
(`tg.save(optimizer, path)`, `optimizer.load_state_dict(tg.load(path))`). Your own optimiser:
subclass `Optimizer` and implement `update(param, grad, state, group)`.
"""

from . import lr_scheduler
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .optimizer import Optimizer
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["Adagrad", "Adam", "AdamW", "Optimizer", "RMSprop", "SGD", "lr_scheduler"]
