"""On resume, the option file's learning rates, optimiser and scheduler settings win over the saved state's.

BasicSR's ``resume_training`` loads the optimisers and schedulers exactly as saved, and its schedulers
compute the learning rate from the saved ``initial_lr`` (param groups), ``base_lrs``, milestones, gamma,
periods... So an lr lowered or a milestone moved in the option file, as the message after a diverged run
advises, was silently ignored: the resumed run took the old lr and diverged again.

Here every such setting that differs is carried over after loading, one log line each ("train.optim_g.lr
0.0001 from the option file replaces 0.001 of the state"), and the current lr is recomputed at the resumed
iteration under the new schedule. What cannot be carried over (another optimiser or scheduler type,
another number of optimisers, schedulers or param groups) is a :class:`ResumeConflictError` saying what to do.
"""

import inspect
import math
from collections import Counter

from basicsr.models.lr_scheduler import CosineAnnealingRestartLR, MultiStepRestartLR, get_position_from_periods

# State of torch's LRScheduler that is progress, not a setting (base_lrs: the lr, handled with optim_g.lr).
SCHEDULER_PROGRESS = {'base_lrs', 'last_epoch', '_step_count', '_is_initial', '_get_lr_called_within_step', '_last_lr'}
# Param-group entries that are not settings of the option file's optim_g.
GROUP_PROGRESS = {'params', 'param_names', 'lr', 'initial_lr'}


class ResumeConflictError(ValueError):
    """The option file asks for a change that a resumed optimiser or scheduler state cannot take."""


def _plain(value):
    """A setting as the option file writes it: a Counter of milestones as its sorted list, tuples as lists."""
    if isinstance(value, Counter):
        return sorted(value.elements())
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _restart_advice(state_path):
    return (
        f'keep the settings the state {state_path} was saved with, or start a new run from its network '
        '(path.pretrain_network_g: the matching net_g_<iter>.pth, without --auto_resume or path.resume_state)'
    )


def _group_changes(option_groups, saved_groups, state_path):
    """(key, new, old) per optim_g setting of the option file that differs from the saved param groups."""
    if len(option_groups) != len(saved_groups):
        raise ResumeConflictError(
            f'train.optim_g: the option file gives {len(option_groups)} param group(s), the state '
            f'{len(saved_groups)}; {_restart_advice(state_path)}'
        )
    changes = []
    for new, old in zip(option_groups, saved_groups):
        foreign = sorted(set(old) - set(new) - GROUP_PROGRESS)
        if foreign:
            raise ResumeConflictError(
                f'train.optim_g.type: the state was saved with another optimiser (its settings '
                f'{", ".join(foreign)} are not settings of this one); {_restart_advice(state_path)}'
            )
        if new['initial_lr'] != old.get('initial_lr', new['initial_lr']):
            changes.append(('lr', new['initial_lr'], old['initial_lr']))
        for key in sorted(set(new) & set(old) - GROUP_PROGRESS):
            if _plain(new[key]) != _plain(old[key]):
                changes.append((key, new[key], old[key]))
    return changes


def _scheduler_changes(scheduler, option_state, saved_state, state_path):
    """(key, new, old) per constructor setting of ``scheduler`` that the option file changes."""
    settings = set(option_state) - SCHEDULER_PROGRESS
    if settings != set(saved_state) - SCHEDULER_PROGRESS:
        raise ResumeConflictError(
            f'train.scheduler.type: the state was saved with another scheduler than {type(scheduler).__name__} '
            f'(its settings: {", ".join(sorted(set(saved_state) - SCHEDULER_PROGRESS))}); {_restart_advice(state_path)}'
        )
    named = set(inspect.signature(type(scheduler).__init__).parameters) & settings
    return [
        (key, option_state[key], saved_state[key])
        for key in sorted(named)
        if _plain(option_state[key]) != _plain(saved_state[key])
    ]


def scheduled_lr(scheduler, initial_lr, epoch):
    """The lr BasicSR's ``scheduler`` gives a group whose ``initial_lr`` is ``initial_lr`` at ``epoch``."""
    if isinstance(scheduler, CosineAnnealingRestartLR):
        idx = get_position_from_periods(epoch, scheduler.cumulative_period)
        if idx is None:
            raise ResumeConflictError(
                f'train.scheduler.periods: the resumed iteration {epoch} is past their sum '
                f'{scheduler.cumulative_period[-1]}; lengthen the periods to cover train.total_iter'
            )
        start = 0 if idx == 0 else scheduler.cumulative_period[idx - 1]
        cosine = 1 + math.cos(math.pi * (epoch - start) / scheduler.periods[idx])
        return scheduler.eta_min + scheduler.restart_weights[idx] * 0.5 * (initial_lr - scheduler.eta_min) * cosine
    if isinstance(scheduler, MultiStepRestartLR):
        lr = initial_lr
        restarts = list(scheduler.restarts)
        for e in sorted({e for e in set(restarts) | set(scheduler.milestones) if 0 <= e <= epoch}):
            if e in restarts:
                lr = initial_lr * scheduler.restart_weights[restarts.index(e)]
            else:
                lr *= scheduler.gamma ** scheduler.milestones[e]
        return lr
    raise ResumeConflictError(f'train.scheduler.type: {type(scheduler).__name__} cannot take new settings on resume')


def resume_with_options(model, resume_state, log):
    """Load ``resume_state`` into ``model``'s optimisers and schedulers, then put back what the option file
    changed, calling ``log`` with one line per change. Raises :class:`ResumeConflictError` before loading
    anything when a change cannot be carried over."""
    state_path = model.opt['path'].get('resume_state') or 'being resumed'
    saved_optims, saved_scheds = resume_state['optimizers'], resume_state['schedulers']
    if len(saved_optims) != len(model.optimizers) or len(saved_scheds) != len(model.schedulers):
        raise ResumeConflictError(
            f'train: the state {state_path} has {len(saved_optims)} optimiser(s) and {len(saved_scheds)} '
            f'scheduler(s), the option file {len(model.optimizers)} and {len(model.schedulers)}; '
            f'{_restart_advice(state_path)}'
        )
    plans = []
    for optimizer, scheduler, saved_optim, saved_sched in zip(
        model.optimizers, model.schedulers, saved_optims, saved_scheds
    ):
        option_groups = [{k: v for k, v in g.items() if k != 'params'} for g in optimizer.param_groups]
        option_sched = scheduler.state_dict()
        plans.append(
            (
                option_groups,
                option_sched,
                _group_changes(option_groups, saved_optim['param_groups'], state_path),
                _scheduler_changes(scheduler, option_sched, saved_sched, state_path),
            )
        )
    for optimizer, saved in zip(model.optimizers, saved_optims):
        optimizer.load_state_dict(saved)
    for scheduler, saved in zip(model.schedulers, saved_scheds):
        scheduler.load_state_dict(saved)
    for scheduler, (option_groups, option_sched, group_changes, sched_changes) in zip(model.schedulers, plans):
        if not (group_changes or sched_changes):
            continue
        for key, new, old in group_changes:
            log(f'train.optim_g.{key} {_plain(new)} from the option file replaces {_plain(old)} of the state')
        for key, new, old in sched_changes:
            log(f'train.scheduler.{key} {_plain(new)} from the option file replaces {_plain(old)} of the state')
        scheduler.__dict__.update({k: v for k, v in option_sched.items() if k not in SCHEDULER_PROGRESS})
        scheduler.base_lrs = [g['initial_lr'] for g in option_groups]
        for group, option_group in zip(scheduler.optimizer.param_groups, option_groups):
            group.update({k: v for k, v in option_group.items() if k != 'lr'})
            group['lr'] = scheduled_lr(scheduler, group['initial_lr'], scheduler.last_epoch)
        scheduler._last_lr = [g['lr'] for g in scheduler.optimizer.param_groups]
